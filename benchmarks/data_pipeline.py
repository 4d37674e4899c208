"""Data-pipeline benchmark: how fast KsponSpeech reaches the model, streamed, prepared, or unzipped the blog way.

python benchmarks/data_pipeline.py --num_utterances 20000 --write_results   # ~10 min on 2 cores
python benchmarks/data_pipeline.py --num_utterances 200 --passes 1 --loader_workers 1 --loader_batches 2  # ~1 min
"""

import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/data_pipeline.py`

from benchmarks.harness import MIB, arguments, markdown_table, offline_env, publish, run_fresh, section_head
from kspon_dataset.corpus import SAMPLE_RATE, eval_split_of, pcm_samples, utterance_split

SECTION = "## Data pipeline"
BATCH_SIZE = 16  # the trainer's per_device_batch_size default
SEED = 42  # the trainer's default seed: the same order as a real first epoch
MODES = (("features", 80), ("features", 128), ("waveform", 80))  # the trainer's audio_mode, and log-mel bins


def audio_samples(audio) -> int:
    """Samples of an `audio` value: datasets 3's {"array"}, 4's AudioDecoder, or WAV {"bytes"} left undecoded."""
    if not isinstance(audio, dict):
        return audio.get_all_samples().data.shape[-1]
    if "array" in audio:
        return len(audio["array"])
    from kspon_whisper.data import wav_samples

    return len(wav_samples(audio["bytes"]))


def count_rows(rows: list[dict]) -> dict:
    """A collate_fn that does no batching work, so the DataLoader measures reading and decoding alone."""
    return {"n": len(rows), "samples": sum(audio_samples(row["audio"]) for row in rows)}


def timed_pass(batches: Iterable[dict]) -> dict:
    """One pass over {"n", "samples"} batches; `steady`: the same from its first batch on (workers started)."""
    start, first_s, first_n, n, samples = time.perf_counter(), None, 0, 0, 0
    for batch in batches:
        n, samples = n + batch["n"], samples + batch["samples"]
        if first_s is None:
            first_s, first_n = time.perf_counter() - start, n
    seconds = time.perf_counter() - start
    steady = {"examples": n - first_n, "seconds": seconds - first_s}
    return {"examples": n, "seconds": seconds, "first_s": first_s, "audio_s": samples / SAMPLE_RATE, "steady": steady}


def phase_stream(spec: dict) -> dict:
    """Streaming `train`: a cold pass then `passes` warm ones in this process, or `passes` through a DataLoader."""
    start = time.perf_counter()
    from kspon_dataset import load_kspon

    train = load_kspon(spec["corpus"], streaming=True)["train"]
    setup_s = time.perf_counter() - start
    if spec["workers"]:
        import torch  # only here, so that the single-process phase's peak RSS is without it

        loader = torch.utils.data.DataLoader(train, BATCH_SIZE, num_workers=spec["workers"], collate_fn=count_rows)
        return {"warm": [timed_pass(loader) for _ in range(spec["passes"])]}
    cold, *warm = [
        timed_pass({"n": 1, "samples": audio_samples(example["audio"])} for example in train)
        for _ in range(1 + spec["passes"])
    ]
    return {"setup_s": setup_s, "cold": cold, "warm": warm}


def phase_prepare(spec: dict) -> dict:
    from kspon_dataset import KsponSpeech

    builder = KsponSpeech(config_name="spelling", data_dir=spec["corpus"], cache_dir=spec["cache_dir"])
    start = time.perf_counter()
    builder.download_and_prepare(num_proc=spec["num_proc"])
    examples = sum(split.num_examples for split in builder.info.splits.values())
    return {"seconds": time.perf_counter() - start, "examples": examples, "bytes": tree_bytes(spec["cache_dir"])}


def phase_inflate(spec: dict) -> dict:
    start, sizes = time.perf_counter(), []
    for path in sorted(Path(spec["corpus"]).glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            sizes += [len(archive.read(info)) for info in archive.infolist()]
    return {"seconds": time.perf_counter() - start, "examples": len(sizes), "bytes": sum(sizes)}


def phase_unzip(spec: dict) -> dict:
    out = Path(spec["out_dir"])
    extracted, start = out / "extracted", time.perf_counter()
    for path in sorted(Path(spec["corpus"]).glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            archive.extractall(extracted)
    extracted_at, rows = time.perf_counter(), []
    for pcm_path in sorted(extracted.rglob("*.pcm")):
        if not (txt_path := pcm_path.with_suffix(".txt")).exists():
            continue
        audio = pcm_samples(pcm_path.read_bytes())
        wav_path = out / "wav" / pcm_path.relative_to(extracted).with_suffix(".wav")
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav_path, audio, SAMPLE_RATE, subtype="PCM_16")
        uid = pcm_path.stem
        split = eval_split_of(uid) if uid.startswith("KsponSpeech_E") else utterance_split(uid)  # the blog's split
        text = txt_path.read_bytes().decode("cp949", errors="replace").strip()  # tags left in, as the blog did
        rows.append({"split": split, "path": str(wav_path), "text": text, "duration": len(audio) / SAMPLE_RATE})
    wavs_at = time.perf_counter()
    for split in sorted({row["split"] for row in rows}):
        manifest = [{k: row[k] for k in ("path", "text", "duration")} for row in rows if row["split"] == split]
        (out / f"{split}.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    end = time.perf_counter()
    times = {"extract_s": extracted_at - start, "wav_s": wavs_at - extracted_at, "manifest_s": end - wavs_at}
    return {"seconds": end - start, **times, "examples": len(rows), "bytes": tree_bytes(out)}


def phase_loader(spec: dict) -> dict:
    """The trainer's DataLoader, wired as the trainer wires it; `warmup_batches` absorb worker start-up."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperProcessor

    from kspon_whisper.data import load_splits, make_dataloader, set_epoch, speech_batcher
    from kspon_whisper.inference import LANGUAGE, TASK

    processor = WhisperProcessor.from_pretrained(spec["model_dir"])
    processor.tokenizer.set_prefix_tokens(language=LANGUAGE, task=TASK, predict_timestamps=False)
    if processor.feature_extractor.feature_size != spec["n_mels"]:  # large-v3's differs from base's only in this
        processor.feature_extractor = WhisperFeatureExtractor(feature_size=spec["n_mels"])
    config = WhisperConfig.from_pretrained(spec["model_dir"])
    batcher = speech_batcher(processor, config, log_mel_on_device=spec["audio_mode"] == "waveform")
    train = load_splits(spec["corpus"], form="spelling", split_scheme="random", streaming=True)["train"]
    order = {"rank": 0, "world_size": 1, "seed": SEED, "shuffle": True}  # one process's first training epoch
    loader = make_dataloader(train, batcher, batch_size=BATCH_SIZE, num_workers=spec["workers"], **order)
    set_epoch(loader, 0)
    start, batches = time.perf_counter(), iter(loader)
    list(itertools.islice(batches, spec["warmup_batches"]))
    startup_s, start = time.perf_counter() - start, time.perf_counter()
    sizes = [len(batch["id"]) for batch in itertools.islice(batches, spec["timed_batches"])]
    seconds = time.perf_counter() - start
    return {"startup_s": startup_s, "batches": len(sizes), "examples": sum(sizes), "seconds": seconds}


def tree_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def median_run(runs: list[dict]) -> dict:  # the pass with the lower median time, and of how many
    return sorted(runs, key=lambda run: run["seconds"])[(len(runs) - 1) // 2] | {"of": len(runs)}


def format_section(results: dict, argv: list[str]) -> str:
    rate = lambda run: run["examples"] / run["seconds"]  # noqa: E731
    rss = lambda phase: f"{phase['rss_self_mib']:,.0f} / {phase['rss_tree_mib']:,.0f}"  # noqa: E731
    corpus, loader, phases = results["corpus"], results["loader"], results["dataset"]
    stream, dataloader, unzip, inflate = (phases[k] for k in ("stream", "stream_dataloader", "unzip", "inflate"))
    warm, loaded, cores = median_run(stream["warm"]), median_run(dataloader["warm"]), min(2, os.cpu_count() or 1)
    blog = f"blog route: extract {unzip['extract_s']:.1f} s + WAVs {unzip['wav_s']:.1f} s + manifests "
    blog += f"{unzip['manifest_s']:.1f} s, {unzip['bytes'] / MIB:,.0f} MiB on disk"
    floor = f"floor: inflate all {inflate['examples']:,} ZIP members ({inflate['bytes'] / MIB:,.0f} MiB), no output"
    epoch = f"streaming, DataLoader 2 workers x batch 16, whole epoch incl. worker start, median of {loaded['of']}"
    rows = [  # (label, timed run, cores it may use, the phase whose RSS it reports)
        ("streaming, 1 process, first pass (builds ZIP index, lazy imports)", stream["cold"], 1, stream),
        (f"streaming, 1 process, median of {warm['of']} warm passes", warm, 1, stream),
        (epoch, loaded, cores, dataloader),
        ("the same epoch from its first batch on (workers running)", loaded["steady"], cores, dataloader),
    ]
    for n, run in ((n, phases[f"prepare_np{n}"]) for n in (1, 2)):
        label = f"download_and_prepare(num_proc={n}), all splits, {run['bytes'] / MIB:,.0f} MiB Arrow"
        rows.append((label, run, min(n, cores), run))
    rows += [(blog, unzip, 1, unzip), (floor, inflate | {"examples": unzip["examples"]}, 1, inflate)]
    table = [
        [label, f"{run['examples']:,}", f"{run['seconds']:.2f}", f"{rate(run):,.0f}", f"{rate(run) / n:,.0f}"]
        + [f"{run['audio_s'] / run['seconds']:,.0f}" if "audio_s" in run else "-", rss(phase)]
        for label, run, n, phase in rows
    ]
    loader_table = [
        [run["audio_mode"], run["n_mels"] if run["audio_mode"] == "features" else "- (on GPU)", run["workers"]]
        + [f"{run['examples']:,} ({run['batches']} batches)", f"{rate(run):,.1f}"]
        + [f"{rate(run) / max(run['workers'], 1):,.1f}", f"{run['startup_s']:.1f}", rss(run)]
        for run in loader
    ]
    header = ["phase", "examples timed", "s", "utt/s", "utt/s per core", "audio s/s", "peak RSS MiB main / all"]
    ratios = "; ".join(f"num_proc={n}: {unzip['seconds'] / phases[f'prepare_np{n}']['seconds']:.2f}x" for n in (1, 2))
    loader_header = ["audio_mode", "mels", "workers", "samples timed", "samples/s", "per worker", "startup s"]
    return (
        section_head(SECTION, __file__, argv, "torchdata", "numpy", "pyarrow", "soundfile")
        + f"- Corpus: {corpus['num_utterances']:,} utterances, {corpus['audio_s'] / 3600:.1f} h of tone audio "
        f"({corpus['audio_s'] / corpus['num_utterances']:.2f} s per clip), {corpus['zip_bytes'] / MIB:,.0f} MiB of "
        f"ZIPs, generated in {corpus['seconds']:.0f} s.\n\n### Loading script\n\n{markdown_table(header, table)}\n\n"
        f"- Blog route / prepared route: {ratios}. Streaming: load_dataset returned in {stream['setup_s']:.1f} s, "
        f"the first decoded example came {stream['setup_s'] + stream['cold']['first_s']:.1f} s after the call.\n\n"
        f"### Training DataLoader\n\n{markdown_table([*loader_header, 'peak RSS MiB main / all'], loader_table)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    from kspon_dataset.sample_corpus import write_corpus
    from tools.offline_whisper import DEFAULT_OUTPUT_DIR, build_offline_whisper  # tools/ is not installed

    parser = arguments(__doc__, SECTION)
    parser.add_argument("--num_utterances", type=int, default=20_000, help="corpus size")
    parser.add_argument("--passes", type=int, default=3, help="timed streaming passes (plus one cold pass)")
    parser.add_argument("--loader_batches", type=int, default=48, help="timed batches per loader configuration")
    workers = sorted({1, 2, os.cpu_count() or 1})  # the trainer's DataLoader is timed with each count
    parser.add_argument("--loader_workers", type=lambda s: sorted({int(n) for n in s.split(",")}), default=workers)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kspon-bench-") as workdir:  # in $TMPDIR
        workdir = Path(workdir).resolve()
        corpus, env, start = workdir / "corpus", offline_env(workdir), time.perf_counter()
        summary = write_corpus(corpus, num_utterances=args.num_utterances, voice="tone", seed=0)
        info = {"num_utterances": args.num_utterances, "seconds": time.perf_counter() - start}
        info |= {"audio_s": summary.audio_seconds, "zip_bytes": summary.total_bytes}
        phases = {  # key: (phase, spec)
            "stream": ("stream", {"passes": args.passes, "workers": 0}),
            "stream_dataloader": ("stream", {"passes": args.passes, "workers": 2}),
            **{f"prepare_np{n}": ("prepare", {"num_proc": n, "cache_dir": str(workdir / f"np{n}")}) for n in (1, 2)},
            "unzip": ("unzip", {"out_dir": str(workdir / "unzipped")}),
            "inflate": ("inflate", {}),
        }
        results = {"corpus": info, "dataset": {}, "loader": []}
        for key, (phase, spec) in phases.items():
            print(f"[{key}] {spec}", flush=True)
            results["dataset"][key] = run_fresh("data_pipeline", phase, {"corpus": str(corpus), **spec}, env)
            shutil.rmtree(spec.get("cache_dir") or spec.get("out_dir") or workdir / "none", ignore_errors=True)
        model_dir = str(build_offline_whisper(DEFAULT_OUTPUT_DIR))
        for (audio_mode, n_mels), workers in itertools.product(MODES, args.loader_workers):
            spec = {"corpus": str(corpus), "model_dir": model_dir, "audio_mode": audio_mode, "n_mels": n_mels}
            spec |= {"workers": workers, "warmup_batches": max(2, workers), "timed_batches": args.loader_batches}
            print(f"[loader] {audio_mode}, {n_mels} mels, {workers} workers", flush=True)
            results["loader"].append(spec | run_fresh("data_pipeline", "loader", spec, env))
    publish(format_section(results, argv), args.write_results)


if __name__ == "__main__":
    main()
