"""Peak memory of transcribe.py on one long 44.1 kHz stereo file, against a short one: what the file itself costs.

    python benchmarks/long_file_memory.py --minutes 30 --write_results   # ~2 min on 2 cores, 320 MB of /tmp

`transcribe.py` with a 2-layer random Whisper and 4 new tokens per window, so that the audio path is what is measured.
"""

import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/long_file_memory.py`

from benchmarks.harness import REPO, arguments, markdown_table, publish, section_head
from kspon_dataset.corpus import SAMPLE_RATE
from kspon_whisper.audio import read_audio
from kspon_whisper.random_whisper import save_random_whisper

SECTION = "## Memory of a long file in transcribe.py"
SOURCE_RATE = 44_100


def transcribe_peak(model_dir: Path, audio: Path, seconds: int) -> tuple[float, float]:
    """(peak resident MiB, seconds) of transcribe.py on `seconds` of stereo noise, written a second at a time."""
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(audio, "w", SOURCE_RATE, 2, subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write((0.1 * rng.standard_normal((SOURCE_RATE, 2))).astype(np.float32))
    command = [sys.executable, str(REPO / "transcribe.py"), "--model", str(model_dir), "--max_new_tokens", "4"]
    start = time.perf_counter()
    process = subprocess.Popen([*command, str(audio)], cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"transcribe.py failed on {audio}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--minutes", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = save_random_whisper("test", REPO / "models" / "whisper-base", tmp / "model")
        short_mb, short_s = transcribe_peak(model_dir, tmp / "short.wav", 12)
        long_mb, long_s = transcribe_peak(model_dir, tmp / "long.wav", args.minutes * 60)
        tracemalloc.start()
        samples_mb = read_audio(tmp / "long.wav").nbytes / 2**20
        traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    waveform_mb, extra_mb = args.minutes * 60 * SAMPLE_RATE * 4 / 2**20, long_mb - short_mb
    difference = f"{extra_mb:,.0f} MiB = {extra_mb / waveform_mb:.1f} x the {waveform_mb:,.0f} MiB 16 kHz waveform"
    reader = f"`read_audio` alone on the {args.minutes}-minute file: traced peak {traced_mb:,.0f} MiB for a "
    reader += f"{samples_mb:,.0f} MiB result.\n"
    rows = [["12 s, 44.1 kHz stereo", f"{short_mb:,.0f} MiB", f"{short_s:.0f} s"]]
    rows += [
        [f"{args.minutes} min, 44.1 kHz stereo", f"{long_mb:,.0f} MiB", f"{long_s:.0f} s"],
        ["the difference", difference, ""],
    ]
    table = markdown_table(["transcribe.py on", "peak resident memory", "time"], rows)
    publish(f"{section_head(SECTION, __file__, argv)}\n{table}\n\n{reader}", args.write_results)


if __name__ == "__main__":
    main()
