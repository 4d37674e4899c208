"""Atomic checkpoints around `accelerator.save_state`, with per-rank loop state; the final model, saved whole.

Accelerate's `save_state` is not atomic: a crash mid-save leaves a truncated folder, a missing RNG file is only
logged at INFO level on load, and with `automatic_checkpoint_naming` + `total_limit` the oldest checkpoint is
deleted *before* the new one is written. So each checkpoint is written to a temporary folder, verified, renamed
into place, and only then are old ones rotated out. A checkpoint is complete when it holds `COMPLETE.json`, which
records every file's size and sha256: a truncated or corrupted file is found, named and passed over on resume.
The sha256s are taken from the bytes as they are written (`WrittenDigests`), so no rank waits for a checkpoint
(~18 GB for large-v3 with AdamW) to be read back; a resume still reads every byte to check them.

Beside accelerate's state each rank saves its `LoopState`, the training loop's position, whole.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import WhisperForConditionalGeneration, WhisperProcessor

logger = logging.getLogger(__name__)
T = TypeVar("T")

MARKER = "COMPLETE.json"
PREFIX = "step_"
TRASH = ".trash-"  # an old checkpoint being rotated out: renamed first, so a kill mid-delete leaves no half folder
LOOP_STATE_FORMAT = 2  # 1: the loop's fields packed one by one (too_long, dataloader), no random state of its own


@dataclass
class LoopState:
    """Where the training loop stands on this rank: what a checkpoint holds beside accelerate's state (weights,
    optimizer, schedule), saved whole by `save_checkpoint` and restored whole by `load_loop_state`."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # passes over the training split finished
    pass_start_step: int = 0  # the step the current pass began at
    saved_step: int = 0  # the step of the last checkpoint saved or resumed from
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite gradient norm
    labels_too_long: int = 0  # training examples dropped: labels longer than the decoder's positions
    train_counts: Counter = field(default_factory=Counter)  # this pass's kept and dropped utterances so far
    data_position: dict | None = None  # the training loader's state_dict at the save: where this rank's pass is
    rng: dict | None = field(default=None, compare=False)  # Python, NumPy, torch (and CUDA) RNGs (`capture_rng`)

    def to_dict(self) -> dict:
        """What a checkpoint holds: plain Python, numpy and torch types, readable with torch.load alone."""
        return {"format": LOOP_STATE_FORMAT, **dataclasses.asdict(self), "train_counts": dict(self.train_counts)}

    @classmethod
    def from_dict(cls, saved: dict) -> LoopState:
        if "format" not in saved:  # format 1: the random state is accelerate's alone (the trainer captures it)
            saved = {
                "step": saved["step"],
                "epoch": saved["epoch"],
                "pass_start_step": saved.get("pass_start_step", 0),
                "saved_step": saved["step"],
                "skipped_steps": saved["skipped_steps"],
                "labels_too_long": saved["too_long"],
                "train_counts": saved.get("train_counts", {}),
                "data_position": saved["dataloader"],
            }
        elif saved["format"] != LOOP_STATE_FORMAT:
            raise ValueError(f"Loop state format {saved['format']}: this code reads 1 and {LOOP_STATE_FORMAT}.")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names} | {"train_counts": Counter(saved["train_counts"])})


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def loop_state_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"loop_state_rank{rank}.pt"


def save_checkpoint(accelerator: Accelerator, root: Path, state: LoopState, total_limit: int) -> Path:
    """Write `root/step_XXXXXXXX` (`state.step`) atomically; every rank must call this. If any rank fails to write
    its part, every rank raises and the half-written folder is removed."""
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f".tmp-{PREFIX}{state.step:08d}"
    digests = None
    if accelerator.is_main_process:
        _remove_leftovers(root)
        tmp.mkdir(parents=True)
        digests = WrittenDigests(tmp)  # every rank's files, read by rank 0 as they are written
    accelerator.wait_for_everyone()
    try:
        on_every_rank(accelerator, lambda: _write(accelerator, root, tmp, state))
        on_rank_zero(accelerator, lambda: _complete(accelerator.num_processes, tmp, state.step, digests))
    except BaseException:
        if accelerator.is_main_process:
            digests.close()
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _rotate(root, total_limit)
    accelerator.wait_for_everyone()
    return final


