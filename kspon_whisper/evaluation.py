"""Generate transcripts for a split, score them, and keep every prediction.

The trainer's evaluations and `eval_whisper.py` both call `evaluate_split`. Batches are decoded by
`inference.decode_clips`, as `transcribe.py` decodes clips: the same `GenerationSettings`, and the Accelerator's
mixed precision as autocast around fp32 weights.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm.auto import tqdm
from transformers import WhisperProcessor

from .data import PassCounter, Split
from .inference import DEFAULT_SETTINGS, GenerationSettings, decode_clips
from .metrics import loop_reason, score

LOOP_EXAMPLES = 3  # runaway hypotheses quoted per split


@dataclass
class SplitResult:
    metrics: dict[str, float]  # `score` output
    records: list[dict]  # {"id", "reference", "hypothesis"}, sorted by id, from every rank
    seconds: float  # wall time of generation and gathering
    counts: Counter | None  # "kept N of M" counts of a whole pass, None when max_samples cut it short
    kept_line: str | None


def print_line(message: str) -> None:
    """One log line above any progress bar rather than glued to it, so `grep ^step` works on a log.

    Printed while the bars are cleared, with both streams flushed: with stdout and stderr in one file
    (`python train_accelerate.py … 2>&1 | tee`), a line left in stdout's buffer lands after a bar's redraw. (Under
    `accelerate launch`, which relays the child's stderr through a thread, the order between the two streams is
    the launcher's.)"""
    with tqdm.external_write_mode():
        sys.stderr.flush()
        print(message, flush=True)


def evaluate_split(
    accelerator: Accelerator,
    model: torch.nn.Module,
    name: str,
    split: Split,
    batches: Iterable[dict],
    processor: WhisperProcessor,
    device_inputs: Callable[[dict], dict],
    *,
    settings: GenerationSettings = DEFAULT_SETTINGS,
    max_samples: int | None = None,
) -> SplitResult:
    """`evaluate` one split's loader and count what the pass kept (every rank must call this)."""
    counter = PassCounter(split)
    start = time.perf_counter()
    metrics, records = evaluate(
        accelerator,
        model,
        counter.counted(batches),
        processor,
        device_inputs,
        settings=settings,
        max_samples=max_samples,
        desc=f"eval {name}",
    )
    seconds = time.perf_counter() - start
    if max_samples is not None:  # a partial pass: its counts say nothing about the split
        return SplitResult(metrics, records, seconds, None, None)
    line, counts = counter.line(name, accelerator)
    return SplitResult(metrics, records, seconds, counts, line)


def loop_report(records: list[dict], examples: int = LOOP_EXAMPLES) -> dict:
    """How many hypotheses look like hallucination or repetition loops (`metrics.loop_reason`), with a few of them."""
    flagged = [
        {"id": r["id"], "reason": reason, "reference": r["reference"], "hypothesis": r["hypothesis"]}
        for r in records
        if (reason := loop_reason(r["reference"], r["hypothesis"]))
    ]
    return {"num_loops": len(flagged), "num_hypotheses": len(records), "examples": flagged[:examples]}


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    batches: Iterable[dict],
    processor: WhisperProcessor,
    device_inputs: Callable[[dict], dict],
    *,
    settings: GenerationSettings = DEFAULT_SETTINGS,
    max_samples: int | None = None,
    desc: str = "eval",
) -> tuple[dict[str, float], list[dict]]:
    """CER/WER/sWER/space-free CER over this split, gathered from every rank, plus (id, reference, hypothesis) rows."""
    generator = generation_model(accelerator, model)
    was_training = generator.training
    generator.eval()
    records: list[dict] = []
    budget = None if max_samples is None else -(-max_samples // accelerator.num_processes)  # per rank, rounded up
    for batch in tqdm(batches, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        if not batch["id"]:
            continue
        features = device_inputs(batch)["input_features"]
        hypotheses = decode_clips(generator, processor, features, settings, accelerator.mixed_precision)
        records += [
            {"id": uid, "reference": ref, "hypothesis": hyp}
            for uid, ref, hyp in zip(batch["id"], batch["text"], hypotheses, strict=True)
        ]
        if budget is not None and len(records) >= budget:
            records = records[:budget]
            break
    generator.train(was_training)
    records = accelerator.gather_for_metrics(records, use_gather_object=True)
    records.sort(key=lambda r: r["id"])
    metrics = score([r["reference"] for r in records], [r["hypothesis"] for r in records])
    return metrics, records


def generation_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The model to call `generate` on: the bare model, or under FSDP a plain copy holding the gathered full weights.

    FSDP gathers each wrapped module's weights around its forward, in step on every rank. `generate` breaks both: it
    calls the encoder directly, outside the root module's forward, so the root's sharded weights are never gathered
    (torch raises "mixed torch.Tensor and DTensor"), and ranks run different numbers of batches and decoder steps, so
    the gathers would fall out of step and hang. A full copy on each rank (large-v3: 6 GB in fp32) generates with no
    collective at all; only building it is collective, and every rank calls `evaluate`.
    """
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type != DistributedType.FSDP:
        return unwrapped
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    with torch.device("meta"):  # no memory and no random init for weights that are replaced at once
        copy = type(unwrapped)(unwrapped.config)
    copy.load_state_dict(weights, assign=True)
    copy.generation_config = unwrapped.generation_config
    return copy


def write_predictions(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
