"""Transcribe Korean audio files of any length with a fine-tuned Whisper, as text, JSON, SRT or VTT.

    python transcribe.py --model runs/ko-large-v3 clip1.wav memo.m4a KsponSpeech_000001.pcm   # path<TAB>text
    python transcribe.py --model me/whisper-large-v3-ko --format srt --output_dir subs lecture.mp4
    python transcribe.py --model runs/ko-large-v3 --format json --num_beams 5 *.mp3 > transcripts.jsonl

Any audio or video file FFmpeg reads (mp3, m4a/aac, ogg/opus, webm, mp4/mkv/mov, wav, flac, ...; any sample rate and
channel count; of a video, its sound) is mixed down and resampled to 16 kHz mono, block by block (`.wav`/`.flac`
through libsndfile, the rest through PyAV); `.pcm` is read as KsponSpeech's headerless 16 kHz signed 16-bit
little-endian mono. Files are decoded together while they hold at most --batch_size x 30 s of audio. Clips of 30 s
or less are decoded exactly as the trainer evaluates them; longer audio goes through Whisper's long-form decoding
(timestamps, temperature fallback), which returns timed segments (`kspon_whisper.inference`).

Output: `text` prints `path<TAB>text` per file and `json` one {"path", "text", "segments": [{"start", "end",
"text"}]} object per line, both on stdout; `srt` and `vtt` write a subtitle file per input, next to it
(`talk.wav` -> `talk.srt`). With `--output_dir D` every format writes one file per input instead: D/talk.txt,
.json, .srt or .vtt. A file that cannot be read (missing, empty, not decodable, a video without sound) is reported
on stderr with the reason, and the others go on; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed
from transformers.utils import logging as transformers_logging

from kspon_whisper.audio import read_audio
from kspon_whisper.inference import (
    MAX_NEW_TOKENS,
    GenerationSettings,
    ModelNotFoundError,
    Segment,
    Transcriber,
    Transcript,
    load_model,
)


def timestamp(seconds: float, decimal: str) -> str:
    """`HH:MM:SS,mmm` (SRT, decimal ",") or `HH:MM:SS.mmm` (WebVTT, decimal ".")."""
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    return f"{hours:02d}:{minutes:02d}:{milliseconds // 1000:02d}{decimal}{milliseconds % 1000:03d}"


def to_srt(segments: list[Segment]) -> str:
    cues = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text}\n" for i, s in enumerate(segments, 1)
    ]
    return "\n".join(cues)


def to_vtt(segments: list[Segment]) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n" for s in segments]
    return "\n".join(["WEBVTT\n", *cues])


def to_json(path: Path, transcript: Transcript) -> str:
    segments = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in transcript.segments]
    return json.dumps({"path": str(path), "text": transcript.text, "segments": segments}, ensure_ascii=False)


@dataclass(frozen=True)
class OutputFormat:
    suffix: str  # of the file written per input
    render: Callable[[Path, Transcript], str]  # that file's content
    # the line printed per input when no --output_dir is given; None: the format writes a file beside the input
    stdout_line: Callable[[Path, Transcript], str] | None


FORMATS = {  # --format's choices
    "text": OutputFormat(".txt", lambda path, t: t.text + "\n", lambda path, t: f"{path}\t{t.text}"),
    "json": OutputFormat(".json", lambda path, t: to_json(path, t) + "\n", to_json),
    "srt": OutputFormat(".srt", lambda path, t: to_srt(t.segments), None),
    "vtt": OutputFormat(".vtt", lambda path, t: to_vtt(t.segments), None),
}


def transcribe(
    paths: list[Path], transcriber: Transcriber, batch_size: int
) -> Iterator[tuple[Path, Transcript | str]]:
    """(path, transcript), or (path, why it cannot be read), per file in order. Files are decoded together while they
    hold at most `batch_size` x 30 s of audio: many clips at once, a long file alone, so that memory stays bounded."""
    budget = batch_size * transcriber.processor.feature_extractor.n_samples
    batch: list[tuple[Path, np.ndarray | str]] = []
    for path in paths:
        try:
            audio = read_audio(path)
        except (OSError, ValueError) as err:
            batch.append((path, str(err)))
            continue
        if sum(len(a) for _, a in batch if not isinstance(a, str)) + len(audio) > budget:
            yield from _decode(batch, transcriber)
            batch = []
        batch.append((path, audio))
    yield from _decode(batch, transcriber)


def _decode(batch: list[tuple[Path, np.ndarray | str]], transcriber: Transcriber) -> Iterator:
    audios = [audio for _, audio in batch if not isinstance(audio, str)]
    transcripts = iter(transcriber(audios) if audios else [])
    for path, audio in batch:
        yield path, audio if isinstance(audio, str) else next(transcripts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="audio or video files, or KsponSpeech .pcm")
    parser.add_argument("--model", required=True, help="output_dir of train_accelerate.py, or a Hub model id")
    parser.add_argument("--format", default="text", choices=FORMATS, help="what to write per file (see above)")
    parser.add_argument("--output_dir", type=Path, help="write one file per input here instead (see above)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--no_repeat_ngram_size", type=int, default=0, help="forbid repeating n-grams (0: off)")
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS, help="per clip or 30 s window")
    parser.add_argument(
        "--condition_on_previous_text",
        action="store_true",
        help="long form: prompt each 30 s window with the text before it (more consistent, but a loop can carry on)",
    )
    parser.add_argument(
        "--logprob_threshold",
        type=threshold,
        default=GenerationSettings.logprob_threshold,
        help="long form: redo a window at a higher temperature when its mean token log-probability is below this "
        "('off': never)",
    )
    parser.add_argument(
        "--no_speech_threshold",
        type=threshold,
        default=GenerationSettings.no_speech_threshold,
        help="long form: skip a window as silence when <|nospeech|> is more likely than this and the window's text "
        "is below --logprob_threshold ('off': never)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=8, help="decode files together up to this many x 30 s of audio"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="for the sampled retries of long-form decoding")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    try:
        args.settings = GenerationSettings(
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
            condition_on_prev_tokens=args.condition_on_previous_text,
            logprob_threshold=args.logprob_threshold,
            no_speech_threshold=args.no_speech_threshold,
        )
    except ValueError as err:
        parser.error(str(err))
    outputs = [output_path(path, args) for path in args.files]
    if writes_files(args) and len(set(outputs)) < len(outputs):
        parser.error("two inputs would write the same output file; give them different names or run them apart")
    return args


def threshold(value: str) -> float | None:
    return None if value.lower() == "off" else float(value)


def writes_files(args: argparse.Namespace) -> bool:
    return args.output_dir is not None or FORMATS[args.format].stdout_line is None


def output_path(path: Path, args: argparse.Namespace) -> Path:
    beside = path.with_suffix(FORMATS[args.format].suffix)
    return beside if args.output_dir is None else args.output_dir / beside.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, processor = load_model(args.model, args.device)
    except ModelNotFoundError as err:
        sys.exit(f"transcribe.py: {err}")
    set_seed(args.seed)
    transcriber = Transcriber(model, processor, args.settings)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    output_format = FORMATS[args.format]
    unreadable = 0
    for path, result in transcribe(args.files, transcriber, args.batch_size):
        if isinstance(result, str):
            unreadable += 1
            print(f"transcribe.py: cannot read {path}: {result}", file=sys.stderr, flush=True)
        elif writes_files(args):
            output_path(path, args).write_text(output_format.render(path, result), encoding="utf-8")
            print(f"{path} -> {output_path(path, args)}", file=sys.stderr, flush=True)
        else:
            print(output_format.stdout_line(path, result), flush=True)
    if unreadable:
        print(f"transcribe.py: {unreadable} of {len(args.files)} files could not be read", file=sys.stderr)
    return 1 if unreadable else 0


if __name__ == "__main__":
    # stderr carries this script's reports; transformers would warn once per 30 s window about settings it chose.
    transformers_logging.set_verbosity_error()
    sys.exit(main())