def _write(accelerator: Accelerator, root: Path, tmp: Path, state: LoopState) -> None:
    """This rank's part: accelerate's state (each rank's RNG; model and optimizer from rank 0, or every rank's shard
    under FSDP) and the loop state."""
    try:
        # torch.save's zip writer only appends (it refuses to seek), so WrittenDigests can hash the bytes behind it;
        # safetensors (0.8) sizes its file first and fills it in any order.
        accelerator.save_state(str(tmp), safe_serialization=False)
        # Each rank reads its own part of the data, so each rank's dataloader position is saved, not only rank 0's.
        torch.save(state.to_dict(), loop_state_file(tmp, accelerator.process_index))
    except (OSError, RuntimeError) as err:  # torch's writer reports a full disk as "iostream error", no errno
        raise _explain_failed_save(err, root, tmp) from err


def _complete(num_processes: int, tmp: Path, step: int, digests: WrittenDigests) -> None:
    _check_every_part_written(tmp, num_processes)
    marker = {"step": step, "num_processes": num_processes, "files": digests.result()}
    try:
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
    except OSError as err:
        raise _explain_failed_save(err, tmp.parent, tmp) from err


def on_every_rank(accelerator: Accelerator, work: Callable[[], T]) -> T:
    """Run `work` on every rank and return its result; when it raised on any rank, raise on every rank: the failing
    rank's own error, and elsewhere one naming that rank. Every rank must call this. A rank that raised alone would
    leave the others waiting at their next collective until the process group times out (the trainer's
    --ddp_timeout)."""
    result, error = None, None
    try:
        result = work()
    except Exception as err:  # noqa: BLE001 - raised again below, once every rank knows
        error = err
    failed = accelerator.gather(torch.tensor([int(error is not None)], device=accelerator.device))
    if error is not None:
        raise error
    if failed.any():
        ranks = ", ".join(str(rank) for rank in failed.nonzero().flatten().tolist())
        raise RuntimeError(f"Rank {ranks} failed (its error is above); this rank stops with it.")
    return result


def on_rank_zero(accelerator: Accelerator, work: Callable[[], T]) -> T:
    """Run `work` on the main process alone and give every rank its result; if it raised, every rank raises, as with
    `on_every_rank`. Every rank must call this."""
    result = on_every_rank(accelerator, work if accelerator.is_main_process else lambda: None)
    return broadcast_object_list([result])[0]


