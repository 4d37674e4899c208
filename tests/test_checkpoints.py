"""Atomic checkpoints: rotation only after a complete save, verification, and the fallback past incomplete ones."""

import errno
import hashlib
import json
import logging
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from kspon_whisper.checkpoints import (
    MARKER,
    LoopState,
    capture_rng,
    complete_checkpoints,
    load_loop_state,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
)
from tests.processes import TWO_CPU_ENV, Finished, run_command, two_cpu_processes


@dataclass
class Prepared:
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def train_once(self) -> None:
        self.accelerator.backward(self.model(torch.randn(2, 4)).sum())
        self.optimizer.step()
        self.optimizer.zero_grad()


@pytest.fixture
def run():
    """A real single-process Accelerator with a small prepared model and optimizer (so save_state writes them)."""
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    yield Prepared(acc, *acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3)))
    # Accelerate keeps its state in process-wide singletons; leave none behind for the next test.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_rotation_keeps_the_newest_complete_checkpoints(run, tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 5):
        run.train_once()
        path = save_checkpoint(run.accelerator, root, LoopState(step=step), total_limit=2)
        assert (path / MARKER).is_file()
    assert names(complete_checkpoints(root)) == ["step_00000003", "step_00000004"]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003", "step_00000004"]  # no temporary left over
    assert load_loop_state(root / "step_00000004", rank=0, num_processes=1) == LoopState(step=4)


def test_the_loop_state_is_restored_whole_and_a_format_1_one_is_still_read(run, tmp_path):
    root = tmp_path / "checkpoints"
    state = LoopState(7, 1, 5, 7, 2, 3, Counter(kept=12, empty_text=1), {"position": 3}, capture_rng())
    path = save_checkpoint(run.accelerator, root, state, total_limit=2)
    loaded = load_loop_state(path, rank=0, num_processes=1)
    assert loaded == state and draws(loaded.rng) == draws(state.rng)
    format_1 = {"step": 7, "epoch": 1, "skipped_steps": 2, "too_long": 3, "dataloader": {"position": 3}}
    torch.save(format_1 | {"train_counts": {"kept": 12}, "pass_start_step": 5}, path / "loop_state_rank0.pt")
    expected = LoopState(7, 1, 5, 7, 2, 3, Counter(kept=12), {"position": 3}, rng=None)  # rng: accelerate's alone
    assert load_loop_state(path, rank=0, num_processes=1) == expected


def draws(rng: dict) -> tuple:
    restore_rng(rng)
    return random.random(), np.random.random(), torch.rand(1).item()


def test_the_digests_taken_while_writing_are_the_files(run, tmp_path):
    """Large enough (96 MB of weights, twice that of AdamW state) that the digests are read behind the writers."""
    acc = run.accelerator
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(2048, 2048)) for _ in range(6)])
    model, optimizer = acc.prepare(model, torch.optim.AdamW(model.parameters()))
    acc.backward(sum(p.sum() for p in model))
    optimizer.step()
    path = save_checkpoint(acc, tmp_path / "checkpoints", LoopState(step=1), total_limit=1)
    files = json.loads((path / MARKER).read_text())["files"]
    assert files["pytorch_model_1.bin"]["bytes"] > 90e6 and files["optimizer_1.bin"]["bytes"] > 190e6
    assert sorted(files) == sorted(p.name for p in path.iterdir() if p.name != MARKER)
    for name, recorded in files.items():
        with (path / name).open("rb") as f:
            assert recorded == {
                "bytes": (path / name).stat().st_size,
                "sha256": hashlib.file_digest(f, "sha256").hexdigest(),
            }


def test_resuming_with_another_process_count_is_refused(run, tmp_path):
    root = tmp_path / "checkpoints"
    path = save_checkpoint(run.accelerator, root, LoopState(step=1), total_limit=2)
    with pytest.raises(ValueError, match="written by 1 processes .* resume it with 1 processes \\(not 2\\)"):
        load_loop_state(path, rank=0, num_processes=2)


def test_the_checkpoint_round_trips_the_model(run, tmp_path):
    root = tmp_path / "checkpoints"
    run.train_once()
    saved = {k: v.clone() for k, v in run.model.state_dict().items()}
    save_checkpoint(run.accelerator, root, LoopState(step=1), total_limit=2)
    run.train_once()
    assert not all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())
    run.accelerator.load_state(str(resolve_checkpoint("latest", root)))
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())


