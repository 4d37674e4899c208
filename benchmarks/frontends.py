"""Does the fine-tuned model decode as well in faster-whisper, on audio as users give it, as in Transformers?

python benchmarks/frontends.py --write_results   # the demo at seeds 42, 1, 2 (~15-20 min each; reused when done)
python benchmarks/frontends.py --probabilities 0 0.5 --seeds 42 --write_results
"""

import json
import sys
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from faster_whisper import WhisperModel
from transformers import WhisperFeatureExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/frontends.py`

from benchmarks.harness import REPO, arguments, demo_fine_tune, markdown_table, publish, section_head
from kspon_whisper.audio import to_dtype
from kspon_whisper.collator import WhisperCollator
from kspon_whisper.data import DeviceInputs
from kspon_whisper.export import export_ct2
from kspon_whisper.inference import LANGUAGE
from kspon_whisper.metrics import normalize_for_scoring, score
from tools.sample_audio import sample_clips

SECTION = "## faster-whisper on audio as given: the two front-ends"
SPLITS = ("test", "eval_clean")


def transformers_texts(output_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    lines = [line for name in SPLITS for line in (output_dir / f"predictions_{name}.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in lines]
    return {r["id"]: r["reference"] for r in records}, {r["id"]: r["hypothesis"] for r in records}


def is_broken(text: str) -> bool:
    """An output made only of U+FFFD (a token cut inside a Hangul syllable) or digits: no words at all."""
    return not normalize_for_scoring(text.replace("\ufffd", "")).replace(" ", "").strip("0123456789")


def row(name: str, references: dict[str, str], hypotheses: dict[str, str], transformers: dict[str, str]) -> dict:
    ids = sorted(references)
    scores = score([references[i] for i in ids], [hypotheses[i] for i in ids])
    same = sum(normalize_for_scoring(hypotheses[i]) == normalize_for_scoring(transformers[i]) for i in ids)
    broken = sum(is_broken(hypotheses[i]) for i in ids)
    return {"decoder": name, "cer_nospace": scores["cer_nospace"], "identical": same, "broken": broken, "n": len(ids)}


def measure(output_dir: Path, clips) -> list[dict]:
    """The rows of one fine-tune, kept in its folder (frontends.json) so that rewriting the table decodes nothing."""
    cached = output_dir / "frontends.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    references, transformers = transformers_texts(output_dir)
    rows = [row("Transformers (the trainer's predictions)", references, transformers, transformers)]
    for quantization, compute_type in (("float16", "float32"), ("int8", "int8")):  # a CPU has no float16 kernels
        model_dir = export_ct2(output_dir, None, quantization, overwrite=True)
        model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=2)
        options = {"language": LANGUAGE, "beam_size": 1, "temperature": 0.0, "condition_on_previous_text": False}
        for timestamps in (False, True):  # the clip as given, as faster-whisper's README calls it
            texts = {}
            for uid, audio in clips:
                segments, _ = model.transcribe(audio, without_timestamps=not timestamps, **options)
                texts[uid] = "".join(segment.text for segment in segments).strip()
            name = f"faster-whisper {quantization}, as given" + (", timestamps" if timestamps else "")
            rows.append(row(name, references, texts, transformers))
    cached.write_text(json.dumps(rows, indent=1))
    return rows


def front_end_cost(probabilities=(0.0, 0.5, 1.0), batch_size: int = 16, repeats: int = 5) -> dict[float, float]:
    """Milliseconds (best of `repeats`, one thread) for 128-mel log-mels of 0.5-12 s clips, a share feature-padded."""
    torch.set_num_threads(1)
    extractor = WhisperFeatureExtractor(feature_size=128)
    inputs = DeviceInputs(SimpleNamespace(feature_extractor=extractor), torch.device("cpu"))
    rng = np.random.default_rng(0)
    audio = [(rng.standard_normal(int(s * 16_000)) * 3000).astype(np.int16) for s in rng.uniform(0.5, 12, batch_size)]
    collate = WhisperCollator(extractor, decoder_start_token_id=0, audio_mode="waveform")
    cost = {}
    for probability in probabilities:
        rows = [
            {"audio": a, "labels": [0], "feature_padded": i < batch_size * probability} for i, a in enumerate(audio)
        ]
        batch = collate(rows)
        cost[probability] = 1000 * min(timeit.repeat(lambda batch=batch: inputs(batch), number=1, repeat=repeats))
    return cost


def format_section(results: list[dict], argv: list[str] | None) -> str:
    lines = [section_head(SECTION, __file__, argv, "faster-whisper").rstrip("\n")]
    lines.append("- float16 exports run in float32 (a CPU has no float16 kernels). Space-free CER, held-out clips.")
    header = ["P", "seed", "decoder", "space-free CER", "x Transformers", "identical to Transformers", "only �/digits"]
    table = []
    for run in results:
        reference = run["rows"][0]["cer_nospace"]
        for r in run["rows"]:
            ratio = f"{r['cer_nospace'] / reference:.2f}" if reference else "-"
            cells = [f"{run['probability']:g}", str(run["seed"]), r["decoder"], f"{r['cer_nospace']:.3f}", ratio]
            table.append([*cells, f"{r['identical']}/{r['n']}", str(r["broken"])])
    cost = ", ".join(f"P {p:g}: {ms:.0f} ms" for p, ms in front_end_cost().items())
    cost = f"What it costs: the log-mels of 16 clips of 0.5-12 s, large-v3's 128 mels, one CPU thread: {cost}."
    return "\n".join([*lines, "", markdown_table(header, table), "", cost, ""])


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--probabilities", type=float, nargs="+", default=[0.5], help="--feature_padding_probability")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "frontends", help="fine-tunes (reused)")
    parser.add_argument("--measured_only", action="store_true", help="leave out the fine-tunes not already done")
    args = parser.parse_args(argv)
    clips, results = [(uid, to_dtype(pcm, "float32")) for uid, (_, pcm) in sample_clips(SPLITS).items()], []
    for probability in args.probabilities:
        for seed in args.seeds:
            output_dir = args.runs / f"p{probability:g}-s{seed}"  # the demo's fine-tune, reused when done
            if args.measured_only and not (output_dir / "frontends.json").is_file():
                continue
            start = time.perf_counter()
            options = ["--seed", str(seed), "--feature_padding_probability", str(probability), "--report_to", "none"]
            demo_fine_tune(output_dir, *options)
            rows = measure(output_dir, clips)
            results.append({"probability": probability, "seed": seed, "rows": rows})
            print(json.dumps(results[-1], ensure_ascii=False), f"({time.perf_counter() - start:.0f} s)", flush=True)
    publish(format_section(results, argv), args.write_results)


if __name__ == "__main__":
    main()