class WrittenDigests:
    """The size and sha256 of every file written under `folder`, read by a thread while the writers write it, so that
    the checkpoint need not be read back once written (~18 GB for large-v3 with AdamW: every rank would wait).

    Reading behind the writer is exact for writers that append, as torch.save's zip writer does (it refuses to
    seek) and safetensors does (header, then the tensors in order). Files are followed by inode, so one written
    under a temporary name and renamed (safetensors, DCP's `.metadata`) is read once; a file whose size at the end
    is not what was read is read again whole.
    """

    CHUNK = 16 << 20
    POLL_S = 0.05

    def __init__(self, folder: Path):
        self.folder, self._done, self._error = folder, threading.Event(), None
        self._files: dict[int, _FollowedFile] = {}  # by inode: the open file keeps its number from being reused
        self._thread = threading.Thread(target=self._follow, name="checkpoint-digests", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            while not self._done.is_set():
                if not self._read_new_bytes():
                    self._done.wait(self.POLL_S)
            self._read_new_bytes()  # what was written since the last look: the writers have all finished
        except Exception as err:  # noqa: BLE001 - raised by `result`
            self._error = err

    def _read_new_bytes(self) -> bool:
        read = False
        for path in self._listing():
            try:
                followed = self._files.get(path.stat().st_ino) or self._open(path)
            except FileNotFoundError:  # renamed or removed since the listing
                continue
            while chunk := followed.file.read(self.CHUNK):  # the read and hashlib release the GIL: writers go on
                followed.digest.update(chunk)
                followed.size += len(chunk)
                read = True
        return read

    def _listing(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.name != MARKER and p.is_file())

    def _open(self, path: Path) -> _FollowedFile:
        file = path.open("rb")
        inode = os.fstat(file.fileno()).st_ino
        if inode in self._files:  # renamed onto this path between the stat and the open
            file.close()
        return self._files.setdefault(inode, _FollowedFile(file))

    def result(self) -> dict[str, dict]:
        """Once every writer has finished: {path relative to the folder: {"bytes", "sha256"}}, by path."""
        self._done.set()
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            files = {}
            for path in self._listing():
                followed, size = self._files.get(path.stat().st_ino), path.stat().st_size
                if followed is None or followed.size != size:  # not followed to its end: read it whole
                    with path.open("rb") as f:
                        followed = _FollowedFile(f, hashlib.file_digest(f, "sha256"), size)
                files[path.relative_to(self.folder).as_posix()] = {
                    "bytes": size,
                    "sha256": followed.digest.hexdigest(),
                }
            return files
        finally:
            self.close()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        for followed in self._files.values():
            followed.file.close()


@dataclass
class _FollowedFile:
    file: BinaryIO
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0  # bytes read and hashed


def first_damaged_file(checkpoint: Path) -> str | None:
    """The first of a complete checkpoint's files that is missing, truncated or altered, and how; None if none is.

    This reads every byte (~18 GB for large-v3 with its optimizer state): run it on one rank (`on_rank_zero`)."""
    started = time.perf_counter()
    files = json.loads((checkpoint / MARKER).read_text()).get("files", {})  # older checkpoints carry no checksums
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} is {path.stat().st_size:,} bytes, {expected['bytes']:,} when it was saved (truncated?)"
        with path.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != expected["sha256"]:
                return f"{name} does not match the sha256 recorded when it was saved (corrupted)"
    size = sum(expected["bytes"] for expected in files.values())
    logger.info(f"Verified {checkpoint}: {len(files)} files, {_size(size)} in {time.perf_counter() - started:.1f} s.")
    return None


def _explain_failed_save(err: Exception, root: Path, tmp: Path) -> Exception:
    """When the disk is full, say so, with the space a checkpoint needs. The caller removes the half-written folder
    once every rank has stopped writing into it; the free space given is what there will be then."""
    written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else 0
    complete = complete_checkpoints(root)
    need = max(written, sum(p.stat().st_size for p in complete[-1].rglob("*") if p.is_file()) if complete else 0)
    free = shutil.disk_usage(root).free + written
    if getattr(err, "errno", None) != errno.ENOSPC and free > need:
        return err
    return OSError(
        errno.ENOSPC,
        f"Disk full at {root} while saving a checkpoint ({_size(free)} free; a checkpoint needs ~{_size(need)}). "
        f"The half-written folder is removed. Free space or lower --save_total_limit, "
        f"then resume with --resume_from_checkpoint latest. ({err})",
    )


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


# What save_state writes, by kind: plain files under DDP / one process, folders of shards under FSDP's sharded state.
_ARTEFACTS = {  # how a missing one is named in the error: the patterns that would have found it
    "pytorch_model.bin or pytorch_model_fsdp_0/": ("pytorch_model*.bin", "model*.safetensors", "pytorch_model_fsdp_*"),
    "optimizer.bin or optimizer_0/": ("optimizer*.bin", "optimizer_*"),
}