def test_a_crash_mid_save_deletes_nothing_but_its_own_folder(run, tmp_path, monkeypatch, caplog):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(run.accelerator, root, LoopState(step=step), total_limit=2)

    def crash_after_the_model(output_dir: str, **kwargs):
        run.accelerator.save_model(run.model, output_dir)
        raise OSError("No space left on device")

    monkeypatch.setattr(run.accelerator, "save_state", crash_after_the_model)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(run.accelerator, root, LoopState(step=3), total_limit=2)

    assert names(complete_checkpoints(root)) == ["step_00000001", "step_00000002"]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002"]  # the half-written one is gone
    assert resolve_checkpoint("latest", root) == root / "step_00000002"


def test_a_full_disk_is_named_with_the_space_a_checkpoint_needs(run, tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save_checkpoint(run.accelerator, root, LoopState(step=1), total_limit=2)

    def iostream_error(output_dir: str, **kwargs):  # what torch's writer raises on a full disk: no errno
        (Path(output_dir) / "optimizer.bin").write_bytes(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos; basic_ios::clear: iostream error"
        )

    monkeypatch.setattr(run.accelerator, "save_state", iostream_error)
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match=f"Disk full at {root}") as err:
        save_checkpoint(run.accelerator, root, LoopState(step=2), total_limit=2)
    assert err.value.errno == errno.ENOSPC and "a checkpoint needs ~" in str(err.value)
    assert "--resume_from_checkpoint latest" in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else data[:100] + bytes(280) + data[380:])


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_checkpoint_is_named_and_latest_falls_back(run, tmp_path, caplog, how):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        run.train_once()
        save_checkpoint(run.accelerator, root, LoopState(step=step), total_limit=2)
    _corrupt(root / "step_00000002" / "optimizer.bin", how)

    with caplog.at_level(logging.WARNING, logger="kspon_whisper.checkpoints"):
        assert resolve_checkpoint("latest", root) == root / "step_00000001"
    assert "step_00000002" in caplog.text and "optimizer.bin" in caplog.text
    with pytest.raises(ValueError, match="optimizer.bin") as err:
        resolve_checkpoint(str(root / "step_00000002"), root)
    assert "truncated" in str(err.value) if how == "truncated" else "corrupted" in str(err.value)


