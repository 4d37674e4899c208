"""Exact resume: a run killed with SIGKILL and resumed ends with the very same weights as an uninterrupted run.

The tone corpus's train split holds 33 utterances, so at batch 4 an epoch is 9 steps (8 full batches and one of 1)
with num_workers 0. Runs go to step 12: a kill after the checkpoint at step 6 resumes mid-epoch and crosses the epoch
boundary afterwards, and one at step 9 resumes exactly on it. Dropout and SpecAugment are on, so the torch and numpy
random streams must be restored too, not only the weights, the optimizer, the schedule and the data position.
The LoRA case trains adapters only (with their own dropout, through gradient checkpointing) and merges them at the end.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.processes import run_command, run_ok

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 12
TIMEOUT_S = 240
# Same seed, same thread count: bit-identical floating point needs the same reduction order in both runs.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def train_command(
    model_dir: Path, corpus: Path, output_dir: Path, streaming: bool, workers: int, save_every: int, extra=()
):
    return [
        sys.executable, "train_accelerate.py",
        "--model_name_or_path", str(model_dir), "--data_dir", str(corpus), "--output_dir", str(output_dir),
        "--streaming", str(streaming).lower(), "--num_workers", str(workers), "--max_steps", str(MAX_STEPS),
        "--per_device_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "2", "--lr_scheduler", "linear",
        "--apply_spec_augment", "true", "--mask_time_prob", "0.05", "--mask_feature_prob", "0.05",
        "--gradient_checkpointing", "false", "--log_every", "1", "--eval_every", "0", "--save_every", str(save_every),
        "--final_eval_splits", "test", "--generation_max_new_tokens", "2", "--report_to", "none", *extra,
    ]  # fmt: skip


def run_to_end(command: list[str]) -> str:
    result = run_ok(command, timeout_s=TIMEOUT_S, env=ENV)
    return result.stdout + result.stderr


def run_until_killed(command: list[str], checkpoint_name: str) -> str:
    """Start training, SIGKILL it as soon as it reports `checkpoint_name` saved, and return what it printed."""

    def checkpoint_saved(line: str) -> bool:
        return line.startswith("saved checkpoint") and line.rstrip().endswith(checkpoint_name)

    result = run_command(command, timeout_s=TIMEOUT_S, env=ENV, stop_when=checkpoint_saved)
    if not result.stopped:
        state = "hung" if result.timed_out else f"exited {result.returncode}"
        pytest.fail(f"the run {state} before it saved {checkpoint_name}:\n{result.log_tail()}")
    return result.stdout


@pytest.fixture(scope="module")
def uninterrupted(dropout_whisper_dir, tone_corpus, tmp_path_factory):
    """Final weights of an uninterrupted run per (streaming, workers, extra), made once and shared by the resume cases:
    the saved model, and the last checkpoint's (with LoRA: the adapters before the merge)."""
    runs = {}

    def weights(streaming: bool, workers: int, extra: tuple[str, ...]) -> list[dict[str, torch.Tensor]]:
        if (streaming, workers, extra) not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{'streaming' if streaming else 'map'}-{workers}")
            # No intermediate checkpoints: saving must not perturb training either.
            run_to_end(train_command(dropout_whisper_dir, tone_corpus, out, streaming, workers, 0, extra))
            runs[streaming, workers, extra] = final_weights(out)
        return runs[streaming, workers, extra]

    return weights


def final_weights(out: Path) -> list[dict[str, torch.Tensor]]:
    last_checkpoint = out / "checkpoints" / f"step_{MAX_STEPS:08d}"
    return [load_file(out / "model.safetensors"), torch.load(last_checkpoint / "pytorch_model.bin", weights_only=True)]


def fake_incomplete_checkpoints(checkpoints: Path, complete: Path) -> list[str]:
    """Leave behind what a crash mid-save would: newer, truncated folders that `latest` must pass over."""
    cut_short = checkpoints / ".tmp-step_00000010"  # killed inside save_state
    shutil.copytree(complete, cut_short)
    (cut_short / "COMPLETE.json").unlink()
    (cut_short / "optimizer.bin").write_bytes(b"")
    unmarked = checkpoints / "step_00000011"  # in place but never verified
    shutil.copytree(cut_short, unmarked)
    return [cut_short.name, unmarked.name]