def _check_every_part_written(checkpoint: Path, num_processes: int) -> None:
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
        trash = old.rename(root / f"{TRASH}{old.name}")
        shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Folders a killed run left behind: a save cut short, a rotation cut short, a step folder never marked."""
    for path in root.glob("*"):
        if path.name.startswith((".tmp-", TRASH)) or (path.name.startswith(PREFIX) and not (path / MARKER).is_file()):
            logger.warning(f"Removing {path}, left behind by an interrupted save or rotation.")
            shutil.rmtree(path, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    return sorted(p for p in root.glob(f"{PREFIX}*") if (p / MARKER).is_file())


def resolve_checkpoint(resume_from: str, root: Path) -> Path | None:
    """`latest` -> the newest complete checkpoint whose files verify (or None); a path -> that checkpoint, which must
    be complete and verify. Checkpoints passed over (cut short, truncated, corrupted) are logged with the reason.
    """
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / MARKER).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no {MARKER}). Use --resume_from_checkpoint latest to take the "
                f"newest complete one under {root}."
            )
        if problem := first_damaged_file(path):
            raise ValueError(
                f"Checkpoint {path} is damaged: {problem}. Use --resume_from_checkpoint latest to take the newest one "
                f"under {root} that verifies."
            )
        return path
    complete = complete_checkpoints(root)
    newer_incomplete = [  # compared by step, so a save cut short in `.tmp-step_…` counts as newer too
        p
        for p in root.glob(f"*{PREFIX}*")
        if not (p / MARKER).is_file() and (not complete or _step_name(p) > complete[-1].name)
    ]
    if newer_incomplete:
        logger.warning(f"Ignoring incomplete checkpoint(s) {sorted(map(str, newer_incomplete))}.")
    for checkpoint in reversed(complete):
        if (problem := first_damaged_file(checkpoint)) is None:
            return checkpoint
        logger.warning(f"Passing over checkpoint {checkpoint}: {problem}.")
    logger.warning(f"No complete checkpoint under {root} verifies: a fresh start.")
    return None


def _step_name(path: Path) -> str:
    return path.name[path.name.index(PREFIX) :]


def load_loop_state(checkpoint: Path, rank: int, num_processes: int) -> LoopState:
    """This rank's loop state. Each rank saved its own data position, so the process count must be the same."""
    written_by = json.loads((checkpoint / MARKER).read_text())["num_processes"]
    if written_by != num_processes:
        raise ValueError(
            f"{checkpoint} was written by {written_by} processes and holds one data position per process; resume it "
            f"with {written_by} processes (not {num_processes}), or start a new run from its weights."
        )
    return LoopState.from_dict(torch.load(loop_state_file(checkpoint, rank), weights_only=False))


def save_final_model(model, state_dict: dict | None, processor: WhisperProcessor, output_dir: Path) -> None:
    """Write the model and processor beside a finished run's other files, each file complete or not there at all.

    Everything is written to a hidden folder first (which the push skips) and moved into place only once the whole
    save succeeded, so a full disk leaves the folder as it was, not a truncated tokenizer.json beside new weights.
    """
    staging = output_dir / ".tmp-final-model"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(staging)
    except (OSError, RuntimeError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(
            f"Saving the final model into {output_dir} failed ({err}); {_size(shutil.disk_usage(output_dir).free)} "
            "are free there. Free space, then rerun with --resume_from_checkpoint latest: it resumes from the last "
            "checkpoint and saves again."
        ) from err
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)  # atomic per file, on one filesystem
    staging.rmdir()


def check_full_model(output_dir: str) -> None:
    """Refuse to push what is not a whole model with its processor: one FSDP rank's shard of the weights, or a
    tokenizer or feature extractor file a full disk truncated."""
    advice = (
        "Push only what a finished run saved: rerun the training command with --resume_from_checkpoint latest, "
        "which gathers the full weights from every rank at the end, then --push_only again."
    )
    try:
        _, info = WhisperForConditionalGeneration.from_pretrained(output_dir, output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as err:  # no weights, or tensors whose shapes do not fit the config
        raise ValueError(f"{output_dir} holds no loadable full model ({str(err).splitlines()[0]}). {advice}") from err
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"{output_dir} holds an incomplete model: {len(info['missing_keys'])} tensors missing, "
            f"{len(info['mismatched_keys'])} of the wrong shape (first: "
            f"{min(map(str, info['missing_keys'] or info['mismatched_keys']))}). {advice}"
        )
    try:
        WhisperProcessor.from_pretrained(output_dir)
    except (OSError, ValueError, TypeError) as err:  # a truncated JSON file raises JSONDecodeError, a ValueError
        raise ValueError(
            f"{output_dir} holds no loadable processor (tokenizer and feature extractor: {str(err).splitlines()[0]}). "
            f"{advice}"
        ) from err
