"""Long-form transcription on a minute of known speech: Whisper's sequential decoding against blind 30 s windows.

    OMP_NUM_THREADS=1 python benchmarks/long_form.py --write_results   # ~6 min on a busy 2-core CPU
    python benchmarks/long_form.py --save_audio talk.wav                # only write the 63.7 s file, as 16 kHz WAV

The audio is 24 clips of the sample corpus (`kspon_dataset/sample`, espeak-ng voice) in a row, with pauses between
them and one clip straddling the 30 s mark (`build_long_audio`; tests/test_long_form.py decodes the same file). The
untouched Whisper base (`models/whisper-base`, greedy) transcribes it:
- each clip alone, as evaluation decodes it: the best the model can do, and the reference for the straddling clip;
- in long form (`kspon_whisper.inference.Transcriber`: transformers' sequential decoding with timestamps), with the
  default fallback settings and with the rules this voice trips switched off;
- in blind 30 s windows, decoded as clips and joined: what transcribe.py did before long form; and the same windows
  decoded with timestamps, to separate the cut from the missing timestamps.
It reports CER against the concatenated references, how well the straddling clip's own hypothesis is found in each
transcript (`substring_cer`), how many clips a long-form segment overlaps, and the time each took.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kspon_dataset import KsponSpeech  # noqa: E402
from kspon_dataset.corpus import SAMPLE_RATE, pcm_samples, read_utterance  # noqa: E402
from kspon_whisper.metrics import normalize_for_scoring, score  # noqa: E402

SAMPLE = REPO / "kspon_dataset" / "sample"
RESULTS_FILE = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Long-form transcription"
# The 24 training clips Whisper base transcribes best alone (per-clip CER 0 to 0.67; 0.69 on the whole split).
CLIPS = (
    "KsponSpeech_620004", "KsponSpeech_123006", "KsponSpeech_185005", "KsponSpeech_123005", "KsponSpeech_309002",
    "KsponSpeech_123007", "KsponSpeech_371004", "KsponSpeech_123004", "KsponSpeech_372005", "KsponSpeech_620002",
    "KsponSpeech_000007", "KsponSpeech_372003", "KsponSpeech_000005", "KsponSpeech_496007", "KsponSpeech_371005",
    "KsponSpeech_496003", "KsponSpeech_061004", "KsponSpeech_248003", "KsponSpeech_433006", "KsponSpeech_247006",
    "KsponSpeech_433005", "KsponSpeech_124007", "KsponSpeech_309001", "KsponSpeech_371007",
)  # fmt: skip
STRADDLER = "KsponSpeech_372003"  # 음 그건 좀 생각해 볼게, 1.94 s: centred on the 30 s mark
STRADDLE_AT_S = 30.0
PAUSE_S = 1.25  # silence between clips
LEAD_S = 0.5  # silence before the first clip


@dataclass(frozen=True)
class Clip:
    id: str
    text: str
    start: float  # seconds into the long file
    end: float


@dataclass(frozen=True)
class LongAudio:
    samples: np.ndarray  # int16, 16 kHz mono
    clips: list[Clip]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def reference(self) -> str:
        return " ".join(clip.text for clip in self.clips)

    def straddler(self) -> Clip:
        return next(clip for clip in self.clips if clip.id == STRADDLER)


def read_clips(ids: tuple[str, ...] = CLIPS) -> dict[str, tuple[str, np.ndarray]]:
    """id -> (transcript, int16 samples) from the sample corpus' training split."""
    train = KsponSpeech(config_name="spelling", data_dir=str(SAMPLE)).selections()["train"]
    found = {}
    for i in range(len(train)):
        if train.utterance(i)[2] in ids:
            example, reason = read_utterance(train, i, "spelling")
            if example is None:
                raise ValueError(f"{train.utterance(i)[2]} could not be read from {SAMPLE}: {reason}")
            found[example["id"]] = (example["text"], pcm_samples(example["pcm"]))
    if missing := sorted(set(ids) - set(found)):
        raise ValueError(f"clips missing from the sample corpus' train split: {missing}")
    return found


def build_long_audio(clips: dict[str, tuple[str, np.ndarray]]) -> LongAudio:
    """CLIPS in order, PAUSE_S apart, the straddler moved later so that its middle sits at STRADDLE_AT_S."""
    pieces, placed, cursor = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.int16)], [], int(LEAD_S * SAMPLE_RATE)
    for uid in CLIPS:
        text, samples = clips[uid]
        if uid == STRADDLER:
            start = int(STRADDLE_AT_S * SAMPLE_RATE) - len(samples) // 2
            if start < cursor:
                raise ValueError(f"{uid} cannot be centred on {STRADDLE_AT_S} s: the clips before it end later")
            pieces.append(np.zeros(start - cursor, np.int16))
            cursor = start
        placed.append(Clip(uid, text, cursor / SAMPLE_RATE, (cursor + len(samples)) / SAMPLE_RATE))
        pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.int16)
        pieces += [samples, pause]
        cursor += len(samples) + len(pause)
    return LongAudio(np.concatenate(pieces), placed)


def substring_cer(needle: str, haystack: str) -> float:
    """Edits to turn `needle` into the closest substring of `haystack`, per character of `needle` (normalised as
    scoring normalises, spaces dropped): 0 when the clip's words appear whole in the transcript."""
    a, b = (normalize_for_scoring(text).replace(" ", "") for text in (needle, haystack))
    previous = [0] * (len(b) + 1)  # a substring may start anywhere in b: no cost before it
    for i, char in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, other in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
        previous = current
    return min(previous) / max(len(a), 1)  # ... and end anywhere


