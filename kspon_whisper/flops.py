"""Exact matmul FLOPs of one Whisper training sample, for model FLOP utilisation (MFU).

Counts every matrix multiply and convolution (2 FLOPs per multiply-add): the two input convolutions, each encoder
layer over 1,500 positions (Q/K/V/O projections, QKᵀ and AV, the MLP), each decoder layer over the label tokens
(self-attention, cross-attention whose K/V run over the 1,500 encoder positions, the MLP), and the output
projection. Backward costs twice the forward, except for the first convolution, whose input (the log-mel) needs no
gradient; gradient checkpointing recomputes the layers' forward once more.
Norms, softmax and GELU are left out: they are <1 % and do not run on the tensor cores that MFU is measured against.
"""

from __future__ import annotations

from transformers import WhisperConfig


def whisper_forward_flops(config: WhisperConfig, label_tokens: int, input_frames: int = 3000) -> dict[str, float]:
    """Forward FLOPs per sample, split into the parts that gradient checkpointing does or does not recompute."""
    d, mels, vocab = config.d_model, config.num_mel_bins, config.vocab_size
    frames = input_frames // 2  # conv2 has stride 2
    tokens = label_tokens
    input_conv = 2 * input_frames * (3 * mels) * d
    conv2 = 2 * frames * (3 * d) * d
    encoder_layer = 2 * frames * 4 * d * d + 2 * 2 * frames * frames * d + 2 * frames * 2 * d * config.encoder_ffn_dim
    decoder_layer = (
        2 * tokens * 4 * d * d  # self-attention projections
        + 2 * 2 * tokens * tokens * d  # self-attention scores and values
        + 2 * tokens * 2 * d * d  # cross-attention Q and O
        + 2 * frames * 2 * d * d  # cross-attention K and V over the encoder output
        + 2 * 2 * tokens * frames * d  # cross-attention scores and values
        + 2 * tokens * 2 * d * config.decoder_ffn_dim
    )
    layers = config.encoder_layers * encoder_layer + config.decoder_layers * decoder_layer
    head = 2 * tokens * d * vocab
    return {"layers": float(layers), "input_conv": float(input_conv), "other": float(conv2 + head)}


def whisper_training_flops(
    config: WhisperConfig, label_tokens: int, gradient_checkpointing: bool, input_frames: int = 3000
) -> float:
    """FLOPs of forward + backward for one sample (plus the layers' recomputation under gradient checkpointing)."""
    forward = whisper_forward_flops(config, label_tokens, input_frames)
    total = 3 * (forward["layers"] + forward["other"]) + 2 * forward["input_conv"]
    return total + forward["layers"] if gradient_checkpointing else total


def mfu(samples_per_second: float, flops_per_sample: float, peak_flops: float) -> float:
    return samples_per_second * flops_per_sample / peak_flops
