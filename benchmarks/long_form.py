"""Long-form transcription on a minute of known speech: Whisper's sequential decoding against each clip alone.

OMP_NUM_THREADS=1 python benchmarks/long_form.py --write_results   # ~4 min on a busy 2-core CPU
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/long_form.py`

from benchmarks.harness import REPO, arguments, markdown_table, publish, section_head
from kspon_whisper.inference import GenerationSettings, Transcriber, load_model
from kspon_whisper.metrics import score
from tools.sample_audio import LONG_CLIPS, PAUSE_S, STRADDLER, build_long_audio, sample_clips, substring_cer

SECTION = "## Long-form transcription"
# The untouched base is unsure of this voice (mean log-probability below -1), so the log-probability rule resamples
# its windows and the no-speech rule, which needs it, skips some as silence: the test turns both off.
LONG_FORM_VARIANTS = {
    "long form, default settings": {},
    "long form, no_speech_threshold off": {"no_speech_threshold": None},
    "long form, logprob_threshold and no_speech_threshold off (the test)": dict.fromkeys(
        ["logprob_threshold", "no_speech_threshold"]
    ),
}


def timed(run) -> tuple[object, float]:
    torch.manual_seed(0)  # the fallback samples: every variant is reproducible
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def measure(model_dir: str, device: str) -> dict:
    clips = sample_clips(ids=LONG_CLIPS)
    audio = build_long_audio(clips)
    model, processor = load_model(model_dir, device)
    transcriber = Transcriber(model, processor)
    alone, seconds = timed(lambda: transcriber([clips[uid][1] for uid in LONG_CLIPS]))
    alone = {uid: result.text for uid, result in zip(LONG_CLIPS, alone, strict=True)}
    straddler, rows, segments = alone[STRADDLER], [], {}

    def row(name: str, text: str, seconds: float) -> None:
        rows.append((name, score([audio.reference], [text])["cer"], substring_cer(straddler, text), seconds, text))

    row("each clip alone", " ".join(alone[clip.id] for clip in audio.clips), seconds)
    for name, overrides in LONG_FORM_VARIANTS.items():
        variant = Transcriber(model, processor, GenerationSettings(**overrides))
        [result], seconds = timed(lambda variant=variant: variant([audio.samples]))
        segments[name] = result.segments
        row(name, result.text, seconds)
    return {"audio": audio, "straddler": straddler, "rows": rows, "segments": segments}


def report(measured: dict, argv: list[str] | None, device: str) -> str:
    audio, clip = measured["audio"], measured["audio"].straddler()
    header = ["decoding", "CER vs the references", "straddling clip's own hypothesis in it (substring CER)", "seconds"]
    rows = [[name, f"{cer:.3f}", f"{found:.3f}", f"{time_s:.1f}"] for name, cer, found, time_s, _ in measured["rows"]]
    lines = [section_head(SECTION, __file__, argv, device=f"device {device}").rstrip("\n")]
    lines.append(
        f"- Audio: {len(audio.clips)} sample-corpus clips, {audio.duration:.1f} s, {PAUSE_S} s pauses; "
        f"{clip.id} ({clip.text}) spans {clip.start:.2f}-{clip.end:.2f} s. Model: Whisper base, greedy, "
        f"{torch.get_num_threads()} torch thread(s)."
    )
    lines += ["", markdown_table(header, rows), "", f"- The straddling clip decoded alone: {measured['straddler']!r}."]
    for name, segments in measured["segments"].items():
        overlapped = sum(any(s.start < c.end and c.start < s.end for s in segments) for c in audio.clips)
        lines.append(f"- {name}: {len(segments)} segments, {overlapped} of {len(audio.clips)} clips overlap one.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--model", default=str(REPO / "models" / "whisper-base"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    measured = measure(args.model, args.device)
    for name, *_, text in measured["rows"]:
        print(f"{name}: {text}")
    publish(report(measured, argv, args.device), args.write_results)


if __name__ == "__main__":
    main()
