"""benchmarks/gpu_check.sh at toy size on the CPU (`--cpu-smoke`), so the GPU check cannot rot before a GPU runs it."""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.processes import run_output

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # about 2 min on 2 shared cores


@pytest.mark.slow
def test_cpu_smoke_runs_both_phases_and_writes_its_numbers(tmp_path):
    committed = REPO / "benchmarks" / "RESULTS.md"
    before = hashlib.sha256(committed.read_bytes()).hexdigest()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    log = run_output(
        ["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", str(tmp_path)], cwd=REPO, env=env, timeout_s=TIMEOUT_S
    )
    results = (tmp_path / "RESULTS.md").read_text()
    throughput = results.split("## Training throughput", 1)[1].split("\n## ", 1)[0]
    assert "device CPU" in throughput
    # Batch 8, then 4 with checkpointing: each list's largest size that fits (on a CPU, the first).
    assert re.search(r"\| A: this loop \| 8 \| False \| [\d.]+ \|", throughput), throughput
    assert re.search(r"\| A: this loop \| 4 \| True \| [\d.]+ \|", throughput), throughput
    assert re.search(r"\| B: blog \(Seq2SeqTrainer\) \| 4 \| True \| [\d.]+ \|", throughput), throughput
    loop = results.split("## GPU check: the training loop", 1)[1]
    assert "device CPU" in loop and "mixed precision no" in loop
    assert re.search(r"^step 2 \| loss [\d.]+ ", loop, flags=re.MULTILINE), loop
    assert re.search(r"^eval test @ step 2 \| cer [\d.]+ ", loop, flags=re.MULTILINE), loop
    assert "gpu_check: done" in log
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == before, "the smoke run wrote the committed RESULTS.md"


def test_the_loop_report_finds_log_lines_behind_a_progress_bar(tmp_path):
    # `accelerate launch` relays the child's stderr through a thread: the bar's text can precede a log line.
    from benchmarks.loop_report import section

    metrics = {"train": {"step": 2}, "test": {"cer": 0.5, "num_scored": 11}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    log = (
        "effective batch 8 | mixed precision bf16 | gradient checkpointing True\n"
        "\rtrain:  50%|█████     | 1/2 [00:00<00:00,  2.24it/s]step 1 | loss 10.8497 | lr 1e-05 | skipped 0\n"
        "\r          \rstep 2 | loss 10.8693 | lr 0 | skipped 0\n"
        "\reval test: 2it [00:00,  4.62it/s]eval test @ step 2 | cer 0.5000 | 11 utterances\n"
    )
    text = section(tmp_path, log, seconds=9, config="accelerate_config.yaml")
    block = text.split("```")[1].strip().splitlines()
    assert block == [
        "step 1 | loss 10.8497 | lr 1e-05 | skipped 0",
        "step 2 | loss 10.8693 | lr 0 | skipped 0",
        "eval test @ step 2 | cer 0.5000 | 11 utterances",
    ]
    assert "mixed precision bf16" in text
