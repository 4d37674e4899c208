"""Whisper's log-mel spectrogram as a batched torch module, so features can be computed on the accelerator.

`WhisperFeatureExtractor` runs its STFT on the host, inside DataLoader workers; on a 2-core host that is the
bottleneck. With `WhisperCollator(audio_mode="waveform")` the loader ships raw 16 kHz audio instead and this module
turns it into the exact `input_features` the extractor would have produced:

    log_mel = LogMelSpectrogram(feature_extractor).to(accelerator.device)
    input_features = log_mel(batch.pop("input_audio"))

Inference (`kspon_whisper.inference`) uses the same module, with `pad_or_trim=False` for audio longer than 30 s.

Two front-ends feed Whisper a clip shorter than 30 s. Transformers and openai-whisper pad the *waveform* to 30 s, so
the padded frames sit at the log-mel floor, (peak - 8 + 4) / 4. faster-whisper pads the waveform by 160 samples only
and then the *normalised log-mel* with zeros to 3,000 frames (`FeatureExtractor` + `pad_or_trim`). A model fine-tuned
on one form alone can lose half its accuracy in the other (benchmarks/RESULTS.md), so the trainer gives a share of
its examples the second form (`feature_padded`, `--feature_padding_probability`).
"""

import torch
from transformers import WhisperFeatureExtractor

from .audio import INT16_SCALE

_LOG_FLOOR = 1e-10  # Whisper clamps mel power here before log10
_DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below each example's peak
CHUNK_FRAMES = 3000  # STFT frames computed at a time: one 30 s window, so a training batch is one chunk


class LogMelSpectrogram(torch.nn.Module):
    """Batched equivalent of `WhisperFeatureExtractor.__call__` for 16 kHz mono audio.

    Audio of any length is zero-padded or truncated to the extractor's 30 s window before the STFT, as the extractor
    does, so `forward` returns (batch, n_mels, 3000) float32 whatever the input length or dtype. With
    `pad_or_trim=False` the whole batch is kept, as `extractor(..., truncation=False, padding="longest")` keeps it:
    (batch, n_mels, samples // hop_length), each row normalised over its whole length, and `attention_mask` gives
    the extractor's mask. Keep the module out of `model.half()` / `.to(torch.bfloat16)`: that would round its mel
    filters, which `forward` cannot undo.
    """

    def __init__(self, feature_extractor: WhisperFeatureExtractor) -> None:
        super().__init__()
        if feature_extractor.dither != 0.0:
            raise ValueError(
                f"feature_extractor.dither is {feature_extractor.dither}; LogMelSpectrogram mirrors only the "
                "deterministic extractor (dither=0.0, the setting of every released Whisper checkpoint). "
                "Set feature_extractor.dither = 0.0 or compute features with the extractor itself."
            )
        self.n_fft: int = feature_extractor.n_fft
        self.hop_length: int = feature_extractor.hop_length
        self.n_samples: int = feature_extractor.n_samples
        self.n_mels: int = feature_extractor.feature_size
        # Non-persistent: these are derived from the extractor, so they must not end up in model checkpoints.
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        mel_filters = torch.as_tensor(feature_extractor.mel_filters, dtype=torch.float32).T.contiguous()
        self.register_buffer("mel_filters", mel_filters, persistent=False)  # (n_mels, n_fft // 2 + 1)

    def forward(self, audio: torch.Tensor, pad_or_trim: bool = True) -> torch.Tensor:
        """Map (batch, samples) int16 or float audio to (batch, n_mels, frames) float32 log-mel features."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be (batch, samples) mono, got shape {tuple(audio.shape)}.")
        # bf16/fp16 STFT and log10 lose the low-energy bins (the 80 dB floor sits ~8 decades below the peak), so the
        # whole computation stays in float32 even when the training step runs under autocast.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            waveform = _to_float32(audio)
            if pad_or_trim:
                waveform = self._pad_or_trim(waveform)
            # The extractor drops the STFT's last frame: 480000 / 160 + 1 frames -> 3000.
            num_frames = waveform.shape[-1] // self.hop_length
            log_spec = waveform.new_empty(waveform.shape[0], self.n_mels, num_frames)
            for first in range(0, num_frames, CHUNK_FRAMES):
                last = min(first + CHUNK_FRAMES, num_frames)
                log_spec[..., first:last] = self._log10_mel(waveform, first, last)
            peak = log_spec.amax(dim=(1, 2), keepdim=True)
            log_spec = torch.maximum(log_spec, peak - _DYNAMIC_RANGE, out=log_spec)
            return log_spec.add_(4.0).div_(4.0)

    def feature_padded(self, clip: torch.Tensor) -> torch.Tensor:
        """(n_mels, 3000) features of a 1-D clip as faster-whisper computes them: the log-mel of the clip and 160 zero
        samples, normalised over those frames alone, then zero-padded (or cut) to the 30 s window's frames."""
        frames = self.n_samples // self.hop_length
        waveform = torch.nn.functional.pad(_to_float32(clip)[None], (0, self.hop_length))
        log_spec = self(waveform, pad_or_trim=False)[0, :, :frames]
        return torch.nn.functional.pad(log_spec, (0, frames - log_spec.shape[-1]))

    def _log10_mel(self, waveform: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """log10 mel power of frames [first, last) of the centred, reflect-padded STFT, from only the samples those
        frames cover: a long file's spectrogram is never whole in memory (30 minutes: 0.29 GB complex, 0.29 GB squared,
        0.14 GB of power; measured, 0.6 GB more peak memory in transcribe.py)."""
        half, length = self.n_fft // 2, waveform.shape[-1]
        start, end = first * self.hop_length - half, (last - 1) * self.hop_length + half
        piece = waveform[:, max(start, 0) : min(end, length)]
        if start < 0 or end > length:  # the file's own ends: reflected, as torch.stft(center=True) pads them
            piece = torch.nn.functional.pad(piece, (max(-start, 0), max(end - length, 0)), mode="reflect")
        stft = torch.stft(
            piece, self.n_fft, self.hop_length, window=self.window.float(), center=False, return_complex=True
        )
        power = torch.view_as_real(stft).square().sum(-1)
        return (self.mel_filters.float() @ power).clamp_min(_LOG_FLOOR).log10()

    def attention_mask(self, lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(batch, num_frames) int32 mask of the frames that hold audio, for rows of `lengths` samples padded to a
        common length: the extractor's `return_attention_mask`, which counts a frame when its first sample is audio."""
        frames = torch.div(lengths + self.hop_length - 1, self.hop_length, rounding_mode="floor").clamp(max=num_frames)
        return (torch.arange(num_frames, device=lengths.device) < frames[:, None]).int()

    def _pad_or_trim(self, waveform: torch.Tensor) -> torch.Tensor:
        # Padding happens before the STFT (not on the spectrogram) because the extractor's reflect padding at the
        # end of the window then sees zeros, and the per-example peak includes the padded frames.
        length = waveform.shape[-1]
        if length >= self.n_samples:
            return waveform[:, : self.n_samples]
        return torch.nn.functional.pad(waveform, (0, self.n_samples - length))


def _to_float32(audio: torch.Tensor) -> torch.Tensor:
    if audio.dtype == torch.int16:
        return audio.float() / INT16_SCALE
    if audio.is_floating_point():
        return audio.float()
    raise TypeError(f"audio dtype must be int16 or floating point, got {audio.dtype}; convert PCM to int16 first.")
