"""Atomic checkpoints around `accelerator.save_state`, with per-rank loop state.

Accelerate's `save_state` is not atomic: a crash mid-save leaves a truncated folder, a missing RNG file is only
logged at INFO level on load, and with `automatic_checkpoint_naming` + `total_limit` the oldest checkpoint is
deleted *before* the new one is written. So each checkpoint is written to a temporary folder, verified, renamed
into place, and only then are old ones rotated out. A checkpoint is complete when it holds `COMPLETE.json`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
PREFIX = "step_"


def loop_state_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"loop_state_rank{rank}.pt"


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, loop_state: dict, total_limit: int) -> Path:
    """Write `root/step_XXXXXXXX` atomically; every rank must call this."""
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Each rank reads its own part of the data, so each rank's dataloader position is saved, not only rank 0's.
    torch.save(loop_state, loop_state_file(tmp, accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _verify(tmp, accelerator.num_processes)
        (tmp / MARKER).write_text(json.dumps({"step": step, "num_processes": accelerator.num_processes}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _rotate(root, total_limit)
    accelerator.wait_for_everyone()
    return final


# What save_state writes, by kind: plain files under DDP / one process, folders of shards under FSDP's sharded state.
_ARTEFACTS = {  # how a missing one is named in the error: the patterns that would have found it
    "model.safetensors or pytorch_model_fsdp_0/": ("model*.safetensors", "pytorch_model*.bin", "pytorch_model_fsdp_*"),
    "optimizer.bin or optimizer_0/": ("optimizer*.bin", "optimizer_*"),
}


def _verify(checkpoint: Path, num_processes: int) -> None:
    per_rank = [f"random_states_{r}.pkl" for r in range(num_processes)]
    per_rank += [loop_state_file(checkpoint, r).name for r in range(num_processes)]
    missing = [name for name in per_rank if not _written(checkpoint / name)]
    missing += [
        kind
        for kind, patterns in _ARTEFACTS.items()
        if not any(_written(path) for pattern in patterns for path in checkpoint.glob(pattern))
    ]
    if missing:
        raise RuntimeError(f"Checkpoint {checkpoint} is missing {missing} after save_state; not marking it complete.")


def _written(path: Path) -> bool:
    """A non-empty file, or a folder holding at least one non-empty file."""
    if path.is_dir():
        return any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*"))
    return path.is_file() and path.stat().st_size > 0


def _rotate(root: Path, total_limit: int) -> None:
    for old in complete_checkpoints(root)[:-total_limit] if total_limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    return sorted(p for p in root.glob(f"{PREFIX}*") if (p / MARKER).is_file())


def resolve_checkpoint(resume_from: str, root: Path) -> Path | None:
    """`latest` -> the newest complete checkpoint (or None); a path -> that checkpoint, which must be complete.

    An incomplete newer checkpoint (a save cut short) is passed over, and the fallback is logged.
    """
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / MARKER).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no {MARKER}). Use --resume_from_checkpoint latest to take the "
                f"newest complete one under {root}."
            )
        return path
    complete = complete_checkpoints(root)
    newer_incomplete = [  # compared by step, so a save cut short in `.tmp-step_…` counts as newer too
        p
        for p in root.glob(f"*{PREFIX}*")
        if not (p / MARKER).is_file() and (not complete or _step_name(p) > complete[-1].name)
    ]
    if newer_incomplete:
        fallback = complete[-1] if complete else "a fresh start"
        logger.warning(f"Ignoring incomplete checkpoint(s) {sorted(map(str, newer_incomplete))}; using {fallback}.")
    return complete[-1] if complete else None


def _step_name(path: Path) -> str:
    return path.name[path.name.index(PREFIX) :]


def load_loop_state(checkpoint: Path, rank: int, num_processes: int) -> dict:
    """This rank's loop state. Each rank saved its own data position, so the process count must be the same."""
    written_by = json.loads((checkpoint / MARKER).read_text())["num_processes"]
    if written_by != num_processes:
        raise ValueError(
            f"{checkpoint} was written by {written_by} processes and holds one data position per process; resume it "
            f"with {written_by} processes (not {num_processes}), or start a new run from its weights."
        )
    return torch.load(loop_state_file(checkpoint, rank), weights_only=False)