LORA = ("--lora_rank", "4", "--lora_mlp", "true", "--lora_dropout", "0.1", "--gradient_checkpointing", "true")
CASES = {
    "map-style, mid-epoch": (False, 0, 6, ()),
    "streaming, mid-epoch": (True, 0, 6, ()),
    "streaming, at the end of an epoch": (True, 0, 9, ()),
    "streaming, 2 workers": (True, 2, 6, ()),
    "streaming, mid-epoch, LoRA": (True, 0, 6, LORA),
}


@pytest.mark.slow
@pytest.mark.parametrize(("streaming", "workers", "kill_at", "extra"), list(CASES.values()), ids=list(CASES))
def test_resume_after_sigkill_is_bit_identical(
    streaming, workers, kill_at, extra, uninterrupted, dropout_whisper_dir, tone_corpus, tmp_path
):
    out = tmp_path / "out"
    checkpoint = f"step_{kill_at:08d}"
    command = train_command(dropout_whisper_dir, tone_corpus, out, streaming, workers, kill_at, extra)
    run_until_killed(command, checkpoint)
    assert not (out / "model.safetensors").exists(), "the killed run got to the end: nothing was resumed"

    ignored = []
    if not streaming:  # once is enough: incomplete newer checkpoints are skipped, and the result is still exact
        ignored = fake_incomplete_checkpoints(out / "checkpoints", out / "checkpoints" / checkpoint)
    log = run_to_end(command + ["--resume_from_checkpoint", "latest"])
    resumed_from = out / "checkpoints" / checkpoint
    assert f"Resumed from {resumed_from} at step {kill_at}" in log
    if ignored:
        warning = next(line for line in log.splitlines() if "Ignoring incomplete checkpoint" in line)
        assert all(name in warning for name in ignored)  # and the resume above took the newest complete one

    saved, last_checkpoint = final_weights(out)
    assert any(".lora_B." in name for name in last_checkpoint) == bool(extra), "LoRA on or off against the case"
    for expected, resumed in zip(uninterrupted(streaming, workers, extra), [saved, last_checkpoint], strict=True):
        assert resumed.keys() == expected.keys()
        differing = [name for name in expected if not torch.equal(expected[name], resumed[name])]
        assert not differing, f"{len(differing)} of {len(expected)} tensors differ after resuming: {differing[:3]}"


SAMPLE = REPO / "kspon_dataset" / "sample"


@pytest.mark.slow
def test_num_epochs_on_streaming_data_trains_whole_passes_and_resumes_exactly(dropout_whisper_dir, tmp_path):
    """`--num_epochs 2` with the default (streaming) data: the schedule's length comes from the index, every kept id
    is trained on once per pass, and a run killed mid-pass resumes to the same weights. The sample's train split
    keeps 101 of 102 utterances by size and drops one more for its empty transcript while reading; two workers
    batch 51 and 50 of them, 7 + 7 steps a pass."""
    command = [
        *train_command(dropout_whisper_dir, SAMPLE, tmp_path / "whole", True, 2, 0),
        *("--max_steps", "0", "--num_epochs", "2", "--per_device_batch_size", "8"),
    ]
    log = run_to_end([*command, "--trained_ids_dir", str(tmp_path / "ids")])
    passes = [line for line in log.splitlines() if line.startswith("train pass")]
    assert len(passes) == 2 and all("kept 100 of 102" in line for line in passes), passes
    assert all(line.endswith("| 14 optimizer steps of 14 planned") for line in passes), passes
    ids = json.loads((tmp_path / "ids" / "rank0.json").read_text())["ids"]
    assert sorted(ids) == ["0", "1"]
    assert len(set(ids["0"])) == len(ids["0"]) == 100 and sorted(ids["0"]) == sorted(ids["1"]) and ids["0"] != ids["1"]
    expected = load_file(tmp_path / "whole" / "model.safetensors")

    out = tmp_path / "resumed"
    command[command.index(str(tmp_path / "whole"))] = str(out)
    command[command.index("--save_every") + 1] = "6"
    run_until_killed(command, "step_00000018")  # mid-way through the second pass
    log = run_to_end([*command, "--resume_from_checkpoint", "latest"])
    assert "at step 18, epoch 1" in log
    second_pass = next(line for line in log.splitlines() if line.startswith("train pass 2"))  # counted across the kill
    assert "kept 100 of 102" in second_pass and second_pass.endswith("| 14 optimizer steps of 14 planned"), second_pass
    resumed = load_file(out / "model.safetensors")
    differing = [name for name in expected if not torch.equal(expected[name], resumed[name])]
    assert not differing, f"{len(differing)} of {len(expected)} tensors differ after resuming: {differing[:3]}"
