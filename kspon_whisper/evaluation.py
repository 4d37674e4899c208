"""Generate transcripts for a split, score them, and keep every prediction."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import Accelerator
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
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    records: list[dict] = []
    budget = None if max_samples is None else -(-max_samples // accelerator.num_processes)  # per rank, rounded up
    for batch in tqdm(batches, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        if not batch["id"]:
            continue
        with accelerator.autocast():
            tokens = unwrapped.generate(
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
    unwrapped.train(was_training)
    records = accelerator.gather_for_metrics(records, use_gather_object=True)
    records.sort(key=lambda r: r["id"])
    metrics = score([r["reference"] for r in records], [r["hypothesis"] for r in records])
    return metrics, records


def write_predictions(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
