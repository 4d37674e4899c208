"""Two CPU processes (gloo DDP): every training utterance is seen exactly once per epoch, and the ranks stay in sync.

`accelerate launch --cpu --num_processes 2` silently starts one process, so the test launches with
ACCELERATE_USE_CPU=true and --multi_gpu, which starts two. On the tone corpus the ranks hold different numbers of
batches (the test checks it), so one rank runs out first and must fill in weight-0 batches (the ragged end), where a
naive loop would hang in the gradient all-reduce. The map-style run accumulates 2 micro-batches per step, so the
fillers also sit inside accumulation windows, and `--num_epochs 1` must stop after exactly one pass.
"""

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from kspon_dataset import load_kspon
from tests.processes import TWO_CPU_ENV, run_ok, two_cpu_processes

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZE = 4
TIMEOUT_S = 240  # about 15-30 s normally
ENV, LAUNCH = TWO_CPU_ENV, two_cpu_processes()

# Streaming needs max_steps: the test sets it to one epoch and 2 steps into the next. Map-style derives its steps
# from one epoch, which both ranks must count alike (the longer rank's batches) or the schedules would differ.
DATA_ARGS = {
    "streaming": ["--streaming", "true", "--max_steps", "8"],  # the tone corpus: ranks of 21 and 20, a 6-step epoch
    "map-style": ["--streaming", "false", "--num_epochs", "1", "--gradient_accumulation_steps", "2"],
}


@pytest.fixture(scope="module")
def train_ids(tone_corpus: Path) -> list[str]:
    return list(load_kspon(str(tone_corpus), "spelling", split_scheme="random")["train"]["id"])


def two_process_command(model_dir: Path, corpus: Path, output_dir: Path, data_args: list[str]) -> list[str]:
    """The training command of this test (benchmarks/exit_soak.py runs the same kind to count exit hangs)."""
    return LAUNCH + [
        "train_accelerate.py", *data_args,
        "--model_name_or_path", str(model_dir), "--data_dir", str(corpus), "--output_dir", str(output_dir),
        "--per_device_batch_size", str(BATCH_SIZE), "--num_workers", "0", "--learning_rate", "1e-3",
        "--warmup_steps", "1", "--gradient_checkpointing", "false", "--log_every", "1", "--eval_every", "0",
        "--save_every", "0", "--final_eval_splits", "test",
        "--generation_max_new_tokens", "2", "--report_to", "none",
    ]  # fmt: skip


def launch_two_processes(model_dir: Path, corpus: Path, output_dir: Path, data_args: list[str]) -> list[dict]:
    """Train with two processes and return each rank's record: ids trained on per epoch and a parameter digest."""
    command = two_process_command(model_dir, corpus, output_dir, data_args)
    run_ok(command + ["--trained_ids_dir", str(output_dir / "trained_ids")], timeout_s=TIMEOUT_S, env=ENV)
    return [json.loads((output_dir / "trained_ids" / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_each_id_once(per_rank: list[list[str]], expected: list[str]) -> None:
    seen = Counter(uid for ids in per_rank for uid in ids)
    assert not [uid for uid, n in seen.items() if n > 1], "utterances trained on twice in one epoch"
    assert sorted(seen) == sorted(expected), "the ranks together did not cover the training split"


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "map-style"])
def test_two_ranks_cover_the_split_once_and_agree(streaming, tiny_whisper_dir, tone_corpus, train_ids, tmp_path):
    data_args = DATA_ARGS["streaming" if streaming else "map-style"]
    if streaming:  # one epoch (the longer rank's batches) and 2 steps more
        data_args = [*data_args, "--max_steps", str(math.ceil(math.ceil(len(train_ids) / 2) / BATCH_SIZE) + 2)]
    records = launch_two_processes(tiny_whisper_dir, tone_corpus, tmp_path / "out", data_args)

    first_epoch = [record["ids"]["0"] for record in records]
    assert_each_id_once(first_epoch, train_ids)
    batches = [math.ceil(len(ids) / BATCH_SIZE) for ids in first_epoch]
    assert batches[0] != batches[1], f"batches per rank {batches}: the ragged end is no longer exercised"
    if streaming:
        second_epoch = [uid for record in records for uid in record["ids"]["1"]]
        assert len(second_epoch) == len(set(second_epoch)) == 2 * 2 * BATCH_SIZE  # 2 full steps on each rank
    else:
        assert all(set(record["ids"]) == {"0"} for record in records), "map-style ran past its one epoch"
    assert records[0]["params_sha256"] == records[1]["params_sha256"], "the ranks ended with different parameters"
