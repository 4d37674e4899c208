"""WhisperCollator: label padding, per-row start-token stripping (transformers#29973), both audio modes."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from kspon_whisper.collator import LABEL_PAD_ID, WhisperCollator

# Multilingual Whisper tokenizer ids, tiny ... large-v2 (large-v3 adds <|yue|>, which moves <|transcribe|> and
# <|notimestamps|> up by one; the collator only relies on decoder_start_token_id, so that does not matter here).
SOT, KO, TRANSCRIBE, NO_TIMESTAMPS, EOT = 50258, 50264, 50359, 50363, 50257
PREFIX = [SOT, KO, TRANSCRIBE, NO_TIMESTAMPS]
TEXT_A = [9820, 1129, 11561]  # arbitrary BPE ids standing in for Korean text
TEXT_B = [24214, 3007]
SAMPLING_RATE = 16_000
THIRTY_SECONDS = 30 * SAMPLING_RATE


@pytest.fixture(scope="module")
def extractor_80() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=80)


def _audio(seconds: float, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(int(seconds * SAMPLING_RATE)) * 0.1
    return (noise * 32767).astype(np.int16) if dtype == np.int16 else noise.astype(dtype)


def _collator(extractor: WhisperFeatureExtractor, **kwargs) -> WhisperCollator:
    return WhisperCollator(feature_extractor=extractor, decoder_start_token_id=SOT, **kwargs)


def test_labels_are_padded_with_minus_100_not_pad_id(extractor_80):
    examples = [
        {"audio": _audio(0.5), "labels": PREFIX + TEXT_A + [EOT]},
        {"audio": _audio(0.5, seed=1), "labels": PREFIX + TEXT_B + [EOT]},
    ]
    labels = _collator(extractor_80)(examples)["labels"]
    assert labels.dtype == torch.long
    assert labels.tolist() == [
        [KO, TRANSCRIBE, NO_TIMESTAMPS, *TEXT_A, EOT],
        [KO, TRANSCRIBE, NO_TIMESTAMPS, *TEXT_B, EOT, LABEL_PAD_ID],
    ]
    assert LABEL_PAD_ID == -100


def test_start_token_is_stripped_per_row_in_a_mixed_batch(extractor_80):
    # The transformers#29973 case: a batch-wide `.all()` check would keep SOT in row 0 because row 1 lacks it.
    examples = [
        {"audio": _audio(0.5), "labels": PREFIX + TEXT_A + [EOT]},
        {"audio": _audio(0.5, seed=1), "labels": [KO, TRANSCRIBE, NO_TIMESTAMPS, *TEXT_B, EOT]},
    ]
    labels = _collator(extractor_80)(examples)["labels"]
    assert labels[0].tolist() == [KO, TRANSCRIBE, NO_TIMESTAMPS, *TEXT_A, EOT]
    assert labels[1].tolist() == [KO, TRANSCRIBE, NO_TIMESTAMPS, *TEXT_B, EOT, LABEL_PAD_ID]
    assert (labels != SOT).all()


def test_ids_are_kept_as_a_list(extractor_80):
    examples = [
        {"audio": _audio(0.5), "labels": PREFIX + [EOT], "id": "KsponSpeech_E00001"},
        {"audio": _audio(0.5), "labels": PREFIX + [EOT], "id": "KsponSpeech_E00002"},
    ]
    assert _collator(extractor_80)(examples)["id"] == ["KsponSpeech_E00001", "KsponSpeech_E00002"]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_mode_shape_follows_the_extractor(n_mels):
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    examples = [{"audio": _audio(1.0), "labels": PREFIX + [EOT]}, {"audio": _audio(2.0), "labels": PREFIX + [EOT]}]
    batch = _collator(extractor)(examples)
    assert set(batch) == {"input_features", "labels"}
    assert batch["input_features"].shape == (2, n_mels, 3000)
    assert batch["input_features"].dtype == torch.float32


def test_features_mode_scales_int16_like_float(extractor_80):
    pcm = _audio(1.0, dtype=np.int16)
    collate = _collator(extractor_80)
    from_int16 = collate([{"audio": pcm, "labels": PREFIX + [EOT]}])["input_features"]
    from_float = collate([{"audio": pcm.astype(np.float32) / 32768, "labels": PREFIX + [EOT]}])["input_features"]
    torch.testing.assert_close(from_int16, from_float)


def test_waveform_mode_pads_and_truncates_to_30_seconds_in_int16(extractor_80):
    short, long = _audio(0.5, dtype=np.int16), _audio(31.0, seed=1, dtype=np.int16)
    examples = [{"audio": short, "labels": PREFIX + [EOT]}, {"audio": long, "labels": PREFIX + [EOT]}]
    batch = _collator(extractor_80, audio_mode="waveform")(examples)
    assert set(batch) == {"input_audio", "audio_lengths", "labels"}
    audio, lengths = batch["input_audio"], batch["audio_lengths"]
    assert audio.shape == (2, THIRTY_SECONDS) and audio.dtype == torch.int16
    assert lengths.tolist() == [len(short), THIRTY_SECONDS] and lengths.dtype == torch.int64
    assert torch.equal(audio[0, : len(short)], torch.from_numpy(short))
    assert not audio[0, len(short) :].any()
    assert torch.equal(audio[1], torch.from_numpy(long[:THIRTY_SECONDS]))


def test_waveform_mode_mixed_dtypes_become_float32(extractor_80):
    pcm = _audio(0.5, dtype=np.int16)
    examples = [{"audio": pcm, "labels": PREFIX + [EOT]}, {"audio": _audio(0.25), "labels": PREFIX + [EOT]}]
    audio = _collator(extractor_80, audio_mode="waveform")(examples)["input_audio"]
    assert audio.dtype == torch.float32
    torch.testing.assert_close(audio[0, : len(pcm)], torch.from_numpy(pcm.astype(np.float32) / 32768))


def test_label_bucket_pads_to_a_multiple_and_never_past_448(extractor_80):
    examples = [{"audio": _audio(0.5), "labels": PREFIX + TEXT_A + [EOT]}]  # 7 tokens after stripping SOT
    assert _collator(extractor_80, label_bucket=16)(examples)["labels"].shape == (1, 16)
    long_row = [{"audio": _audio(0.5), "labels": PREFIX + [TEXT_A[0]] * 443 + [EOT]}]  # 448 raw, 447 stripped
    # 447 rounds up to 450 with bucket 10, but the decoder only has 448 positions.
    assert _collator(extractor_80, label_bucket=10)(long_row)["labels"].shape == (1, 448)


def test_missing_keys_error_names_the_keys_present(extractor_80):
    with pytest.raises(KeyError, match=r"missing \['labels'\].*present \['audio', 'text'\]"):
        _collator(extractor_80)([{"audio": _audio(0.5), "text": "안녕하세요"}])


def test_too_long_labels_error_says_to_drop_them(extractor_80):
    example = {"audio": _audio(0.5), "labels": [TEXT_A[0]] * 449, "id": "KsponSpeech_000042"}
    with pytest.raises(ValueError, match=r"KsponSpeech_000042.*449 label tokens.*Drop such rows before batching"):
        _collator(extractor_80)([example])


def test_bad_construction_arguments_are_rejected(extractor_80):
    with pytest.raises(ValueError, match="audio_mode must be one of"):
        _collator(extractor_80, audio_mode="mel")
    with pytest.raises(ValueError, match="label_bucket must be a positive int"):
        _collator(extractor_80, label_bucket=0)
