"""Score any Whisper on KsponSpeech (CER, WER, sWER and space-free CER on the official evaluation sets), and on
any other speech set of the Hub or on disk.

    accelerate launch eval_whisper.py --model openai/whisper-large-v3 --data_dir /data/KsponSpeech \\
        --output_dir runs/eval-large-v3 --per_device_batch_size 32

    accelerate launch --config_file configs/ddp_8gpu.yaml eval_whisper.py --model me/whisper-large-v3-ko ...
    python eval_whisper.py --model models/whisper-base --data_dir kspon_dataset/sample   # CPU, the sample corpus

    # any Hugging Face speech set, by Hub id or local path (audiofolder, Parquet), several joined with '+'
    accelerate launch eval_whisper.py --model me/whisper-large-v3-ko --dataset_name google/fleurs \
        --dataset_config_name ko_kr --eval_split_name test --text_column_name transcription

`--data_dir` needs only KsponSpeech_eval.zip for the default splits (eval_clean, eval_other). Decoding is the
trainer's final evaluation exactly (`kspon_whisper.evaluation.evaluate_split`: Korean transcription, greedy unless
`--num_beams`, at most 225 new tokens, batched generation, autocast over fp32 weights), in bf16 on a GPU, in fp32 on
the CPU. Any number of processes gives the same predictions and metrics. Writes to `--output_dir`:
`predictions_<split>.jsonl` (id, reference, hypothesis), `metrics.json` and `results.md` (the table it prints).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from kspon_dataset.corpus import SPLIT_SCHEMES
from kspon_dataset.normalize import TRANSCRIPT_FORMS
from kspon_whisper.data import DeviceInputs, load_splits, make_dataloader, speech_batcher
from kspon_whisper.evaluation import evaluate_split, loop_report, print_line, write_predictions
from kspon_whisper.extra_data import PLAIN_TEXT_NORMALIZATION, load_speech_sets, speech_sets
from kspon_whisper.inference import (
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    GenerationSettings,
    ModelNotFoundError,
    default_mixed_precision,
    load_model,
)
from kspon_whisper.metrics import METRICS, SCORING_NORMALIZATION, format_scores

DEFAULT_SPLITS = ("eval_clean", "eval_other")
OTHER_SET_OPTIONS = ("dataset_name", "dataset_config_name", "eval_split_name", "text_column_name", "audio_column_name")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id or local folder of a Whisper checkpoint")
    parser.add_argument("--data_dir", help="folder holding KsponSpeech_eval.zip (and the others)")
    parser.add_argument(
        "--splits", nargs="+", help=f"KsponSpeech splits to score, in this order (default: {' '.join(DEFAULT_SPLITS)})"
    )
    parser.add_argument(
        "--dataset_name",
        help="other speech sets to score, after the KsponSpeech splits: Hub ids or local paths (an audiofolder, a "
        "folder of Parquet files) joined with '+'; their transcripts are normalised by the plain rule (README)",
    )
    parser.add_argument("--dataset_config_name", help="config of each --dataset_name set ('+'-joined)")
    parser.add_argument("--eval_split_name", default="test", help="split of each --dataset_name set ('+'-joined)")
    parser.add_argument("--text_column_name", default="text", help="transcript column of each set ('+'-joined)")
    parser.add_argument(
        "--audio_column_name", default="audio", help="audio column of each set ('+'-joined); resampled to 16 kHz"
    )
    parser.add_argument("--output_dir", default="runs/eval", help="where predictions, metrics and the table go")
    parser.add_argument("--num_beams", type=int, default=NUM_BEAMS, help="beam size (1: greedy)")
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS, help="cap on tokens per utterance")
    parser.add_argument("--per_device_batch_size", type=int, default=16, help="utterances per generate call")
    parser.add_argument("--num_workers", type=int, default=4, help="DataLoader workers per process")
    parser.add_argument("--dataset_config", default="spelling", choices=TRANSCRIPT_FORMS)
    parser.add_argument(
        "--split_scheme",
        default="random",
        choices=SPLIT_SCHEMES,
        help="where validation/test come from; eval_clean and eval_other are the official sets in every scheme",
    )
    parser.add_argument(
        "--max_samples",
        type=int,
        default=None,
        help="score only this many utterances per split (rounded up to a multiple of the process count), for a "
        "quick look; the full sets are what compare with published numbers",
    )
    parser.add_argument("--attn_implementation", default="sdpa", help='"sdpa", "eager" or "flash_attention_2"')
    parser.add_argument(
        "--mixed_precision",
        default=None,
        choices=("no", "bf16", "fp16"),
        help="autocast over fp32 weights, as the trainer evaluates; default bf16 on a GPU, none on the CPU",
    )
    args = parser.parse_args(argv)
    if args.data_dir is None and args.dataset_name is None:
        parser.error("give --data_dir (KsponSpeech) or --dataset_name (another speech set), or both")
    if args.splits is None:
        args.splits = list(DEFAULT_SPLITS) if args.data_dir else []
    elif args.data_dir is None:
        parser.error("--splits names KsponSpeech splits: give --data_dir too")
    try:
        args.other_sets = speech_sets(
            args.dataset_name,
            args.dataset_config_name,
            args.eval_split_name,
            args.text_column_name,
            args.audio_column_name,
            options=tuple(f"--{name}" for name in OTHER_SET_OPTIONS),
        )
    except ValueError as err:
        parser.error(str(err))
    for name in ("num_beams", "max_new_tokens", "per_device_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    # bf16 autocast on a GPU, as the trainer runs (accelerate_config.yaml); --mixed_precision overrides the launcher.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = Accelerator(mixed_precision=args.mixed_precision or default_mixed_precision(device))
    try:
        model, processor = load_model(args.model, accelerator.device, attn_implementation=args.attn_implementation)
    except ModelNotFoundError as err:
        sys.exit(f"eval_whisper.py: {err}")
    settings = GenerationSettings(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    settings.generate_kwargs(model.config, long_form=False)  # a budget that does not fit fails now
    with accelerator.main_process_first():  # rank 0 indexes the archives (and prepares other sets) first
        splits = {}
        if args.data_dir:
            splits = load_splits(
                args.data_dir, form=args.dataset_config, split_scheme=args.split_scheme, streaming=True
            )
        other_sets = load_speech_sets(args.other_sets, "--dataset_name")
    missing = [split for split in args.splits if split not in splits]
    if missing:
        raise ValueError(
            f"--splits {' '.join(missing)}: not in {args.data_dir}, which provides {', '.join(sorted(splits))}. "
            "eval_clean and eval_other need KsponSpeech_eval.zip; validation and test need KsponSpeech_01..05.zip."
        )
    splits |= other_sets
    names = [*args.splits, *other_sets]
    batcher = speech_batcher(processor, model.config, log_mel_on_device=True)
    device_inputs = DeviceInputs(processor, accelerator.device)
    output_dir = Path(args.output_dir)

    def say(message: str) -> None:
        if accelerator.is_main_process:
            print_line(message)

    say(
        f"{args.model}: {', '.join(names)} | {accelerator.num_processes} process(es) on "
        f"{accelerator.device.type} | mixed precision {accelerator.mixed_precision} | num_beams {args.num_beams} | "
        f"max_new_tokens {args.max_new_tokens} | batch {args.per_device_batch_size} per process"
    )
    results = {}
    for name in names:
        loader = make_dataloader(
            splits[name],
            batcher,
            batch_size=args.per_device_batch_size,
            num_workers=args.num_workers,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            seed=0,
            shuffle=False,
        )
        result = evaluate_split(
            accelerator,
            model,
            name,
            splits[name],
            loader,
            processor,
            device_inputs,
            settings=settings,
            max_samples=args.max_samples,
        )
        loops = loop_report(result.records)
        speed = len(result.records) / result.seconds
        results[name] = result.metrics | {"utterances_per_s": speed, "loops": loops}
        if result.counts is not None:
            results[name]["data"] = dict(result.counts)
        say(_split_summary(name, result.metrics, speed, loops, result.kept_line))
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_predictions(output_dir / f"predictions_{name}.jsonl", result.records)
    table = results_table(results)
    if accelerator.is_main_process:
        settings = {
            "model": args.model,
            "num_beams": args.num_beams,
            "max_new_tokens": args.max_new_tokens,
            "mixed_precision": accelerator.mixed_precision,
            "num_processes": accelerator.num_processes,
            "max_samples": args.max_samples,
            "scoring_normalization": SCORING_NORMALIZATION,
            "other_sets": {
                label: dataclasses.asdict(spec) for label, spec in zip(other_sets, args.other_sets, strict=True)
            },
            "other_sets_text_normalization": f"plain: {PLAIN_TEXT_NORMALIZATION}",
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (output_dir / "metrics.json").write_text(json.dumps(results | {"settings": settings}, indent=2))
        (output_dir / "results.md").write_text(table + "\n")
    say(f"\n{table}\n\nwrote {output_dir}/metrics.json, results.md and predictions_<split>.jsonl")
    accelerator.wait_for_everyone()  # gloo: let the last gather's thread finish before the group is torn down
    accelerator.end_training()
    return results


def _split_summary(name: str, metrics: dict, speed: float, loops: dict, kept_line: str | None) -> str:
    lines = [f"eval {name} | {format_scores(metrics)} | {metrics['num_scored']} utterances | {speed:.2f} utterances/s"]
    if kept_line:
        lines.append(kept_line)
    lines.append(
        f"{name}: {loops['num_loops']} of {loops['num_hypotheses']} hypotheses look like hallucination or "
        "repetition loops"
    )
    for example in loops["examples"]:
        lines.append(f"  {example['id']} ({example['reason']}): {example['hypothesis'][:120]!r}")
    return "\n".join(lines)


def results_table(results: dict[str, dict]) -> str:
    """The Markdown table: error rates in percent per split, with the utterance and loop counts."""
    header = ["Split", "Utterances", *(f"{metric.display_name} (%)" for metric in METRICS), "Loops"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in results.items():
        cells = [name, str(values["num_scored"]), *(f"{100 * values[metric.name]:.2f}" for metric in METRICS)]
        lines.append("| " + " | ".join([*cells, str(values["loops"]["num_loops"])]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
