"""The embedded sample corpus (kspon_dataset/sample) as audio: its clips by split or id, and a minute of them in one
file for long-form transcription, with one clip across the 30 s mark.

    python tools/sample_audio.py talk.wav   # the 63.7 s file as a 16 kHz WAV; then: python transcribe.py talk.wav

The tests and the benchmarks read the same clips and build the same file through this module.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python tools/sample_audio.py`, the repo packages need not be installed

from kspon_dataset import KsponSpeech  # noqa: E402
from kspon_dataset.corpus import SAMPLE_RATE, pcm_samples, read_utterance  # noqa: E402

SAMPLE = REPO / "kspon_dataset" / "sample"
# The 24 training clips Whisper base transcribes best alone (per-clip CER 0 to 0.67; 0.69 on the whole split).
LONG_CLIPS = (
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


def sample_clips(splits=("train",), ids: tuple[str, ...] | None = None, data_dir: Path = SAMPLE) -> dict[str, tuple]:
    """id -> (transcript, int16 samples) of the sample's readable clips in `splits` (or only `ids` among them), split
    by split in index order, read as the trainer reads them (random split scheme, spelling transcripts); `data_dir`
    reads another corpus the same way."""
    selections = KsponSpeech(config_name="spelling", data_dir=str(data_dir), split_scheme="random").selections()
    found = {}
    for split in splits:
        for i in range(len(selections[split])):
            if ids is None or selections[split].utterance(i)[2] in ids:
                example, _ = read_utterance(selections[split], i, "spelling")
                if example is not None:
                    found[example["id"]] = (example["text"], pcm_samples(example["pcm"]))
    if missing := sorted(set(ids or ()) - set(found)):
        raise ValueError(f"clips missing from (or unreadable in) the sample's {'/'.join(splits)}: {missing}")
    return found


@dataclass(frozen=True)
class Placed:
    id: str
    text: str
    start: float  # seconds into the long file
    end: float


@dataclass(frozen=True)
class LongAudio:
    samples: np.ndarray  # int16, 16 kHz mono
    clips: list[Placed]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def reference(self) -> str:
        return " ".join(clip.text for clip in self.clips)

    def straddler(self) -> Placed:
        return next(clip for clip in self.clips if clip.id == STRADDLER)


def build_long_audio(clips: dict[str, tuple] | None = None) -> LongAudio:
    """LONG_CLIPS in order, PAUSE_S apart, the straddler moved later so that its middle sits at STRADDLE_AT_S."""
    clips = clips or sample_clips(ids=LONG_CLIPS)
    pieces, placed, cursor = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.int16)], [], int(LEAD_S * SAMPLE_RATE)
    for uid in LONG_CLIPS:
        text, samples = clips[uid]
        if uid == STRADDLER:
            start = int(STRADDLE_AT_S * SAMPLE_RATE) - len(samples) // 2
            if start < cursor:
                raise ValueError(f"{uid} cannot be centred on {STRADDLE_AT_S} s: the clips before it end later")
            pieces.append(np.zeros(start - cursor, np.int16))
            cursor = start
        placed.append(Placed(uid, text, cursor / SAMPLE_RATE, (cursor + len(samples)) / SAMPLE_RATE))
        pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.int16)
        pieces += [samples, pause]
        cursor += len(samples) + len(pause)
    return LongAudio(np.concatenate(pieces), placed)


def substring_cer(needle: str, haystack: str) -> float:
    """Edits to turn `needle` into the closest substring of `haystack`, per character of `needle` (normalised as
    scoring normalises, spaces dropped): 0 when the clip's words appear whole in the transcript."""
    from kspon_whisper.metrics import normalize_for_scoring

    a, b = (normalize_for_scoring(text).replace(" ", "") for text in (needle, haystack))
    previous = [0] * (len(b) + 1)  # a substring may start anywhere in b: no cost before it
    for i, char in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, other in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
        previous = current
    return min(previous) / max(len(a), 1)  # ... and end anywhere


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="where to write the long file (WAV)")
    import soundfile

    soundfile.write(parser.parse_args().path, build_long_audio().samples, SAMPLE_RATE)
