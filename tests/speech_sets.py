"""Small local speech sets in the forms users hand to --dataset_name / --eval_datasets, built from the sample
corpus's clips: an `audiofolder` (WAV files and metadata.csv) and a folder holding one Parquet file, at 16 kHz or
resampled to another rate."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import datasets
import numpy as np
import soundfile

from kspon_dataset.corpus import SAMPLE_RATE
from tools.sample_audio import sample_clips


def clips(split: str, count: int) -> list[tuple[str, str, np.ndarray]]:
    """(id, transcript, int16 16 kHz samples) of the first `count` readable clips of a sample split."""
    return [(uid, text, samples) for uid, (text, samples) in list(sample_clips((split,)).items())[:count]]


def _at_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz as is, or 8 kHz: pairs of samples averaged (a crude low-pass; espeak-ng has little above 4 kHz)."""
    if rate == SAMPLE_RATE:
        return samples
    if rate != SAMPLE_RATE // 2:
        raise ValueError(f"only {SAMPLE_RATE} or {SAMPLE_RATE // 2} Hz, not {rate}")
    pairs = samples[: len(samples) // 2 * 2].astype(np.int32).reshape(-1, 2)
    return (pairs.sum(axis=1) // 2).astype(np.int16)


def write_audiofolder(folder: Path, items, *, text_column: str = "transcription", rate: int = SAMPLE_RATE) -> Path:
    """WAV files beside a metadata.csv of `file_name,<text_column>`: datasets reads it as one `train` split."""
    folder.mkdir(parents=True)
    with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", text_column])
        for uid, text, samples in items:
            soundfile.write(folder / f"{uid}.wav", _at_rate(samples, rate), rate)
            writer.writerow([f"{uid}.wav", text])
    return folder


def write_parquet(folder: Path, items, *, text_column: str = "sentence", rate: int = SAMPLE_RATE) -> Path:
    """One Parquet file with an Audio column holding FLAC bytes, as `push_to_hub` writes one; a `train` split."""
    folder.mkdir(parents=True)
    audio = []
    for uid, _, samples in items:
        buffer = io.BytesIO()
        soundfile.write(buffer, _at_rate(samples, rate), rate, format="FLAC")
        audio.append({"bytes": buffer.getvalue(), "path": f"{uid}.flac"})
    table = {"audio": audio, text_column: [text for _, text, _ in items], "speaker": ["a"] * len(items)}
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())
    dataset.to_parquet(str(folder / "train.parquet"))
    return folder
