"""Randomly initialised Whisper checkpoints built from a config (no download), for tests and benchmarks.

The tokenizer and feature extractor come from a real Whisper processor, so labels, prompts and log-mel inputs are
exactly those of the real model; only the network is random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor


@dataclass(frozen=True)
class Architecture:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    ffn_dim: int
    num_mel_bins: int
    vocab_size: int


ARCHITECTURES = {  # the released sizes, plus "test": two tiny layers for unit tests
    #                              d_model enc dec heads  ffn  mels  vocab
    "tiny": Architecture(384, 4, 4, 6, 1536, 80, 51865),
    "small": Architecture(768, 12, 12, 12, 3072, 80, 51865),
    "large-v3": Architecture(1280, 32, 32, 20, 5120, 128, 51866),
    "large-v3-turbo": Architecture(1280, 32, 4, 20, 5120, 128, 51866),
    "test": Architecture(32, 1, 1, 2, 64, 80, 51865),
}


def whisper_config(name: str, **overrides) -> WhisperConfig:
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}.")
    arch = ARCHITECTURES[name]
    values = {
        "d_model": arch.d_model,
        "encoder_layers": arch.encoder_layers,
        "decoder_layers": arch.decoder_layers,
        "encoder_attention_heads": arch.heads,
        "decoder_attention_heads": arch.heads,
        "encoder_ffn_dim": arch.ffn_dim,
        "decoder_ffn_dim": arch.ffn_dim,
        "num_mel_bins": arch.num_mel_bins,
        "vocab_size": arch.vocab_size,
        "max_source_positions": 1500,
        "max_target_positions": 448,
        "decoder_start_token_id": 50258,
        "pad_token_id": 50257,
        "bos_token_id": 50257,
        "eos_token_id": 50257,
    }
    return WhisperConfig(**(values | overrides))


def save_random_whisper(name: str, processor_dir: str | Path, output_dir: str | Path, seed: int = 0) -> Path:
    """A random `name`-sized Whisper saved with the processor and generation config of `processor_dir`."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(whisper_config(name))
    model.generation_config = GenerationConfig.from_pretrained(processor_dir)
    model.save_pretrained(output_dir)
    WhisperProcessor.from_pretrained(processor_dir).save_pretrained(output_dir)
    return Path(output_dir)
