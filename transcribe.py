"""Transcribe Korean audio files with a fine-tuned Whisper: one line per file, `path<TAB>text`.

    python transcribe.py --model runs/ko-large-v3 clip1.wav clip2.flac KsponSpeech_000001.pcm
    python transcribe.py --model me/whisper-large-v3-ko --num_beams 5 --no_repeat_ngram_size 3 *.wav

`.wav`/`.flac` (any sample rate, any channel count) are resampled to 16 kHz mono; `.pcm` is read as KsponSpeech's
headerless 16 kHz signed 16-bit little-endian mono. Audio longer than 30 s is cut into 30 s windows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

SAMPLE_RATE = 16_000
WINDOW = 30 * SAMPLE_RATE
AUDIO_SUFFIXES = (".wav", ".flac", ".pcm")


def read_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 in [-1, 1]."""
    suffix = path.suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {AUDIO_SUFFIXES}.")
    if suffix == ".pcm":
        data = path.read_bytes()
        return np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2").astype(np.float32) / 32768.0
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE) if rate != SAMPLE_RATE else audio


def windows(paths: list[Path]) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(file index, ≤30 s window, is the file's last window) for every window of every file, in order."""
    for index, path in enumerate(paths):
        audio = read_audio(path)
        starts = range(0, max(len(audio), 1), WINDOW)
        for start in starts:
            yield index, audio[start : start + WINDOW], start == starts[-1]


def batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def transcribe(
    paths: list[Path], model, processor, *, batch_size: int, **generate_kwargs
) -> Iterator[tuple[Path, str]]:
    """Yield (path, transcript) per file, in order, as soon as its last window is decoded."""
    pieces: list[str] = []
    for batch in batched(windows(paths), batch_size):
        features = processor.feature_extractor(
            [audio for _, audio, _ in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(model.device, model.dtype)
        tokens = model.generate(features, language="ko", task="transcribe", **generate_kwargs)
        for (index, _, last), text in zip(
            batch, processor.batch_decode(tokens, skip_special_tokens=True), strict=True
        ):
            pieces.append(text.strip())
            if last:
                yield paths[index], " ".join(pieces)
                pieces = []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help=".wav, .flac or KsponSpeech .pcm files")
    parser.add_argument("--model", required=True, help="output_dir of train_accelerate.py, or a Hub model id")
    parser.add_argument("--num_beams", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--no_repeat_ngram_size", type=int, default=0, help="forbid repeating n-grams (0: off)")
    parser.add_argument("--batch_size", type=int, default=8, help="30 s windows decoded together")
    parser.add_argument("--max_new_tokens", type=int, default=225, help="cap on tokens per window")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        sys.exit(f"No such file(s): {', '.join(missing)}")
    processor = WhisperProcessor.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    generate_kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    if args.no_repeat_ngram_size:
        generate_kwargs["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    for path, text in transcribe(args.files, model, processor, batch_size=args.batch_size, **generate_kwargs):
        print(f"{path}\t{text}", flush=True)


if __name__ == "__main__":
    main()
