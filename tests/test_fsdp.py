"""configs/fsdp_8gpu.yaml's FSDP2 settings, run with two CPU processes: train, checkpoint, resume, evaluate, save.

accelerate only turns FSDP on for accelerators (on a CPU-only host the config silently becomes DDP), so the runs go
through tests/fsdp_on_cpu.py, which makes accelerate take its real FSDP branch on gloo; the test checks that the
checkpoints are FSDP's sharded folders, so a silent fall-back to DDP fails it.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import merge_fsdp_weights
from safetensors.torch import load_file, save_file
from transformers import WhisperForConditionalGeneration

import train_accelerate
from kspon_whisper.evaluation import evaluate
from kspon_whisper.inference import GenerationSettings
from tests.processes import run_output
from train_accelerate import Trainer, parse_config

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300  # about 40-90 s a run on 2 shared cores
STEPS = 4
MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def accelerate_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The advertised FSDP config, scaled to two fp32 CPU processes; the fsdp_config block is used as written."""
    config = yaml.safe_load((REPO / "configs" / "fsdp_8gpu.yaml").read_text())
    config.pop("gpu_ids")
    config.update(num_processes=2, mixed_precision="no", use_cpu=False)
    path = tmp_path_factory.mktemp("fsdp_config") / "fsdp_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(accelerate_config: Path, model_dir: Path, corpus: Path, output_dir: Path, *extra: str) -> str:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
        "--main_process_port", "0", "tests/fsdp_on_cpu.py", "train_accelerate.py",
        "--model_name_or_path", str(model_dir), "--data_dir", str(corpus), "--output_dir", str(output_dir),
        "--max_steps", str(STEPS), "--per_device_batch_size", "4", "--num_workers", "0", "--learning_rate", "1e-3",
        "--warmup_steps", "1", "--gradient_checkpointing", "false", "--log_every", "1", "--save_every", "2",
        "--eval_every", "2", "--max_eval_samples", "4", "--final_eval_splits", "test",
        "--generation_max_new_tokens", str(MAX_NEW_TOKENS), "--report_to", "none", *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return run_output(command, cwd=REPO, env=env, timeout_s=TIMEOUT_S)


@pytest.fixture(scope="module")
def runs(accelerate_config, tiny_whisper_dir, tone_corpus, tmp_path_factory) -> dict[str, Path]:
    """`full`: 4 steps straight through. `resumed`: from `full`'s step-2 checkpoint to step 4, in a new folder."""
    work = tmp_path_factory.mktemp("fsdp_runs")
    full, resumed = work / "full", work / "resumed"
    launch(accelerate_config, tiny_whisper_dir, tone_corpus, full)
    shutil.copytree(full / "checkpoints" / "step_00000002", resumed / "checkpoints" / "step_00000002")
    log = launch(accelerate_config, tiny_whisper_dir, tone_corpus, resumed, "--resume_from_checkpoint", "latest")
    assert "Resumed from" in log and "at step 2" in log, log[-3000:]
    assert log.count("Verified ") == 1, "not one rank alone read the checkpoint through to verify it"
    return {"full": full, "resumed": resumed}


@pytest.mark.slow
def test_checkpoints_are_fsdp_shards(runs):
    checkpoint = runs["full"] / "checkpoints" / "step_00000004"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file(), "FSDP did not run (DDP fall-back?)"
    assert (checkpoint / "optimizer_0" / ".metadata").is_file()
    assert not list(checkpoint.glob("model*.safetensors")), "a full model in the checkpoint: not a sharded state"


@pytest.mark.slow
def test_saved_model_is_the_trained_full_model(runs, tiny_whisper_dir, tmp_path):
    saved = load_file(runs["full"] / "model.safetensors")
    # accelerate's offline consolidation of the last sharded checkpoint: the weights training ended with.
    merge_fsdp_weights(str(runs["full"] / "checkpoints" / "step_00000004" / "pytorch_model_fsdp_0"), str(tmp_path))
    trained = load_file(tmp_path / "model.safetensors")
    initial = load_file(tiny_whisper_dir / "model.safetensors")
    # proj_out is tied to the token embeddings: plain save_pretrained drops the copy, the gathered state keeps it.
    assert set(saved) - {"proj_out.weight"} == set(initial) and set(saved) == set(trained)
    assert all(saved[name].shape == initial[name].shape for name in initial), "a shard was saved, not the full tensor"
    assert all(torch.equal(saved[name], trained[name]) for name in saved)
    assert any(not torch.equal(saved[name], initial[name]) for name in initial), "training did not change the weights"
    _, info = WhisperForConditionalGeneration.from_pretrained(runs["full"], output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


@pytest.mark.slow
def test_resume_from_a_sharded_checkpoint_ends_with_the_same_weights(runs):
    full, resumed = (load_file(runs[name] / "model.safetensors") for name in ("full", "resumed"))
    assert set(full) == set(resumed)
    assert all(torch.equal(full[name], resumed[name]) for name in full)


@pytest.mark.slow
def test_fsdp_evaluation_matches_one_process_on_the_saved_model(runs, tone_corpus, tmp_path):
    """The FSDP run's final predictions are what one plain process generates with the weights it saved."""
    rows = [json.loads(line) for line in (runs["full"] / "predictions_test.jsonl").read_text().splitlines()]
    cfg = parse_config(
        ["--model_name_or_path", str(runs["full"]), "--data_dir", str(tone_corpus), "--output_dir", str(tmp_path)]
        + ["--max_steps", "1", "--per_device_batch_size", "4", "--num_workers", "0", "--report_to", "none"]
    )
    accelerator = Accelerator()
    try:
        trainer = Trainer(cfg, accelerator)
        metrics, records = evaluate(
            accelerator,
            trainer.model,
            trainer.loader("test"),
            trainer.processor,
            trainer.device_inputs,
            settings=GenerationSettings(num_beams=1, max_new_tokens=MAX_NEW_TOKENS),
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert records == rows
    written = json.loads((runs["full"] / "metrics.json").read_text())["test"]
    assert metrics == pytest.approx(written)


@pytest.mark.slow
def test_push_only_pushes_the_gathered_model_and_refuses_a_shard(runs, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(train_accelerate, "push_output_dir", lambda output_dir, *_, **__: pushed.append(output_dir))
    shutil.copytree(runs["full"], tmp_path / "out", ignore=shutil.ignore_patterns("checkpoints"))
    push_only = ["--push_only", "--output_dir", str(tmp_path / "out"), "--hub_model_id", "me/whisper-ko"]
    train_accelerate.main(push_only)
    assert pushed == [str(tmp_path / "out")]
    # What rank 0 alone holds under FSDP: the first half of every tensor's rows.
    weights = load_file(tmp_path / "out" / "model.safetensors")
    shard = {name: tensor[: -(-len(tensor) // 2)].contiguous() for name, tensor in weights.items()}
    save_file(shard, tmp_path / "out" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no loadable full model .* --resume_from_checkpoint latest"):
        train_accelerate.main(push_only)
    assert len(pushed) == 1
