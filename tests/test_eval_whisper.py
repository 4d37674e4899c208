"""eval_whisper.py end to end on the real Whisper base and the sample's official eval sets: one process and two
(gloo on CPU) give the same predictions and metrics, and what it writes agrees with itself.

Kept small for CI (4 clips per split, 12 new tokens): about 15 s in one process and 40 s in two on 2 shared cores.
"""

import json
import sys
from pathlib import Path

import pytest

from eval_whisper import parse_args
from kspon_whisper.metrics import METRICS, loop_reason, score
from tests.processes import TWO_CPU_ENV, run_ok, two_cpu_processes

REPO = Path(__file__).resolve().parent.parent
SCORES = [metric.name for metric in METRICS]
SAMPLE = REPO / "kspon_dataset" / "sample"
SPLITS = ("eval_clean", "eval_other")
TIMEOUT_S = 300
ENV, TWO_PROCESSES = TWO_CPU_ENV, two_cpu_processes()


def eval_command(model_dir: Path, output_dir: Path) -> list[str]:
    return [
        "eval_whisper.py", "--model", str(model_dir), "--data_dir", str(SAMPLE), "--output_dir", str(output_dir),
        "--max_samples", "4", "--max_new_tokens", "12", "--per_device_batch_size", "2", "--num_workers", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(offline_whisper_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("eval_one")
    finished = run_ok([sys.executable, *eval_command(offline_whisper_dir, out)], timeout_s=TIMEOUT_S, env=ENV)
    return out, finished.stdout


def _predictions(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"predictions_{split}.jsonl").read_text().splitlines()]


def _scores(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {split: {k: v for k, v in metrics[split].items() if k != "utterances_per_s"} for split in SPLITS}


@pytest.mark.slow
def test_writes_predictions_metrics_and_table_that_agree(one_process):
    out, stdout = one_process
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == [*SPLITS, "settings"]  # the official eval sets by default
    for split in SPLITS:
        rows = _predictions(out, split)
        assert len(rows) == 4 and all(row["id"].startswith("KsponSpeech_E") for row in rows)
        rescored = score([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
        assert {k: metrics[split][k] for k in SCORES} == {k: rescored[k] for k in SCORES}
        flagged = [r["id"] for r in rows if loop_reason(r["reference"], r["hypothesis"])]
        loops = metrics[split]["loops"]
        assert (loops["num_hypotheses"], loops["num_loops"]) == (4, len(flagged))
        assert [example["id"] for example in loops["examples"]] == flagged[:3]
        assert metrics[split]["utterances_per_s"] > 0
        assert f"eval {split} | cer " in stdout and "utterances/s" in stdout
    assert "hypotheses look like hallucination or repetition loops" in stdout
    table = (out / "results.md").read_text()
    assert "| Split | Utterances | CER (%) | WER (%) | sWER (%) | space-free CER (%) | Loops |" in table
    for split in SPLITS:
        values = metrics[split]
        cells = [split, "4", *(f"{100 * values[key]:.2f}" for key in SCORES), str(values["loops"]["num_loops"])]
        assert "| " + " | ".join(cells) + " |" in table.splitlines()
    assert (metrics["settings"]["num_beams"], metrics["settings"]["max_new_tokens"]) == (1, 12)


@pytest.mark.slow
def test_two_processes_equal_one(one_process, offline_whisper_dir, tmp_path):
    out, _ = one_process
    run_ok([*TWO_PROCESSES, *eval_command(offline_whisper_dir, tmp_path)], timeout_s=TIMEOUT_S, env=ENV)
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["num_processes"] == 2
    for split in SPLITS:
        assert _predictions(tmp_path, split) == _predictions(out, split)
    assert _scores(tmp_path) == _scores(out)


def test_defaults_are_the_trainers_decoding_settings():
    from train_accelerate import TrainConfig

    args = parse_args(["--model", "m", "--data_dir", "d"])
    config = TrainConfig(data_dir="d", max_steps=1)
    assert (args.num_beams, args.max_new_tokens) == (config.num_beams, config.generation_max_new_tokens)
    assert args.splits == list(SPLITS)
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--data_dir", "d", "--num_beams", "0"])
