"""Batch collator for Whisper sequence-to-sequence fine-tuning on decoded 16 kHz audio."""

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from .audio import pad_waveforms, to_dtype
from .log_mel import LogMelSpectrogram

LABEL_PAD_ID = -100  # ignored by torch's cross-entropy; the pad id would be trained on as a real token
AUDIO_MODES = ("features", "waveform")


@dataclass
class WhisperCollator:
    """Turn `{"audio", "labels"[, "id"]}` examples into a Whisper training batch.

    `labels` come from a Whisper tokenizer with prefix tokens, so they start with `<|startoftranscript|>`. The model
    prepends `decoder_start_token_id` itself when it shifts labels right, so that token is stripped here, row by row.

    audio_mode="features" returns `input_features` (B, n_mels, 3000) float32 computed on the host.
    audio_mode="waveform" returns `input_audio` (B, 480000) and `audio_lengths` (B,) for `LogMelSpectrogram` on the
    accelerator; `input_audio` is int16 when every example is int16 PCM, float32 otherwise.

    An example with `"feature_padded": True` is to be padded as faster-whisper pads it (`LogMelSpectrogram.
    feature_padded`): its features are computed that way here, or, for waveforms, `feature_padded` (B,) bool says so.
    """

    feature_extractor: WhisperFeatureExtractor
    decoder_start_token_id: int  # model.config.decoder_start_token_id, <|startoftranscript|> = 50258 multilingual
    audio_mode: Literal["features", "waveform"] = "features"
    label_bucket: int | None = None  # pad label length up to a multiple of this, so torch.compile sees few shapes
    max_label_length: int = 448  # the decoder's positions (config.max_target_positions): longest label row accepted

    def __post_init__(self) -> None:
        if self.audio_mode not in AUDIO_MODES:
            raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {self.audio_mode!r}.")
        if self.label_bucket is not None and self.label_bucket < 1:
            raise ValueError(f"label_bucket must be a positive int or None, got {self.label_bucket}.")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("WhisperCollator got an empty list of examples; the DataLoader should never do this.")
        for example in examples:
            self._check_example(example)
        feature_padded = [bool(example.get("feature_padded", False)) for example in examples]
        batch = self._collate_audio([np.asarray(example["audio"]) for example in examples], feature_padded)
        batch["labels"] = self._collate_labels([list(example["labels"]) for example in examples])
        if all("id" in example for example in examples):
            batch["id"] = [example["id"] for example in examples]
        return batch

    def _check_example(self, example: dict[str, Any]) -> None:
        missing = [key for key in ("audio", "labels") if key not in example]
        if missing:
            raise KeyError(
                f"WhisperCollator needs 'audio' and 'labels' in every example; missing {missing}, "
                f"present {sorted(example)}. Map the dataset to decoded audio and tokenized labels first."
            )
        num_labels = len(example["labels"])
        if num_labels > self.max_label_length:
            raise ValueError(
                f"Example {example.get('id', '<no id>')!r} has {num_labels} label tokens, more than Whisper's "
                f"{self.max_label_length} decoder positions. Drop such rows before batching, e.g. "
                f"dataset.filter(lambda ex: len(ex['labels']) <= {self.max_label_length})."
            )
        if np.ndim(example["audio"]) != 1:
            raise ValueError(
                f"Example {example.get('id', '<no id>')!r} has audio of shape {np.shape(example['audio'])}; "
                "Whisper needs mono 1-D audio at 16 kHz. Downmix before batching."
            )

    def _collate_audio(self, arrays: list[np.ndarray], feature_padded: list[bool]) -> dict[str, torch.Tensor]:
        if self.audio_mode == "waveform":
            audio, lengths = pad_waveforms(arrays, self.feature_extractor.n_samples)
            batch = {"input_audio": audio, "audio_lengths": lengths}
            if any(feature_padded):
                batch["feature_padded"] = torch.tensor(feature_padded)
            return batch
        features = self.feature_extractor(
            [to_dtype(audio, "float32") for audio in arrays],
            sampling_rate=self.feature_extractor.sampling_rate,
            return_tensors="np",
        )["input_features"]
        features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if any(feature_padded):
            log_mel = LogMelSpectrogram(self.feature_extractor)
            for i in np.flatnonzero(feature_padded):
                features[i] = log_mel.feature_padded(torch.from_numpy(arrays[i]))
        return {"input_features": features}

    def _collate_labels(self, rows: list[list[int]]) -> torch.Tensor:
        # Per row, not `(labels[:, 0] == start).all()` per batch: that check (transformers#29973) let a single row
        # without the start token make every row keep it, so the model saw it twice and learned to emit it.
        rows = [row[1:] if row and row[0] == self.decoder_start_token_id else row for row in rows]
        length = self._padded_label_length(max(len(row) for row in rows))
        labels = torch.full((len(rows), length), LABEL_PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return labels

    def _padded_label_length(self, longest: int) -> int:
        if self.label_bucket is None:
            return longest
        bucketed = -(-longest // self.label_bucket) * self.label_bucket
        # Never pad past the decoder's positions: shifted-right labels of that length would index past them.
        return max(longest, min(bucketed, self.max_label_length))
