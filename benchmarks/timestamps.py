"""Do timestamps survive fine-tuning? The demo's fine-tune with and without timestamp labels, decoded with timestamps.

python benchmarks/timestamps.py --write_results   # two demo fine-tunes (reused when done), ~40 min on 2 cores
"""

import dataclasses
import itertools
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/timestamps.py`

from benchmarks.harness import REPO, arguments, demo_fine_tune, markdown_table, publish, section_head
from kspon_dataset.corpus import SAMPLE_RATE
from kspon_whisper.audio import to_dtype
from kspon_whisper.data import load_splits, make_dataloader, set_epoch, speech_batcher
from kspon_whisper.inference import MAX_NEW_TOKENS, load_model
from kspon_whisper.metrics import score
from kspon_whisper.timestamps import TIME_PRECISION, timestamp_labels
from tools.sample_audio import SAMPLE, sample_clips

SECTION = "## Timestamps after fine-tuning"
BASE = REPO / "models" / "whisper-base"
HELD_OUT = ("test", "eval_clean", "eval_other")
# Long files: the sample's clips are short (~1.2 s), so test alone with its pauses stays under 30 s.
LONG_FILES = {"test + eval_clean": ("test", "eval_clean"), "eval_other": ("eval_other",)}
DEFAULT_PROBABILITY = 0.2  # TrainConfig.timestamp_probability
SEED = 42  # TrainConfig.seed, the demo's
CORPUS_UTTERANCES = 622_545
BATCH = 8


def realised_share() -> dict:
    model, processor = load_model(str(BASE), "cpu")
    generation = model.generation_config
    timestamps = timestamp_labels(processor.tokenizer, generation, probability=DEFAULT_PROBABILITY, seed=SEED)
    batcher = speech_batcher(processor, model.config, log_mel_on_device=True)
    batcher = dataclasses.replace(batcher, timestamps=timestamps)
    splits = load_splits(str(SAMPLE), form="spelling", split_scheme="random", streaming=True)
    order = {"rank": 0, "world_size": 1, "seed": SEED, "shuffle": True}
    loader = make_dataloader(splits["train"], batcher, batch_size=8, num_workers=1, **order)
    per_epoch = []
    for epoch in range(20):
        set_epoch(loader, epoch)
        marked = total = 0
        for batch in loader:
            labels = batch["labels"]
            marked += int((labels == timestamps.timestamp_ids[0]).any(dim=1).sum())
            total += labels.shape[0]
        per_epoch.append(marked / total)
    corpus = sum(timestamps.chosen(f"KsponSpeech_{i:06d}", 0) for i in range(1, CORPUS_UTTERANCES + 1))
    return {"train_clips": total, "per_epoch": per_epoch, "corpus": corpus / CORPUS_UTTERANCES}


def generate(model, features: torch.Tensor, **kwargs) -> dict:
    kwargs |= {"language": "ko", "task": "transcribe", "return_timestamps": True, "max_new_tokens": MAX_NEW_TOKENS}
    with torch.inference_mode():  # at most MAX_NEW_TOKENS per 30 s window, as the trainer's evaluation caps it
        return model.generate(features, return_dict_in_generate=True, **kwargs)


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def decode_clips(model, processor, clips: list[dict]) -> list:
    """Each clip in its own 30 s window; well-formed: starts with a timestamp, non-decreasing, closed, end inside."""
    begin, eos = model.generation_config.no_timestamps_token_id + 1, model.generation_config.eos_token_id
    counts, errors, hypotheses = Counter(), [], []
    for i in range(0, len(clips), BATCH):
        batch = clips[i : i + BATCH]
        audio = [c["audio"] for c in batch]
        features = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        for clip, tokens in zip(batch, generate(model, features)["sequences"].tolist(), strict=True):
            tokens = [t for t in tokens if t != eos]
            times = [(t - begin) * TIME_PRECISION for t in tokens if t >= begin]
            closed = len(times) >= 2 and tokens[-1] >= begin
            inside = bool(times) and times[-1] <= clip["duration"] + TIME_PRECISION + 1e-6
            ordered = bool(tokens) and tokens[0] >= begin and all(a <= b for a, b in itertools.pairwise(times))
            counts.update({"well_formed": ordered and closed and inside, "closed": closed, "inside": inside})
            errors += [abs(times[-1] - clip["duration"])] if closed else []
            hypotheses.append(processor.decode(tokens, skip_special_tokens=True).strip())
    cer, well_formed = score([c["text"] for c in clips], hypotheses)["cer"], f"{counts['well_formed']} / {len(clips)}"
    return [well_formed, counts["closed"], counts["inside"], median(errors), f"{cer:.3f}"]


def decode_long(model, processor, name: str, clips: list[dict]) -> list:
    """The clips joined with 1 s pauses, in long form; a segment's end against the nearest clip end."""
    pause, ends, position = np.zeros(SAMPLE_RATE, dtype=np.float32), [], 0
    for clip in clips:
        ends.append((position + len(clip["audio"])) / SAMPLE_RATE)
        position += len(clip["audio"]) + len(pause)
    audio = np.concatenate([piece for clip in clips for piece in (clip["audio"], pause)][:-1])
    duration = len(audio) / SAMPLE_RATE  # over 30 s: LONG_FILES join enough clips
    options = {"truncation": False, "padding": "longest", "return_attention_mask": True, "return_tensors": "pt"}
    inputs = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, **options)
    out = generate(model, inputs.input_features, attention_mask=inputs.attention_mask, return_segments=True)
    segments = [(float(s["start"]), float(s["end"])) for s in out["segments"][0]]
    times = [t for segment in segments for t in segment]
    inside = all(0 <= t <= duration + TIME_PRECISION + 1e-6 for t in times)
    text = processor.decode(out["sequences"][0], skip_special_tokens=True).strip()
    return [
        f"{name}: {len(clips)} clips, {duration:.1f} s",
        len(segments),
        "yes" if all(a <= b for a, b in itertools.pairwise(times)) else "no",
        "yes" if inside else f"no ({max(times, default=0.0) - duration:+.2f} s)",
        median([min(abs(end - e) for e in ends) for _, end in segments]),
        f"{score([' '.join(c['text'] for c in clips)], [text])['cer']:.3f}",
    ]


def decode_model(model_dir: Path, clips: dict[str, list[dict]]) -> dict:
    model, processor = load_model(str(model_dir), "cpu")
    return {
        "clips": decode_clips(model, processor, [clip for name in HELD_OUT for clip in clips[name]]),
        "long": [
            decode_long(model, processor, name, [c for s in splits for c in clips[s]])
            for name, splits in LONG_FILES.items()
        ],
    }


def report(results: dict, argv: list[str] | None) -> str:
    share, epochs = results["share"], results["share"]["per_epoch"]
    lines = [section_head(SECTION, __file__, argv).rstrip("\n")]
    lines += ["- Fine-tunes, one after the other, each exactly the demo's training (final evaluation cut to test):"]
    lines += [
        f"  - {name}: `{run['command']}`; CER without timestamps (the trainer's final evaluation): validation "
        f"{run['validation_cer']:.3f}, test {run['test_cer']:.3f}"
        for name, run in results["runs"].items()
    ]
    lines.append(
        f"- Realised share of timestamped labels at p = {DEFAULT_PROBABILITY} (seed {SEED}), counted in the trainer's "
        f"batches of the sample's {share['train_clips']} training clips: {min(epochs):.2f} to {max(epochs):.2f} per "
        f"epoch, {statistics.mean(epochs):.3f} over {len(epochs)} epochs; over the full corpus's "
        f"{CORPUS_UTTERANCES:,} ids (epoch 0): {share['corpus']:.4f}."
    )
    clips = [[name, *decoded["clips"]] for name, decoded in results["models"].items()]
    long = [[name, *row] for name, decoded in results["models"].items() for row in decoded["long"]]
    header = ["model", "well-formed", "closed", "end inside", "median abs(end - duration) s", "CER"]
    lines += ["", "### Held-out clips, `generate(..., return_timestamps=True)`", "", markdown_table(header, clips)]
    header = ["model", "file", "segments", "ordered", "inside", "end to clip end s", "CER"]
    lines += ["", "### Long audio, transformers' long-form generation", "", markdown_table(header, long)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "timestamps")
    parser.add_argument("--json", type=Path, help="also write every measured number here")
    args = parser.parse_args(argv)
    results = {"share": realised_share()}
    runs = {"p = 0": args.runs_dir / "p0", f"p = {DEFAULT_PROBABILITY} (default)": args.runs_dir / "p-default"}
    options = {"p = 0": ["--timestamp_probability", "0"]}
    results["runs"] = {}
    for name, out in runs.items():  # the demo's fine-tune (or the one already there), final evaluation cut to test
        command = demo_fine_tune(out, "--final_eval_splits", "test", *options.get(name, []))
        metrics = json.loads((out / "metrics.json").read_text())
        results["runs"][name] = {"command": command, **{f"{k}_cer": metrics[k]["cer"] for k in ("test", "validation")}}
    clips = {  # split: the held-out clips in id order
        name: [
            {"audio": to_dtype(pcm, "float32"), "text": text, "duration": len(pcm) / SAMPLE_RATE}
            for _, (text, pcm) in sorted(sample_clips((name,)).items())
        ]
        for name in HELD_OUT
    }
    # Decoding steps are small ops: on a shared 2-core machine a second thread spins at every op boundary while
    # others hold the core (measured 8x slower with 2 threads than with 1 under a load of 8).
    torch.set_num_threads(1)
    models = {"base (untouched)": BASE} | runs
    results["models"] = {name: decode_model(model_dir, clips) for name, model_dir in models.items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    publish(report(results, argv), args.write_results)


if __name__ == "__main__":
    main()
