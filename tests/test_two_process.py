"""Two CPU processes (gloo DDP): every training utterance is seen exactly once per epoch, and the ranks stay in sync.

`accelerate launch --cpu --num_processes 2` silently starts one process, so the test launches with
ACCELERATE_USE_CPU=true and --multi_gpu, which starts two. On the tone corpus the ranks hold 17 and 16 of the 33
training utterances: at batch 4 that is 5 batches against 4, so rank 1 runs out first and must fill in a weight-0
batch (the ragged end), where a naive loop would hang in the gradient all-reduce.
"""

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from kspon_whisper.data import load_kspon

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZE = 4
TIMEOUT_S = 240  # about 15-30 s normally
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_ids(tone_corpus: Path) -> list[str]:
    return list(load_kspon(str(tone_corpus), config="spelling", split_scheme="random", streaming=False)["train"]["id"])


def launch_two_processes(model_dir: Path, corpus: Path, output_dir: Path, data_args: list[str]) -> list[dict]:
    """Train with two processes and return each rank's audit: ids trained on per epoch and a parameter digest."""
    command = LAUNCH + [
        "train_accelerate.py", *data_args,
        "--model_name_or_path", str(model_dir), "--data_dir", str(corpus), "--output_dir", str(output_dir),
        "--audit_dir", str(output_dir / "audit"), "--per_device_batch_size", str(BATCH_SIZE), "--num_workers", "0",
        "--learning_rate", "1e-3", "--warmup_steps", "1", "--gradient_checkpointing", "false", "--log_every", "1",
        "--eval_every", "0", "--save_every", "0", "--final_eval_splits", "test", "--generation_max_new_tokens", "2",
        "--report_to", "none",
    ]  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    # A new session, so a hung rank can be killed with the launcher instead of outliving the test.
    launcher = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = launcher.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        log, _ = launcher.communicate()
        pytest.fail(f"the two-process run hung for {TIMEOUT_S} s:\n{log[-5000:]}")
    assert launcher.returncode == 0, log[-8000:]
    return [json.loads((output_dir / "audit" / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_each_id_once(per_rank: list[list[str]], expected: list[str]) -> None:
    seen = Counter(uid for ids in per_rank for uid in ids)
    assert not [uid for uid, n in seen.items() if n > 1], "utterances trained on twice in one epoch"
    assert sorted(seen) == sorted(expected), "the ranks together did not cover the training split"


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "map-style"])
def test_two_ranks_cover_the_split_once_and_agree(streaming, tiny_whisper_dir, tone_corpus, train_ids, tmp_path):
    # Streaming needs max_steps: 7 is the 5-step epoch and 2 steps into the next. Map-style derives its steps from
    # one epoch, which both ranks must count alike (the longer rank's 5 batches) or the schedules would differ.
    data_args = (
        ["--streaming", "true", "--max_steps", "7"] if streaming else ["--streaming", "false", "--num_epochs", "1"]
    )
    audits = launch_two_processes(tiny_whisper_dir, tone_corpus, tmp_path / "out", data_args)

    first_epoch = [audit["ids"]["0"] for audit in audits]
    assert_each_id_once(first_epoch, train_ids)
    batches = [math.ceil(len(ids) / BATCH_SIZE) for ids in first_epoch]
    assert batches[0] != batches[1], f"batches per rank {batches}: the ragged end is no longer exercised"
    if streaming:
        second_epoch = [uid for audit in audits for uid in audit["ids"]["1"]]
        assert len(second_epoch) == len(set(second_epoch)) == 2 * 2 * BATCH_SIZE  # 2 full steps on each rank
    else:
        assert all(set(audit["ids"]) == {"0"} for audit in audits), "map-style ran past its one epoch"
    assert audits[0]["params_sha256"] == audits[1]["params_sha256"], "the ranks ended with different parameters"
