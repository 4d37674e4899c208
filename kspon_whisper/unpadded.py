"""Experimental, off by default (`--crop_encoder_input`): train Whisper's encoder on less than 30 s of log-mel.

The encoder insists on 3,000 frames (30 s), but KsponSpeech clips average 5.6 s, so most encoder work is spent on
padding. Cropping each batch to its longest clip and the positional embedding to match raises the ceiling several
times over (icefall and WeNet train this way). Distil-Whisper found 30 s padding more accurate, so evaluation and
inference always use the full 30 s; benchmarks/RESULTS.md compares the CER of both on the sample corpus.
"""

from __future__ import annotations

import contextlib
import math

import torch

HOP = 160  # samples per log-mel frame at 16 kHz
FRAMES_PER_SECOND = 100
FULL_FRAMES = 3000


def cropped_frames(audio_lengths: torch.Tensor) -> int:
    """Frames covering the batch's longest clip, rounded up to whole seconds so few shapes occur (≤ 30)."""
    longest = int(audio_lengths.max())
    seconds = max(1, math.ceil(longest / HOP / FRAMES_PER_SECOND))
    return min(FULL_FRAMES, seconds * FRAMES_PER_SECOND)


@contextlib.contextmanager
def encoder_input_frames(model, frames: int):
    """Let `model`'s encoder accept `frames` log-mel frames for the duration of the block.

    The encoder checks the input length against `config.max_source_positions` and adds positions
    `0 .. embed_positions.num_embeddings`; both are narrowed to the cropped length and put back afterwards.
    """
    if frames == FULL_FRAMES:
        yield
        return
    encoder = model.get_encoder()
    positions = frames // 2  # the second convolution has stride 2
    saved = encoder.config.max_source_positions, encoder.embed_positions.num_embeddings
    encoder.config.max_source_positions = encoder.embed_positions.num_embeddings = positions
    try:
        yield
    finally:
        encoder.config.max_source_positions, encoder.embed_positions.num_embeddings = saved