# What the test decodes with: the untouched base is unsure of this voice (mean log-probability below -1), so the
# log-probability rule resamples its windows and the no-speech rule, which needs it, skips some as silence (both
# measured below).
TEST_SETTINGS = {"logprob_threshold": None, "no_speech_threshold": None}
LONG_FORM_VARIANTS = {
    "long form, default settings": {},
    "long form, no_speech_threshold off": {"no_speech_threshold": None},
    "long form, logprob_threshold and no_speech_threshold off (the test)": TEST_SETTINGS,
}


def windows(samples: np.ndarray, size: int) -> list[np.ndarray]:
    return [samples[start : start + size] for start in range(0, len(samples), size)]


def blind_windows(transcriber, samples: np.ndarray) -> str:
    """What transcribe.py did before long form: 30 s windows with no overlap, each decoded as a clip, joined."""
    return " ".join(result.text for result in transcriber(windows(samples, transcriber.log_mel.n_samples)))


def blind_windows_with_timestamps(transcriber, samples: np.ndarray) -> str:
    """The same cut, but each window decoded with timestamps (which keeps Whisper going to the window's end)."""
    texts = []
    for window in windows(samples, transcriber.log_mel.n_samples):
        features = transcriber.log_mel(torch.from_numpy(window[None].copy()).to(transcriber.device))
        kwargs = transcriber.settings.generate_kwargs(transcriber.model.config, long_form=False)
        with torch.no_grad():
            tokens = transcriber.model.generate(features, return_timestamps=True, **kwargs)
        texts.append(transcriber.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip())
    return " ".join(texts)


def timed(run) -> tuple[object, float]:
    torch.manual_seed(0)  # the fallback samples: every variant is reproducible
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def measure(model_dir: str, device: str) -> dict:
    from kspon_whisper.inference import GenerationSettings, Transcriber, load_model

    clips = read_clips()
    audio = build_long_audio(clips)
    model, processor = load_model(model_dir, device)
    transcriber = Transcriber(model, processor)
    alone, seconds = timed(lambda: transcriber([clips[uid][1] for uid in CLIPS]))
    alone = {uid: result.text for uid, result in zip(CLIPS, alone, strict=True)}
    straddler = alone[STRADDLER]
    rows, segments = [], {}

    def row(name: str, text: str, seconds: float) -> None:
        rows.append((name, score([audio.reference], [text])["cer"], substring_cer(straddler, text), seconds, text))

    row("each clip alone", " ".join(alone[clip.id] for clip in audio.clips), seconds)
    for name, overrides in LONG_FORM_VARIANTS.items():
        variant = Transcriber(model, processor, GenerationSettings(**overrides))
        [result], seconds = timed(lambda variant=variant: variant([audio.samples]))
        segments[name] = result.segments
        row(name, result.text, seconds)
    row("blind 30 s windows (before)", *timed(lambda: blind_windows(transcriber, audio.samples)))
    row(
        "blind 30 s windows, with timestamps",
        *timed(lambda: blind_windows_with_timestamps(transcriber, audio.samples)),
    )
    return {"audio": audio, "straddler": straddler, "rows": rows, "segments": segments}


def covered(audio: LongAudio, segments: list) -> int:
    return sum(any(s.start < clip.end and clip.start < s.end for s in segments) for clip in audio.clips)


def report(measured: dict, command: str, device: str) -> str:
    audio, clip = measured["audio"], measured["audio"].straddler()
    lines = [
        SECTION,
        "",
        f"- Command: `{command}`",
        (
            f"- Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), device {device}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); 1-minute load average "
            f"{os.getloadavg()[0]:.1f} at the end (shared machine)."
        ),
        (
            f"- Audio: {len(audio.clips)} sample-corpus clips, {audio.duration:.1f} s, {PAUSE_S} s pauses; "
            f"{clip.id} ({clip.text}) spans {clip.start:.2f}-{clip.end:.2f} s. Model: Whisper base, greedy."
        ),
        "",
        "| decoding | CER vs the references | straddling clip's own hypothesis in it (substring CER) | seconds |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {cer:.3f} | {found:.3f} | {seconds:.1f} |" for name, cer, found, seconds, _ in measured["rows"]
    ]
    lines += ["", f"- The straddling clip decoded alone: {measured['straddler']!r}."]
    for name, segments in measured["segments"].items():
        lines.append(
            f"- {name}: {len(segments)} segments, {covered(audio, segments)} of {len(audio.clips)} clips overlap one."
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next `## ` heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "whisper-base"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    parser.add_argument("--save_audio", type=Path, help="write the long file as a 16 kHz WAV here, and stop")
    args = parser.parse_args(argv)
    if args.save_audio:
        soundfile.write(args.save_audio, build_long_audio(read_clips()).samples, SAMPLE_RATE)
        return
    measured = measure(args.model, args.device)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}python benchmarks/long_form.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = report(measured, command.strip(), args.device)
    print(section)
    for name, *_, text in measured["rows"]:
        print(f"{name}: {text}")
    if args.write_results:
        write_section(RESULTS_FILE, section)


if __name__ == "__main__":
    main()
