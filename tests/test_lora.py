"""LoRA (`--lora_rank`): adapters where they belong, gradients through checkpointing, an exact merge, a plain output.

Exact resume with LoRA is a case of tests/test_resume.py. The end-to-end run here trains with two DDP processes and
gradient checkpointing, then checks what `Trainer.finish` leaves: the adapters merged into a plain Whisper.
"""

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration

import train_accelerate
from kspon_whisper.lora import add_lora, card_sentence, merge_lora
from kspon_whisper.random_whisper import ARCHITECTURES, whisper_config
from tests.processes import TWO_CPU_ENV, run_ok, two_cpu_processes
from train_accelerate import TrainConfig, Trainer, configure_model, load_model, parse_config

RANK, ALPHA = 4, 16
BASE_ARGS = ["--data_dir", "/d", "--max_steps", "5"]
DECODER_START = [50258, 50264, 50359, 50363]  # <|startoftranscript|><|ko|><|transcribe|><|notimestamps|>


def adapted_modules(model: torch.nn.Module) -> set[str]:
    """Names (without peft's prefix) of the modules that got an adapter."""
    return {re.sub(r"^base_model\.model\.", "", name) for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def expected_targets(layers: int, mlp: bool, decoder_only: bool) -> set[str]:
    names = set()
    for stack in ["decoder"] if decoder_only else ["encoder", "decoder"]:
        for layer in range(layers):
            prefix = f"model.{stack}.layers.{layer}."
            for attention in ["self_attn"] + (["encoder_attn"] if stack == "decoder" else []):
                names |= {f"{prefix}{attention}.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj")}
            names |= {f"{prefix}fc1", f"{prefix}fc2"} if mlp else set()
    return names


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """B starts at zero, which makes the adapters a no-op: a merge or a gradient test would pass for nothing."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1


def whisper_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 50000, (batch, 6), generator=generator)
    return {
        "input_features": torch.randn(batch, 80, 3000, generator=generator),
        "decoder_input_ids": torch.cat([torch.tensor([DECODER_START] * batch), labels[:, :-1]], dim=1),
        "labels": torch.cat([torch.tensor([DECODER_START[1:]] * batch), labels], dim=1),
    }


def tiny_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(whisper_config("test", encoder_layers=2, decoder_layers=2))


@pytest.mark.parametrize(("mlp", "freeze_encoder"), [(False, False), (True, False), (False, True)])
def test_adapters_sit_on_the_targets_and_are_all_that_trains(tiny_whisper_dir, mlp, freeze_encoder):
    cfg = parse_config(
        ["--model_name_or_path", str(tiny_whisper_dir), *BASE_ARGS, "--lora_rank", str(RANK)]
        + ["--lora_mlp", str(mlp).lower(), "--freeze_encoder", str(freeze_encoder).lower()]
    )
    model, _ = load_model(cfg)
    assert adapted_modules(model) == expected_targets(1, mlp, decoder_only=freeze_encoder)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.search(r"\.lora_[AB]\.default\.weight$", name) for name in trainable), trainable
    assert len(trainable) == 2 * len(adapted_modules(model))
    assert model.peft_config["default"].lora_alpha == 2 * RANK  # the default alpha


@pytest.mark.parametrize("mlp", [False, True])
def test_large_v3_adapters_count_as_the_closed_form_says(mlp):
    """On large-v3 itself (meta device: nothing allocated), the counts the README's LoRA table rests on
    (benchmarks/lora_memory.py): every adapted Linear(in, out) adds rank x (in + out); the encoder has 4 projections a
    layer, the decoder 8, and with MLP both stacks add fc1 and fc2."""
    arch, rank = ARCHITECTURES["large-v3"], 16
    with torch.device("meta"):
        full = WhisperForConditionalGeneration(whisper_config("large-v3"))
        total = sum(p.numel() for p in full.parameters())
        assert sum(p.numel() for p in full.parameters() if p.requires_grad) == total - arch.d_model * 1500
        lora = add_lora(WhisperForConditionalGeneration(whisper_config("large-v3")), rank, 2 * rank, mlp=mlp)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    attention = rank * (arch.d_model + arch.d_model) * arch.encoder_layers * (4 + 8)
    mlp_adapters = rank * (arch.d_model + arch.ffn_dim) * 2 * arch.encoder_layers * 2
    assert attention == 15_728_640 and arch.encoder_layers == arch.decoder_layers
    assert trainable == attention + (mlp_adapters if mlp else 0)
    assert sum(p.numel() for p in lora.parameters()) == total + trainable


def test_lora_options_are_validated_early():
    assert parse_config(BASE_ARGS).lora_rank == 0  # full fine-tuning by default
    assert parse_config([*BASE_ARGS, "--lora_rank", "8"]).lora_alpha == 16
    assert parse_config([*BASE_ARGS, "--lora_rank", "8", "--lora_alpha", "64"]).lora_alpha == 64
    with pytest.raises(ValueError, match=r"--lora_rank must be 0 .* not -4"):
        parse_config([*BASE_ARGS, "--lora_rank", "-4"])
    with pytest.raises(ValueError, match=r"--lora_alpha must be positive .* got 0"):
        parse_config([*BASE_ARGS, "--lora_rank", "8", "--lora_alpha", "0"])
    with pytest.raises(ValueError, match=r"--lora_dropout must be in \[0, 1\), got 1.0"):
        parse_config([*BASE_ARGS, "--lora_rank", "8", "--lora_dropout", "1"])
    with pytest.raises(ValueError, match="set --lora_rank too"):
        parse_config([*BASE_ARGS, "--lora_mlp", "true"])


def test_lora_under_fsdp_is_refused_before_anything_loads():
    cfg = parse_config([*BASE_ARGS, "--lora_rank", "8"])
    with pytest.raises(ValueError, match=r"does not run under FSDP\. Launch with DDP \(configs/ddp_8gpu.yaml\)"):
        Trainer(cfg, SimpleNamespace(distributed_type=DistributedType.FSDP))


def test_the_card_sentence_says_how_the_weights_were_trained():
    lora = dataclasses.asdict(parse_config([*BASE_ARGS, "--lora_rank", "16", "--lora_mlp", "true"]))
    sentence = card_sentence(lora)
    assert sentence.startswith("Fine-tuned with LoRA (rank 16, alpha 32) on the attention projections and MLPs;")
    assert card_sentence(dataclasses.asdict(parse_config(BASE_ARGS))) is None


def test_merged_model_computes_what_the_adapters_did_with_the_base_keys():
    base = tiny_whisper()
    base_state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    model = add_lora(base, RANK, ALPHA, mlp=True)
    randomize_adapters(model)
    model.eval()
    inputs = whisper_inputs()
    with torch.no_grad():
        adapted = model(**inputs).logits
        merged = merge_lora(model)
        assert type(merged) is WhisperForConditionalGeneration and merged is base
        torch.testing.assert_close(merged(**inputs).logits, adapted, rtol=0, atol=1e-5)
        # What still holds the peft wrapper (the DDP-prepared model that evaluates next) runs the merged weights.
        torch.testing.assert_close(model(**inputs).logits, adapted, rtol=0, atol=1e-5)
    state = merged.state_dict()
    assert state.keys() == base_state.keys()
    changed = {name.removesuffix(".weight") for name in state if not torch.equal(state[name], base_state[name])}
    assert changed == expected_targets(2, mlp=True, decoder_only=False)


def test_gradients_reach_every_adapter_through_gradient_checkpointing():
    """Non-reentrant checkpointing with every base weight frozen: the adapters still get the exact gradients."""
    grads = {}
    for checkpointing in (False, True):
        base = tiny_whisper()
        configure_model(base, TrainConfig(data_dir="/d", max_steps=1, gradient_checkpointing=checkpointing))
        model = add_lora(base, RANK, ALPHA, mlp=True)
        randomize_adapters(model)
        assert base.model.encoder.gradient_checkpointing is checkpointing
        model(**whisper_inputs()).loss.backward()
        assert all(p.grad is None for name, p in model.named_parameters() if "lora_" not in name)
        grads[checkpointing] = {name: p.grad for name, p in model.named_parameters() if "lora_" in name}
    assert grads[True].keys() == grads[False].keys()
    assert len(grads[True]) == 2 * len(expected_targets(2, mlp=True, decoder_only=False))  # A and B of each
    for name, grad in grads[True].items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads[False][name], rtol=1e-4, atol=1e-7, msg=name)


# --- a real run: two DDP processes, bf16 autocast, gradient checkpointing, LoRA on attention and MLP ---

TIMEOUT_S = 240  # about 40 s on 2 shared cores


@pytest.fixture(scope="module")
def ddp_run(tiny_whisper_dir: Path, tone_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("lora_ddp") / "out"
    command = [
        *two_cpu_processes(mixed_precision="bf16"), "train_accelerate.py",
        "--model_name_or_path", str(tiny_whisper_dir), "--data_dir", str(tone_corpus), "--output_dir", str(out),
        "--max_steps", "4", "--per_device_batch_size", "4", "--num_workers", "0", "--learning_rate", "1e-2",
        "--warmup_steps", "1", "--gradient_checkpointing", "true", "--log_every", "1", "--eval_every", "0",
        "--save_every", "0", "--final_eval_splits", "test", "--generation_max_new_tokens", "2", "--report_to", "none",
        "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), "--lora_mlp", "true", "--lora_dropout", "0.1",
        "--trained_ids_dir", str(out / "trained_ids"),
    ]  # fmt: skip
    result = run_ok(command, timeout_s=TIMEOUT_S, env=TWO_CPU_ENV)
    return {"out": out, "log": result.stdout + result.stderr}


@pytest.mark.slow
def test_the_saved_model_is_a_plain_whisper_with_the_base_keys(ddp_run, tiny_whisper_dir):
    out = ddp_run["out"]
    assert not list(out.glob("adapter_*")), "adapter files saved: the output is not a plain Whisper"
    saved, base = load_file(out / "model.safetensors"), load_file(tiny_whisper_dir / "model.safetensors")
    assert saved.keys() == base.keys()
    _, info = WhisperForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    train_accelerate.check_full_model(str(out))  # what --push_only checks before pushing
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["step"] == 4 and metrics["test"]["num_scored"] > 0  # the final evaluation ran


@pytest.mark.slow
def test_only_the_adapters_trained_and_the_merge_used_them(ddp_run, tiny_whisper_dir):
    out = ddp_run["out"]
    base = load_file(tiny_whisper_dir / "model.safetensors")
    trained = torch.load(out / "checkpoints" / "step_00000004" / "pytorch_model.bin", weights_only=True)  # unmerged
    trained = {name.removeprefix("base_model.model."): tensor for name, tensor in trained.items()}
    saved = load_file(out / "model.safetensors")
    targets = expected_targets(1, mlp=True, decoder_only=False)
    for name, tensor in base.items():
        module = name.rsplit(".", 1)[0]
        if module not in targets:
            assert torch.equal(trained[name], tensor) and torch.equal(saved[name], tensor), f"{name} was trained"
            continue
        frozen = trained[f"{module}.base_layer.{name.rsplit('.', 1)[1]}"]
        assert torch.equal(frozen, tensor), f"the frozen base weight {name} moved"
        if name.endswith(".bias"):
            assert torch.equal(saved[name], tensor)
            continue
        lora_a, lora_b = trained[f"{module}.lora_A.default.weight"], trained[f"{module}.lora_B.default.weight"]
        assert lora_b.abs().sum() > 0, f"{module}'s adapter did not train"
        torch.testing.assert_close(saved[name], tensor + ALPHA / RANK * lora_b @ lora_a, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_ranks_agree_and_the_trainable_parameters_are_logged(ddp_run):
    records = [json.loads((ddp_run["out"] / "trained_ids" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["params_sha256"] == records[1]["params_sha256"], "DDP let the ranks' adapters drift apart"
    pattern = r"^trainable ([\d.]+)M of ([\d.,]+)M parameters \(([\d.]+) %\)(.*)$"
    line = re.search(pattern, ddp_run["log"], re.MULTILINE)
    assert line and line[4] == f" | LoRA rank {RANK}, alpha {ALPHA}, merged at the end", ddp_run["log"][-3000:]
    assert 0 < float(line[1]) < float(line[2]) and 0 < float(line[3]) < 1
    assert "still referenced at exit" not in ddp_run["log"]  # `end_distributed` freed the merged model's DDP
    assert "mixed precision bf16" in ddp_run["log"]  # autocast ran over the fp32 weights and adapters, as on a GPU
