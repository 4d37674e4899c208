"""The loop end to end on a tiny Whisper: outputs, log format, and the non-finite gradient skip."""

import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from transformers import WhisperForConditionalGeneration, WhisperProcessor, get_scheduler

import train_accelerate
from kspon_whisper.metrics import METRICS
from tests.processes import run_ok
from train_accelerate import parse_config, training_step

REPO = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(
    r"^step (?P<step>\d+) \| loss (?P<loss>\S+) \| lr (?P<lr>\S+) \| grad_norm (?P<grad_norm>\S+) \| "
    r"(?P<speed>[\d.]+) samples/s \| skipped (?P<skipped>\d+)$",
    re.MULTILINE,
)
EVAL_SPLITS = ("validation", "test", "eval_clean", "eval_other")


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps its state in process-wide singletons; leave none behind for the next test."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def smoke_run(tiny_whisper_dir: Path, tone_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`python train_accelerate.py --config smoke.yaml --max_steps 4 ...` as a user runs it: 4 steps, streamed data."""
    work = tmp_path_factory.mktemp("smoke")
    config = work / "smoke.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_whisper_dir}\n"
        f"data_dir: {tone_corpus}\n"
        "max_steps: 50  # the command line's --max_steps 4 wins\n"
        "per_device_batch_size: 4\n"
        "num_workers: 0\n"
        "learning_rate: 1e-3  # YAML 1.1 reads this as a string; the parser must still make it a float\n"
        "warmup_steps: 1\n"
        "log_every: 2\n"
        "save_every: 2\n"
        "eval_every: 2\n"
        "max_eval_samples: 2  # the tone corpus's validation folder holds 2 utterances\n"
        "generation_max_new_tokens: 4\n"
    )
    output_dir = work / "out"
    command = [sys.executable, "train_accelerate.py", "--config", str(config), "--max_steps", "4"]
    command += ["--output_dir", str(output_dir)]
    result = run_ok(command, timeout_s=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return {"output_dir": output_dir, "stdout": result.stdout}


@pytest.mark.slow
def test_smoke_run_logs_one_greppable_line_per_log_step(smoke_run):
    lines = [m.groupdict() for m in LOG_LINE.finditer(smoke_run["stdout"])]
    assert [int(line["step"]) for line in lines] == [2, 4]  # --max_steps 4 from the command line beat the YAML's 50
    for line in lines:
        assert math.isfinite(float(line["loss"])) and float(line["loss"]) > 0
        assert math.isfinite(float(line["grad_norm"])) and float(line["speed"]) > 0
        assert line["skipped"] == "0"
    assert float(lines[0]["lr"]) > 0  # 1e-3 from the YAML arrived as a number
    printed = smoke_run["stdout"].splitlines()
    assert any(
        re.fullmatch(
            r"eval validation @ step 2 \| cer [\d.]+ \| wer [\d.]+ \| swer [\d.]+ \| cer_nospace [\d.]+ "
            r"\| 2 utterances",
            line,
        )
        for line in printed
    )
    derived = "effective batch 4 = 4 per device x 1 accumulation x 1 processes | 4 optimizer steps = 16 samples"
    assert any(line.startswith(derived) for line in printed)


@pytest.mark.slow
def test_smoke_run_writes_the_model_processor_and_generation_config(smoke_run):
    out = smoke_run["output_dir"]
    model = WhisperForConditionalGeneration.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert WhisperProcessor.from_pretrained(out).tokenizer.get_vocab()["<|ko|>"] == 50264
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["language"] == "ko" and generation["task"] == "transcribe"
    assert generation.get("forced_decoder_ids") is None
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_smoke_run_writes_metrics_predictions_and_card(smoke_run):
    out = smoke_run["output_dir"]
    metrics = json.loads((out / "metrics.json").read_text())
    counts = metrics["train"].pop("data")
    assert metrics["train"] == {"step": 4, "skipped_steps": 0, "labels_too_long": 0}
    for split in EVAL_SPLITS:
        # One "kept N of M" line per whole pass, across workers and ranks; every utterance accounted for.
        assert counts[split]["kept"] == metrics[split]["num_samples"]
        assert counts[split]["seen"] == sum(n for reason, n in counts[split].items() if reason != "seen")
        assert f"{split}: kept {counts[split]['kept']} of {counts[split]['seen']} utterances" in smoke_run["stdout"]
        assert all(math.isfinite(metrics[split][metric.name]) for metric in METRICS), split
        rows = [json.loads(line) for line in (out / f"predictions_{split}.jsonl").read_text().splitlines()]
        assert len(rows) == metrics[split]["num_samples"] > 0
        assert all(set(row) == {"id", "reference", "hypothesis"} and row["reference"] for row in rows)
        assert len({row["id"] for row in rows}) == len(rows)
    card = (out / "README.md").read_text()
    assert "language: ko" in card and "model-index:" in card and "split: eval_other" in card
    # The tone corpus's eval sets hold 6 utterances each, not the official 3,000: the card must not claim a comparison.
    assert "**Not the full official sets:** `eval_clean` (6 utterances scored; the official set has 3,000)" in card


@pytest.mark.slow
def test_smoke_run_checkpoints_and_logs_to_tensorboard(smoke_run):
    out = smoke_run["output_dir"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no tensorboard event file under logs/"


def test_the_loaded_model_is_set_up_for_training(tiny_whisper_dir):
    """from_pretrained returns eval mode, where dropout, SpecAugment and gradient checkpointing silently do nothing."""
    cfg = parse_config(["--model_name_or_path", str(tiny_whisper_dir), "--data_dir", "/d", "--max_steps", "1"])
    cfg.apply_spec_augment = True
    model, processor = train_accelerate.load_model(cfg)
    assert all(module.training for module in model.modules())
    assert model.is_gradient_checkpointing and model.config.apply_spec_augment and not model.config.use_cache
    assert (model.generation_config.language, model.generation_config.task) == ("ko", "transcribe")
    prefix = processor.tokenizer.convert_ids_to_tokens(processor.tokenizer("네").input_ids[:4])
    assert prefix == ["<|startoftranscript|>", "<|ko|>", "<|transcribe|>", "<|notimestamps|>"]


def poison_gradient(parameter: torch.nn.Parameter, on_backward: int):
    """Make `parameter`'s gradient NaN on the `on_backward`-th backward pass only, as an overflow would."""
    passes = itertools.count(1)
    return parameter.register_hook(lambda grad: grad * float("nan") if next(passes) == on_backward else grad)


def test_training_step_skips_a_non_finite_gradient(tiny_whisper_dir, fresh_accelerate):
    accelerator = Accelerator(cpu=True)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("constant", optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)
    processor.tokenizer.set_prefix_tokens(language="ko", task="transcribe", predict_timestamps=False)
    labels = torch.tensor([processor.tokenizer("그래서 나는 그냥 집에 있었어").input_ids] * 2)
    inputs = {"input_features": torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0)), "labels": labels}
    window = [(inputs, 1.0), (inputs, 1.0)]  # two micro-batches: the NaN of the first must sink the whole step
    poisoned = model.model.encoder.layer_norm.weight
    hook = poison_gradient(poisoned, on_backward=1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    loss, grad_norm, stepped = training_step(accelerator, model, optimizer, scheduler, window, 1.0)
    assert torch.isfinite(loss) and not torch.isfinite(grad_norm) and stepped is False
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters()), "a skipped step moved weights"
    assert all(p.grad is None for p in model.parameters()), "the NaN gradient was left to leak into the next step"
    assert not optimizer.state, "AdamW moments were updated by a skipped step"

    loss, grad_norm, stepped = training_step(accelerator, model, optimizer, scheduler, window, 1.0)
    hook.remove()
    assert stepped is True and torch.isfinite(grad_norm) and torch.isfinite(loss)
    assert not torch.equal(before["model.encoder.layer_norm.weight"], poisoned)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_loop_counts_and_logs_skipped_steps(
    tiny_whisper_dir, tone_corpus, tmp_path, monkeypatch, capsys, fresh_accelerate
):
    load_model = train_accelerate.load_model

    def load_model_with_an_overflow_at_step_2(cfg):
        model, processor = load_model(cfg)
        poison_gradient(model.model.decoder.layer_norm.weight, on_backward=2)
        return model, processor

    monkeypatch.setattr(train_accelerate, "load_model", load_model_with_an_overflow_at_step_2)
    out = tmp_path / "out"
    train_accelerate.main(
        ["--model_name_or_path", str(tiny_whisper_dir), "--data_dir", str(tone_corpus), "--output_dir", str(out)]
        + ["--max_steps", "3", "--per_device_batch_size", "2", "--num_workers", "0", "--log_every", "1"]
        + ["--save_every", "0", "--eval_every", "0", "--warmup_steps", "0", "--learning_rate", "1e-3"]
        + ["--generation_max_new_tokens", "2", "--report_to", "none", "--gradient_checkpointing", "false"]
        + ["--final_eval_splits", "test"]
    )
    lines = {int(m["step"]): m.groupdict() for m in LOG_LINE.finditer(capsys.readouterr().out)}
    assert [lines[step]["skipped"] for step in (1, 2, 3)] == ["0", "1", "1"]
    assert lines[2]["grad_norm"] == "nan" and math.isfinite(float(lines[3]["grad_norm"]))
    assert json.loads((out / "metrics.json").read_text())["train"]["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in WhisperForConditionalGeneration.from_pretrained(out).parameters())