def test_leftovers_of_an_interrupted_save_or_rotation_are_removed(run, tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(run.accelerator, root, LoopState(step=1), total_limit=2)
    for leftover in (".trash-step_00000000", "step_00000002", ".tmp-step_00000003"):  # a kill mid-rotate / mid-save
        (root / leftover).mkdir()
        (root / leftover / "loop_state_rank0.pt").write_bytes(b"x")
    save_checkpoint(run.accelerator, root, LoopState(step=4), total_limit=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000004"]


@pytest.mark.parametrize("dropped", ["random_states_0.pkl", "optimizer.bin", "pytorch_model.bin"])
def test_verification_refuses_a_checkpoint_missing_a_file(run, tmp_path, monkeypatch, dropped):
    """Accelerate only logs a missing RNG file at INFO level on load; the save must refuse it instead."""
    root = tmp_path / "checkpoints"
    save_checkpoint(run.accelerator, root, LoopState(step=1), total_limit=1)
    save_state = run.accelerator.save_state

    def save_state_losing_a_file(output_dir: str, **kwargs):
        save_state(output_dir, **kwargs)
        (Path(output_dir) / dropped).unlink()

    monkeypatch.setattr(run.accelerator, "save_state", save_state_losing_a_file)
    with pytest.raises(RuntimeError, match=dropped):
        save_checkpoint(run.accelerator, root, LoopState(step=2), total_limit=1)
    assert names(complete_checkpoints(root)) == ["step_00000001"]  # total_limit=1 and still not rotated out


def test_an_explicit_incomplete_checkpoint_is_refused(tmp_path):
    half_written = tmp_path / "checkpoints" / "step_00000005"
    half_written.mkdir(parents=True)
    (half_written / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint") as err:
        resolve_checkpoint(str(half_written), tmp_path / "checkpoints")
    assert "--resume_from_checkpoint latest" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "no_such_checkpoint"), tmp_path / "checkpoints")


def test_latest_falls_back_past_incomplete_checkpoints(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for name in ("step_00000002", "step_00000004"):
        (root / name).mkdir(parents=True)
        (root / name / MARKER).write_text("{}")
    (root / "step_00000006").mkdir()  # renamed into place but never marked: not trusted
    (root / ".tmp-step_00000008").mkdir()  # a save cut short
    with caplog.at_level(logging.WARNING, logger="kspon_whisper.checkpoints"):
        assert resolve_checkpoint("latest", root) == root / "step_00000004"
    assert "step_00000006" in caplog.text and ".tmp-step_00000008" in caplog.text


def test_latest_without_any_complete_checkpoint_starts_fresh(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    assert resolve_checkpoint("latest", root) is None  # no folder at all: a first run with `latest` set
    (root / ".tmp-step_00000001").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="kspon_whisper.checkpoints"):
        assert resolve_checkpoint("latest", root) is None
    assert "fresh start" in caplog.text


def test_sharded_fsdp_state_counts_as_complete(run, tmp_path, monkeypatch):
    """FSDP's sharded state dict writes folders of shards instead of model.safetensors and optimizer.bin."""

    def save_state_as_fsdp(output_dir: str, **kwargs):
        out = Path(output_dir)
        for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
            (out / folder).mkdir()
            (out / folder / "__0_0.distcp").write_bytes(b"shard")
        torch.save({}, out / "random_states_0.pkl")

    monkeypatch.setattr(run.accelerator, "save_state", save_state_as_fsdp)
    path = save_checkpoint(run.accelerator, tmp_path / "checkpoints", LoopState(step=1), total_limit=1)
    assert (path / MARKER).is_file()


def run_two_ranks(*args: str, timeout_s: float) -> Finished:
    command = [*two_cpu_processes(), "tests/two_rank_faults.py", *args]
    result = run_command(command, timeout_s=timeout_s, env=TWO_CPU_ENV)
    assert not result.timed_out, f"a rank waited for the one that failed:\n{result.log_tail()}"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("failing", [0, 1])
def test_a_checkpoint_one_rank_cannot_write_stops_every_rank(tmp_path, failing):
    result = run_two_ranks("checkpoint", str(failing), str(tmp_path / "checkpoints"), timeout_s=120)
    assert result.returncode == 0 and not result.leftovers, result.log_tail()
    other = 1 - failing
    assert f"rank {failing} stopped: [Errno 28] Disk full at {tmp_path / 'checkpoints'}" in result.stdout
    assert f"rank {other} stopped: Rank {failing} failed (its error is above)" in result.stdout, result.log_tail()
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the half-written folder is gone, nothing was marked


@pytest.mark.slow
@pytest.mark.parametrize("what", ["final_model", "model_card"])
def test_a_final_file_rank_0_cannot_write_stops_every_rank(tiny_whisper_dir, tone_corpus, tmp_path, what):
    output_dir = tmp_path / "out"
    result = run_two_ranks(
        what, "train_accelerate.py", "--model_name_or_path", str(tiny_whisper_dir),
        "--data_dir", str(tone_corpus), "--output_dir", str(output_dir), "--max_steps", "1",
        "--per_device_batch_size", "2", "--num_workers", "0", "--gradient_checkpointing", "false",
        "--eval_every", "0", "--save_every", "0", "--final_eval_splits", "test", "--max_eval_samples", "2",
        "--generation_max_new_tokens", "2", "--report_to", "none", timeout_s=240,
    )  # fmt: skip
    assert result.returncode not in (0, None), result.log_tail()
    assert "No space left on device" in result.stderr and "Rank 0 failed (its error is above)" in result.stderr
    assert (output_dir / "model.safetensors").exists() == (what == "model_card")  # saved before the card, or not
    assert not (output_dir / "README.md").exists()


@pytest.mark.slow
def test_ranks_wait_for_rank_0_as_long_as_ddp_timeout_says():
    # Rank 0 alone prepares map-style data, verifies a checkpoint and pushes; NCCL's default 600 s would end the run.
    result = run_two_ranks("timeout", "5400", timeout_s=120)
    assert result.returncode == 0, result.log_tail()
    assert sorted(line for line in result.stdout.splitlines() if " waits " in line) == [
        "rank 0 waits 5400 s",
        "rank 1 waits 5400 s",
    ]
