"""LoRA adapters for Whisper (Hu et al. 2021, through `peft`): train ~1 % of the weights, publish a plain Whisper.

large-v3 fine-tuned in full keeps fp32 weights, gradients and two AdamW moments for 1.54 B parameters, 23 GiB before
any activation: more than a 24 GB card holds (transformers#20348). With LoRA the base weights are frozen and only
low-rank adapters beside the attention projections (optionally the MLPs too) get gradients and optimizer state; see
benchmarks/lora_memory.py for the arithmetic. The trainer merges the adapters into the base weights at the end, so
what it saves is an ordinary `WhisperForConditionalGeneration` with the base model's exact keys.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import WhisperForConditionalGeneration

ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")  # encoder and decoder self-attention, decoder cross-attention
MLP = ("fc1", "fc2")


def target_modules(mlp: bool = False, decoder_only: bool = False) -> str:
    """A regex that peft matches against whole module names, such as `model.decoder.layers.3.encoder_attn.k_proj`."""
    stacks = "decoder" if decoder_only else "encoder|decoder"
    names = "|".join(ATTENTION + (MLP if mlp else ()))
    return rf"model\.({stacks})\.layers\.\d+\.(\w+\.)?({names})"


def add_lora(
    model: WhisperForConditionalGeneration,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    mlp: bool = False,
    decoder_only: bool = False,
) -> PeftModel:
    """Freeze every base weight and add trainable rank-`rank` adapters, scaled by alpha / rank, to the targets.

    The adapters' B matrices start at zero, so the wrapped model computes exactly what `model` did until it trains.
    `model` is modified in place and stays reachable as `.get_base_model()`.
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules(mlp, decoder_only),
        bias="none",
    )
    return get_peft_model(model, config)


def merge_lora(model: PeftModel) -> WhisperForConditionalGeneration:
    """Fold the adapters into the base weights (W + alpha / rank * B @ A), in place; return the plain base model.

    Anything still holding `model` (a DDP wrapper, say) now runs the merged weights; the adapters are gone.
    `safe_merge` checks the merged weights for NaN before they replace the originals.
    """
    return model.merge_and_unload(safe_merge=True)


def parameter_line(model: torch.nn.Module) -> str:
    """`trainable 3.9M of 1,547.4M parameters (0.254 %)`: tied weights counted once."""
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return (
        f"trainable {_millions(trainable)} of {_millions(total)} parameters ({100 * trainable / max(total, 1):.3g} %)"
    )


def _millions(count: int) -> str:
    return f"{count / 1e6:,.{1 if count >= 1e6 else 3}f}M"  # small counts (test models) keep three decimals


def card_sentence(hyperparameters: dict) -> str | None:
    """How the published weights were trained, for the model card; None for full fine-tuning."""
    rank = hyperparameters.get("lora_rank") or 0
    if not rank:
        return None
    where = "attention projections and MLPs" if hyperparameters.get("lora_mlp") else "attention projections"
    where += " of the decoder" if hyperparameters.get("freeze_encoder") else ""
    return (
        f"Fine-tuned with LoRA (rank {rank}, alpha {hyperparameters['lora_alpha']}) on the {where}; the adapters "
        "are merged into the base weights, so this repository holds a plain `WhisperForConditionalGeneration` "
        "(no PEFT needed to load it)."
    )
