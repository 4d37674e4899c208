"""Tiny randomly initialised Whisper checkpoints for fast tests and benchmarks, built from a config (no download).

The tokenizer and feature extractor come from a real Whisper processor, so labels, prompts and log-mel inputs are
exactly those of the real model; only the network is small and random.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

# Released architectures, for benchmarks that build a model of the right size without downloading it.
ARCHITECTURES = {
    "tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4, heads=6, ffn=1536, mels=80, vocab=51865),
    "small": dict(d_model=768, encoder_layers=12, decoder_layers=12, heads=12, ffn=3072, mels=80, vocab=51865),
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, heads=20, ffn=5120, mels=128, vocab=51866),
    "large-v3-turbo": dict(d_model=1280, encoder_layers=32, decoder_layers=4, heads=20, ffn=5120, mels=128, vocab=51866),
    "test": dict(d_model=32, encoder_layers=1, decoder_layers=1, heads=2, ffn=64, mels=80, vocab=51865),
}


def whisper_config(name: str, **overrides) -> WhisperConfig:
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}.")
    a = ARCHITECTURES[name]
    values = dict(
        d_model=a["d_model"],
        encoder_layers=a["encoder_layers"],
        decoder_layers=a["decoder_layers"],
        encoder_attention_heads=a["heads"],
        decoder_attention_heads=a["heads"],
        encoder_ffn_dim=a["ffn"],
        decoder_ffn_dim=a["ffn"],
        num_mel_bins=a["mels"],
        vocab_size=a["vocab"],
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50258,
        pad_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50257,
    )
    return WhisperConfig(**(values | overrides))


def save_random_whisper(name: str, processor_dir: str | Path, output_dir: str | Path, seed: int = 0) -> Path:
    """A random `name`-sized Whisper saved with the processor and generation config of `processor_dir`."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(whisper_config(name))
    processor = WhisperProcessor.from_pretrained(processor_dir)
    model.generation_config = type(model.generation_config).from_pretrained(processor_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return Path(output_dir)
