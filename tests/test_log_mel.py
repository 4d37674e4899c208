"""LogMelSpectrogram must reproduce WhisperFeatureExtractor's input_features, alone and behind the collator."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from kspon_whisper.collator import WhisperCollator
from kspon_whisper.log_mel import LogMelSpectrogram

SAMPLING_RATE = 16_000
# 0.5 s, 5 s, 29.9 s, exactly 30 s, and 31 s (truncated).
CLIP_SAMPLES = [8_000, 80_000, 478_400, 480_000, 496_000]
# Measured max abs difference vs the extractor on CPU, float32: 1.2e-7 for both 80 and 128 mels (the extractor's
# torch path runs the same STFT). The tolerance leaves room for other FFT backends.
TOLERANCE = 1e-5


def _speech_like(num_samples: int, seed: int) -> np.ndarray:
    """A 4 Hz amplitude-modulated harmonic series in noise, at a different level per clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLING_RATE
    f0 = rng.uniform(100, 250)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    audio = voiced * envelope + 0.05 * rng.standard_normal(num_samples)
    return (audio / np.abs(audio).max() * rng.uniform(0.01, 0.9)).astype(np.float32)


def _pad_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    batch = np.zeros((len(arrays), max(len(a) for a in arrays)), dtype=arrays[0].dtype)
    for i, audio in enumerate(arrays):
        batch[i, : len(audio)] = audio
    return torch.from_numpy(batch)


@pytest.fixture(scope="module", params=[80, 128], ids=["80mels", "128mels"])
def extractor(request) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=request.param)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [_speech_like(n, seed) for seed, n in enumerate(CLIP_SAMPLES)]


def _reference(extractor: WhisperFeatureExtractor, arrays: list[np.ndarray]) -> torch.Tensor:
    features = extractor(arrays, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"]
    return torch.from_numpy(features)


def test_matches_the_extractor_for_every_clip_length(extractor, clips):
    # The batch is padded to 31 s, so the module's own pad-or-trim to 30 s is exercised for every row.
    features = LogMelSpectrogram(extractor)(_pad_batch(clips))
    assert features.shape == (len(clips), extractor.feature_size, 3000)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, _reference(extractor, clips), atol=TOLERANCE, rtol=0)


def test_int16_input_is_scaled_to_full_scale(extractor, clips):
    pcm = [np.round(clip * 32767).astype(np.int16) for clip in clips[:3]]
    features = LogMelSpectrogram(extractor)(_pad_batch(pcm))
    expected = _reference(extractor, [p.astype(np.float32) / 32768 for p in pcm])
    torch.testing.assert_close(features, expected, atol=TOLERANCE, rtol=0)


def test_stays_float32_under_bf16_autocast(extractor, clips):
    log_mel = LogMelSpectrogram(extractor)
    audio = _pad_batch(clips[:2])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        features = log_mel(audio)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, log_mel(audio), atol=0, rtol=0)


def test_buffers_stay_out_of_checkpoints(extractor):
    assert LogMelSpectrogram(extractor).state_dict() == {}


def test_waveform_collator_plus_module_equals_features_collator(extractor, clips):
    pcm = [np.round(clip * 32767).astype(np.int16) for clip in clips]
    examples = [{"audio": audio, "labels": [50258, 50264, 50359, 50363, 50257]} for audio in pcm]

    def collate(mode: str) -> dict[str, torch.Tensor]:
        return WhisperCollator(feature_extractor=extractor, decoder_start_token_id=50258, audio_mode=mode)(examples)

    on_host = collate("features")["input_features"]
    on_device = LogMelSpectrogram(extractor)(collate("waveform")["input_audio"])
    torch.testing.assert_close(on_device, on_host, atol=TOLERANCE, rtol=0)


def test_rejects_unsupported_inputs(extractor):
    log_mel = LogMelSpectrogram(extractor)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        log_mel(torch.zeros(16_000))
    with pytest.raises(TypeError, match="int16 or floating point"):
        log_mel(torch.zeros(1, 16_000, dtype=torch.int32))


def test_rejects_a_dithering_extractor():
    with pytest.raises(ValueError, match="dither"):
        LogMelSpectrogram(WhisperFeatureExtractor(feature_size=80, dither=1e-5))


# 65.3 s and 41 s (a length that is no multiple of the hop), batched: the whole files, as long-form decoding sees them.
LONG_SAMPLES = [1_044_800, 656_013]


def test_whole_long_audio_matches_the_extractor_without_truncation(extractor, monkeypatch):
    # Louder towards the end, so only a peak taken over the whole file (as the extractor takes it) matches.
    clips = [_speech_like(n, seed) * np.linspace(0.1, 1, n, dtype=np.float32) for seed, n in enumerate(LONG_SAMPLES)]
    expected = extractor(
        clips, sampling_rate=SAMPLING_RATE, truncation=False, padding="longest", return_attention_mask=True
    )
    log_mel = LogMelSpectrogram(extractor)
    stft, frames_per_stft = torch.stft, []

    def recorded_stft(*args, **kwargs):
        spectrum = stft(*args, **kwargs)
        frames_per_stft.append(spectrum.shape[-1])
        return spectrum

    monkeypatch.setattr(torch, "stft", recorded_stft)
    features = log_mel(_pad_batch(clips), pad_or_trim=False)
    assert features.shape == (2, extractor.feature_size, max(LONG_SAMPLES) // extractor.hop_length)
    # 30 s at a time: a 30-minute file is never one 180,000-frame spectrogram (0.29 GB complex, as much squared)
    assert frames_per_stft == [3000, 3000, 530]  # 6,530 frames of the 65.3 s clip
    torch.testing.assert_close(features, torch.from_numpy(expected["input_features"]), atol=TOLERANCE, rtol=0)
    mask = log_mel.attention_mask(torch.tensor(LONG_SAMPLES), features.shape[-1])
    assert torch.equal(mask, torch.from_numpy(expected["attention_mask"]).int())
