"""Generate transcripts for a split, score them, and keep every prediction."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm.auto import tqdm
from transformers import WhisperProcessor

from .metrics import score


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    batches: Iterable[dict],
    processor: WhisperProcessor,
    model_inputs: Callable[[dict], dict],
    *,
    num_beams: int,
    max_new_tokens: int,
    max_samples: int | None = None,
    desc: str = "eval",
) -> tuple[dict[str, float], list[dict]]:
    """CER/WER/space-free CER over this split, gathered from every rank, plus (id, reference, hypothesis) rows."""
    generator = generation_model(accelerator, model)
    was_training = generator.training
    generator.eval()
    records: list[dict] = []
    budget = None if max_samples is None else -(-max_samples // accelerator.num_processes)  # per rank, rounded up
    for batch in tqdm(batches, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        if not batch["id"]:
            continue
        with accelerator.autocast():
            tokens = generator.generate(
                **model_inputs(batch),
                language="ko",
                task="transcribe",
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
            )
        hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)
        records += [
            {"id": uid, "reference": ref, "hypothesis": hyp.strip()}
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
