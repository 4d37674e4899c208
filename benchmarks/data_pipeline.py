"""Data-pipeline benchmark: how fast KsponSpeech reaches the model, streamed, prepared, or unzipped the blog way.

    python benchmarks/data_pipeline.py --num_utterances 20000 --write_results   # everything, ~10 min on 2 cores
    python benchmarks/data_pipeline.py --mode dataset                           # the loading script only
    python benchmarks/data_pipeline.py --mode loader --workdir /tmp/kb --keep   # the trainer's DataLoader only

One run writes a synthetic corpus in AI Hub's exact ZIP layout (`kspon_dataset.sample_corpus`, tone voice) and
measures, on that corpus:
- dataset mode: streaming examples/s with the audio decoded (by datasets where it decodes audio: datasets < 4, or
  with torchcodec; otherwise from the WAV bytes, as the trainer does), in one process and through a 2-worker
  DataLoader; `download_and_prepare` with num_proc 1 and 2; the blog route it replaces (extract every ZIP, one WAV
  per utterance, JSON manifests, the blog's per-utterance split) and the ratio of the two.
- loader mode: samples/s of the trainer's own DataLoader (`load_splits` -> `SpeechBatcher` -> `make_dataloader`,
  streamed in the training order) with log-mel computed in the workers (80 and 128 mels) or deferred to the GPU.

The datasets side goes through `load_kspon` and the `KsponSpeech` builder, so it runs on datasets 3.6 and 5.x alike.
For the corpus at its real size (622,545 utterances) see `benchmarks/full_scale.py`.

Every phase runs in a fresh Python process, so its peak RSS is its own and no ZIP index, lazy import or page of
decoded audio carries over from the phase before. All caches live in the work dir; nothing reaches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/data_pipeline.py`, the repo packages are not installed

from kspon_dataset.corpus import eval_split_of, pcm_samples, utterance_split  # noqa: E402

RESULTS_FILE = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Data pipeline"
SAMPLE_RATE = 16_000
BATCH_SIZE = 16  # the trainer's per_device_batch_size default
SEED = 42  # the trainer's default seed: the same order as a real first epoch
MIB = 2**20


# --------------------------------------------------------------------------------------------------------------
# Phases: each runs in its own process and returns a JSON-able dict


def stream_pass(examples: Iterable[dict]) -> dict:
    """Iterate once, touching every decoded array; the time to the first example is part of the pass."""
    start, first_s, count, samples = time.perf_counter(), None, 0, 0
    for example in examples:
        samples += audio_samples(example["audio"])
        count += 1
        first_s = first_s if first_s is not None else time.perf_counter() - start
    return {
        "examples": count,
        "seconds": time.perf_counter() - start,
        "first_s": first_s,
        "audio_s": samples / SAMPLE_RATE,
    }


def audio_samples(audio: dict) -> int:
    """Samples of a decoded `audio` value, or of its WAV bytes where datasets does not decode (datasets >= 4
    without torchcodec: the column is then a plain {bytes, path} struct)."""
    if "array" in audio:
        return len(audio["array"])
    from kspon_whisper.data import wav_samples

    return len(wav_samples(audio["bytes"]))


def count_rows(rows: list[dict]) -> dict:
    """A collate_fn that does no batching work, so the DataLoader measures reading and decoding alone."""
    return {"id": [None] * len(rows), "samples": sum(audio_samples(row["audio"]) for row in rows)}


def loader_pass(loader: Iterable[dict]) -> dict:
    """One epoch; `steady` is the same epoch from its first batch on, once the workers have started."""
    start, first_s, first_count, count, samples = time.perf_counter(), None, 0, 0, 0
    for batch in loader:
        count += len(batch["id"])
        samples += batch["samples"]
        if first_s is None:
            first_s, first_count = time.perf_counter() - start, count
    seconds = time.perf_counter() - start
    steady = {"examples": count - first_count, "seconds": seconds - first_s}
    return {
        "examples": count,
        "seconds": seconds,
        "first_s": first_s,
        "audio_s": samples / SAMPLE_RATE,
        "steady": steady,
    }


def streaming_train(corpus: str):
    from kspon_dataset import load_kspon

    return load_kspon(corpus, streaming=True)["train"]


def phase_stream(spec: dict) -> dict:
    start = time.perf_counter()
    train = streaming_train(spec["corpus"])
    setup_s = time.perf_counter() - start
    passes = []
    for i in range(1 + spec["passes"]):
        passes.append(stream_pass(train))
        report_pass("cold" if i == 0 else f"warm {i}", passes[-1])
    return {"setup_s": setup_s, "cold": passes[0], "warm": passes[1:]}


def phase_stream_dataloader(spec: dict) -> dict:
    import torch

    train = streaming_train(spec["corpus"])
    loader = torch.utils.data.DataLoader(
        train, batch_size=BATCH_SIZE, num_workers=spec["workers"], collate_fn=count_rows
    )
    passes = []
    for i in range(spec["passes"]):
        passes.append(loader_pass(loader))
        report_pass(f"pass {i + 1}", passes[-1])
    return {"warm": passes}


def phase_prepare(spec: dict) -> dict:
    from kspon_dataset import KsponSpeech

    builder = KsponSpeech(config_name="spelling", data_dir=spec["corpus"], cache_dir=spec["cache_dir"])
    start = time.perf_counter()
    builder.download_and_prepare(num_proc=spec["num_proc"])
    seconds = time.perf_counter() - start
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    return {
        "seconds": seconds,
        "examples": sum(splits.values()),
        "splits": splits,
        "bytes": tree_bytes(spec["cache_dir"]),
    }


def phase_inflate(spec: dict) -> dict:
    """The floor under any route that starts from the ZIPs: inflate every member once and throw it away."""
    start, members, size = time.perf_counter(), 0, 0
    for path in sorted(Path(spec["corpus"]).glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                size += len(archive.read(info))
                members += 1
    return {"seconds": time.perf_counter() - start, "examples": members, "bytes": size}


def phase_unzip(spec: dict) -> dict:
    """The blog route: extract all seven ZIPs, write one WAV per utterance, then one JSON manifest per split."""
    corpus, out = Path(spec["corpus"]), Path(spec["out_dir"])
    start = time.perf_counter()
    for path in sorted(corpus.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            archive.extractall(out / "extracted")
    extracted = time.perf_counter()
    rows = write_wavs(out / "extracted", out / "wav")
    wavs = time.perf_counter()
    for split in sorted({row["split"] for row in rows}):
        manifest = [{k: row[k] for k in ("path", "text", "duration")} for row in rows if row["split"] == split]
        (out / f"{split}.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "extract_s": extracted - start,
        "wav_s": wavs - extracted,
        "manifest_s": end - wavs,
        "examples": len(rows),
        "bytes": tree_bytes(out),
    }


def write_wavs(extracted: Path, wav_root: Path) -> list[dict]:
    rows = []
    for pcm_path in sorted(extracted.rglob("*.pcm")):
        txt_path = pcm_path.with_suffix(".txt")
        if not txt_path.exists():
            continue
        audio = pcm_samples(pcm_path.read_bytes())
        wav_path = wav_root / pcm_path.relative_to(extracted).with_suffix(".wav")
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav_path, audio, SAMPLE_RATE, subtype="PCM_16")
        uid = pcm_path.stem
        split = eval_split_of(uid) if uid.startswith("KsponSpeech_E") else utterance_split(uid)  # the blog's split
        text = txt_path.read_bytes().decode("cp949", errors="replace").strip()  # tags left in, as the blog did
        rows.append({"split": split, "path": str(wav_path), "text": text, "duration": len(audio) / SAMPLE_RATE})
    return rows


def phase_loader(spec: dict) -> dict:
    """The trainer's training DataLoader, wired as `Trainer.__init__` wires it (see train_accelerate.py)."""
    from kspon_whisper.data import load_splits, make_dataloader, set_epoch

    batcher = training_batcher(spec["model_dir"], spec["audio_mode"], spec["n_mels"])
    train = load_splits(spec["corpus"], config="spelling", split_scheme="random", streaming=True)["train"]
    loader = make_dataloader(
        train,
        batcher,
        batch_size=BATCH_SIZE,
        num_workers=spec["workers"],
        rank=0,
        world_size=1,
        seed=SEED,
        shuffle=True,
    )
    set_epoch(loader, 0)
    result = time_batches(loader, spec["warmup_batches"], spec["timed_batches"])
    return result | {"workers": loader.num_workers}


def training_batcher(model_dir: str, audio_mode: str, n_mels: int):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperProcessor

    from kspon_whisper.collator import WhisperCollator
    from kspon_whisper.data import SpeechBatcher

    processor = WhisperProcessor.from_pretrained(model_dir)
    processor.tokenizer.set_prefix_tokens(language="ko", task="transcribe", predict_timestamps=False)
    extractor = processor.feature_extractor
    if extractor.feature_size != n_mels:  # large-v3's extractor differs from base's only in its 128 mel bins
        extractor = WhisperFeatureExtractor(feature_size=n_mels)
    start_token = WhisperConfig.from_pretrained(model_dir).decoder_start_token_id
    collator = WhisperCollator(extractor, decoder_start_token_id=start_token, audio_mode=audio_mode)
    return SpeechBatcher(processor, collator)


def time_batches(loader: Iterable[dict], warmup: int, timed: int) -> dict:
    """Steady-state samples/s over `timed` batches, after `warmup` batches that absorb worker start-up."""
    start = time.perf_counter()
    batches = iter(loader)
    skipped = sum(1 for _ in itertools.islice(batches, warmup))
    first_batch_s = time.perf_counter() - start
    start, count, samples = time.perf_counter(), 0, 0
    for batch in itertools.islice(batches, timed):
        count += 1
        samples += len(batch["id"])
    seconds = time.perf_counter() - start
    print(f"    {samples:,} samples in {count} batches, {seconds:.2f} s, after {skipped} warm-up", flush=True)
    return {"startup_s": first_batch_s, "batches": count, "examples": samples, "seconds": seconds}


PHASES: dict[str, Callable[[dict], dict]] = {
    "stream": phase_stream,
    "stream_dataloader": phase_stream_dataloader,
    "prepare": phase_prepare,
    "inflate": phase_inflate,
    "unzip": phase_unzip,
    "loader": phase_loader,
}


def run_child(phase: str, spec: dict, result_path: str) -> None:
    """Entry point of a phase process: quiet libraries, run the phase, add this process's own peak RSS."""
    import datasets

    datasets.logging.set_verbosity_error()  # the 2 deliberately bad clips would log a warning per shard and split
    datasets.disable_progress_bars()
    result = PHASES[phase](spec)
    result["rss_self_mib"] = peak_rss_kib() / 1024
    Path(result_path).write_text(json.dumps(result))


def peak_rss_kib() -> int:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss over exec, so a phase started by a parent
    holding the generated corpus would report the parent's peak. VmHWM belongs to the new address space."""
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; an upper bound, see above


def report_pass(label: str, run: dict) -> None:
    rate = run["examples"] / run["seconds"]
    print(f"    {label}: {run['examples']:,} examples in {run['seconds']:.2f} s = {rate:,.0f} utt/s", flush=True)


def tree_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------------------
# The parent: one process per phase, sampling the RSS of its whole process tree


def run_phase(phase: str, spec: dict, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="kspon-phase-") as scratch:
        result_path = os.path.join(scratch, "result.json")
        command = [sys.executable, __file__, "--_phase", phase, "--_spec", json.dumps(spec), "--_result", result_path]
        load_before = os.getloadavg()[0]
        process = subprocess.Popen(command, env=env)
        tree_peak = wait_sampling_rss(process)
        if process.returncode != 0:
            raise RuntimeError(f"phase {phase} failed (exit {process.returncode}); its output is above")
        result = json.loads(Path(result_path).read_text())
    # Sampling can miss a short spike, the kernel's own maximum cannot; summed RSS counts shared pages per process.
    result["rss_tree_mib"] = max(tree_peak / MIB, result["rss_self_mib"])
    result["load_avg"] = [load_before, os.getloadavg()[0]]
    return result


def wait_sampling_rss(process: subprocess.Popen, interval_s: float = 0.05) -> int:
    """Wait for the process; return the peak of the summed RSS of it and all its descendants."""
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                    total += proc.memory_info().rss
        peak = max(peak, total)
        time.sleep(interval_s)
    return peak


def phase_env(workdir: Path) -> dict[str, str]:
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_CACHE": str(workdir / "hf" / "datasets"),
        "HF_MODULES_CACHE": str(workdir / "hf" / "modules"),
        "TOKENIZERS_PARALLELISM": "false",  # the tokenizer runs in forked DataLoader workers
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore:'set_vital' is deprecated:UserWarning",  # library noise
    }


def ensure_corpus(workdir: Path, num_utterances: int) -> dict:
    """Generate the corpus, or reuse one left by an earlier `--keep` run with the same size."""
    corpus, marker = workdir / "corpus", workdir / "corpus.json"
    if marker.exists() and json.loads(marker.read_text())["num_utterances"] == num_utterances:
        print(f"reusing the corpus in {corpus}", flush=True)
        return json.loads(marker.read_text())
    from kspon_dataset.sample_corpus import write_corpus

    shutil.rmtree(corpus, ignore_errors=True)
    print(f"writing a {num_utterances:,}-utterance corpus (tone voice) to {corpus} ...", flush=True)
    start = time.perf_counter()
    summary = write_corpus(corpus, num_utterances=num_utterances, voice="tone", seed=0)
    info = {
        "num_utterances": num_utterances,
        "seconds": time.perf_counter() - start,
        "audio_s": summary.audio_seconds,
        "zip_bytes": summary.total_bytes,
        "per_split": summary.per_split,
    }
    print(f"  {summary.format()}\n  took {info['seconds']:.1f} s", flush=True)
    marker.write_text(json.dumps(info))
    return info


def run_dataset_phases(corpus: str, workdir: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    results = {}
    print("[stream] load_dataset(streaming=True)['train'], 1 process, audio decoded", flush=True)
    results["stream"] = run_phase("stream", {"corpus": corpus, "passes": args.passes}, env)
    print("[stream_dataloader] the same through torch DataLoader, 2 workers, batch 16", flush=True)
    spec = {"corpus": corpus, "passes": args.passes, "workers": 2}
    results["stream_dataloader"] = run_phase("stream_dataloader", spec, env)
    for num_proc in (1, 2):
        cache_dir = workdir / f"prepared_np{num_proc}"
        print(f"[prepare] download_and_prepare(num_proc={num_proc}) into a fresh cache {cache_dir}", flush=True)
        spec = {"corpus": corpus, "num_proc": num_proc, "cache_dir": str(cache_dir)}
        results[f"prepare_np{num_proc}"] = run_phase("prepare", spec, env)
        print(f"    {results[f'prepare_np{num_proc}']['seconds']:.1f} s", flush=True)
        remove_unless(cache_dir, args.keep)
    print("[unzip] the blog route: extractall, one WAV per utterance, JSON manifests", flush=True)
    results["unzip"] = run_phase("unzip", {"corpus": corpus, "out_dir": str(workdir / "unzipped")}, env)
    print(f"    {results['unzip']['seconds']:.1f} s", flush=True)
    remove_unless(workdir / "unzipped", args.keep)
    print("[inflate] floor for any route from the ZIPs: read every member, keep nothing", flush=True)
    results["inflate"] = run_phase("inflate", {"corpus": corpus}, env)
    print(f"    {results['inflate']['seconds']:.1f} s", flush=True)
    return results


def run_loader_phases(corpus: str, env: dict[str, str], args: argparse.Namespace) -> list[dict]:
    from kspon_whisper.convert_ct2 import DEFAULT_OUTPUT_DIR, build_offline_whisper

    model_dir = str(build_offline_whisper(DEFAULT_OUTPUT_DIR))
    runs = []
    for audio_mode, n_mels in (("features", 80), ("features", 128), ("waveform", 80)):
        for workers in args.loader_workers:
            label = f"{audio_mode}, {n_mels if audio_mode == 'features' else 'no'} mels, {workers} workers"
            print(f"[loader] {label}", flush=True)
            spec = {
                "corpus": corpus,
                "model_dir": model_dir,
                "audio_mode": audio_mode,
                "n_mels": n_mels,
                "workers": workers,
                "warmup_batches": max(2, workers),
                "timed_batches": args.loader_batches,
            }
            runs.append(spec | run_phase("loader", spec, env))
    return runs


def remove_unless(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Report


def rate(run: dict) -> float:
    return run["examples"] / run["seconds"]


def median_run(runs: list[dict]) -> dict:
    """The pass with the median time (the lower median for an even count), with how many passes it came from."""
    seconds = statistics.median_low([run["seconds"] for run in runs])
    return next(run for run in runs if run["seconds"] == seconds) | {"of": len(runs)}


def dataset_rows(results: dict) -> list[list[str]]:
    stream, dataloader = results["stream"], results["stream_dataloader"]
    warm, loaded = median_run(stream["warm"]), median_run(dataloader["warm"])
    cores = os.cpu_count() or 1
    rows = [
        dataset_row("streaming, 1 process, first pass (builds ZIP index, lazy imports)", stream["cold"], 1, stream),
        dataset_row(f"streaming, 1 process, median of {warm['of']} warm passes", warm, 1, stream),
        dataset_row(
            f"streaming, DataLoader 2 workers x batch 16, whole epoch incl. worker start, median of {loaded['of']}",
            loaded,
            min(2, cores),
            dataloader,
        ),
        dataset_row(
            "the same epoch from its first batch on (workers running)", loaded["steady"], min(2, cores), dataloader
        ),
    ]
    for num_proc in (1, 2):
        run = results[f"prepare_np{num_proc}"]
        label = f"download_and_prepare(num_proc={num_proc}), all splits, {run['bytes'] / MIB:,.0f} MiB Arrow"
        rows.append(dataset_row(label, run, min(num_proc, cores), run))
    unzip = results["unzip"]
    label = (
        f"blog route: extract {unzip['extract_s']:.1f} s + WAVs {unzip['wav_s']:.1f} s + manifests "
        f"{unzip['manifest_s']:.1f} s, {unzip['bytes'] / MIB:,.0f} MiB on disk"
    )
    rows.append(dataset_row(label, unzip, 1, unzip))
    inflate = results["inflate"]
    label = f"floor: inflate all {inflate['examples']:,} ZIP members ({inflate['bytes'] / MIB:,.0f} MiB), no output"
    rows.append(dataset_row(label, inflate | {"examples": unzip["examples"]}, 1, inflate))
    return rows


def dataset_row(label: str, run: dict, cores: int, phase: dict) -> list[str]:
    audio = f"{run['audio_s'] / run['seconds']:,.0f}" if "audio_s" in run else "-"
    return [
        label,
        f"{run['examples']:,}",
        f"{run['seconds']:.2f}",
        f"{rate(run):,.0f}",
        f"{rate(run) / cores:,.0f}",
        audio,
        f"{phase['rss_self_mib']:,.0f} / {phase['rss_tree_mib']:,.0f}",
    ]


def loader_rows(runs: list[dict]) -> list[list[str]]:
    return [
        [
            run["audio_mode"],
            str(run["n_mels"]) if run["audio_mode"] == "features" else "- (on GPU)",
            str(run["workers"]),
            f"{run['examples']:,} ({run['batches']} batches)",
            f"{rate(run):,.1f}",
            f"{rate(run) / max(run['workers'], 1):,.1f}",
            f"{run['startup_s']:.1f}",
            f"{run['rss_self_mib']:,.0f} / {run['rss_tree_mib']:,.0f}",
        ]
        for run in runs
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def summary_lines(results: dict) -> list[str]:
    stream, unzip, inflate = results["stream"], results["unzip"], results["inflate"]
    warm, loaded = median_run(stream["warm"]), median_run(results["stream_dataloader"]["warm"])
    cores, steady = min(2, os.cpu_count() or 1), rate(loaded["steady"])
    lines = [
        (
            f"- Streaming, 1 process: **{rate(warm):,.0f} utt/s per core** (goal >= 1,000). Through 2 DataLoader "
            f"workers: {rate(loaded):,.0f} utt/s over a whole epoch ({rate(loaded) / cores:,.0f} per core), "
            f"{steady:,.0f} utt/s ({steady / cores:,.0f} per core) once the workers run."
        )
    ]
    for num_proc in (1, 2):
        prepare = results[f"prepare_np{num_proc}"]
        lines.append(
            f"- Blog route / prepared route (num_proc={num_proc}): {unzip['seconds']:.1f} s / "
            f"{prepare['seconds']:.1f} s = **{unzip['seconds'] / prepare['seconds']:.2f}x** (goal >= 10x)."
        )
    ceiling = unzip["seconds"] / inflate["seconds"]
    lines.append(
        f"- Any route from the ZIPs must at least inflate them: {inflate['seconds']:.1f} s in one process, so on this "
        f"corpus a single-process prepared route cannot make the ratio exceed {ceiling:.1f}x (two processes at best "
        "double that)."
    )
    first_example = stream["setup_s"] + stream["cold"]["first_s"]
    lines.append(
        f"- Streaming needs no preparation at all: load_dataset returned in {stream['setup_s']:.1f} s and the first "
        f"decoded example arrived {first_example:.1f} s after the call; the blog route needs {unzip['seconds']:.1f} s "
        "before its first."
    )
    return lines


def machine_lines(results: dict, command: str) -> list[str]:
    corpus, loads = results["corpus"], load_averages(results)
    load_text = (
        f"shared with other engineers' test runs: the 1-minute load average read {min(loads):.1f} to "
        f"{max(loads):.1f} at the starts and ends of the phases (this run itself keeps 1 to 2 cores busy)."
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("datasets", "torch", "transformers", "torchdata", "numpy", "pyarrow", "soundfile")
    )
    corpus_text = (
        f"{corpus['num_utterances']:,} utterances, {corpus['audio_s'] / 3600:.1f} h of tone audio "
        f"({corpus['audio_s'] / corpus['num_utterances']:.2f} s per clip; real KsponSpeech averages ~5.6 s), "
        f"{corpus['zip_bytes'] / MIB:,.0f} MiB of ZIPs, generated in {corpus['seconds']:.0f} s"
    )
    return [
        f"- Command: `{command}`",
        (
            f"- Machine: {os.cpu_count()} cores ({cpu_model()}), {psutil.virtual_memory().total / 2**30:.1f} GiB "
            f"RAM, {platform.platform()}; {load_text}"
        ),
        f"- Versions: Python {platform.python_version()}, {versions}.",
        f"- Corpus: {corpus_text}. Every route reads the ZIPs from the page cache; no route fsyncs what it writes.",
    ]


def load_averages(results: dict) -> list[float]:
    phases = [*results.get("dataset", {}).values(), *results.get("loader", [])]
    return [load for phase in phases for load in phase["load_avg"]] or [os.getloadavg()[0]]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


DATASET_HEADER = ["phase", "examples timed", "s", "utt/s", "utt/s per core", "audio s/s", "peak RSS MiB main / all"]
LOADER_HEADER = [
    "audio_mode",
    "mels",
    "workers",
    "samples timed",
    "samples/s",
    "per worker",
    "startup s",
    "peak RSS MiB main / all",
]


def format_section(results: dict, command: str) -> str:
    parts = [SECTION, "", *machine_lines(results, command), ""]
    if "dataset" in results:
        parts += ["### Loading script", "", markdown_table(DATASET_HEADER, dataset_rows(results["dataset"])), ""]
        parts += [*summary_lines(results["dataset"]), ""]
    if "loader" in results:
        parts += ["### Training DataLoader (`--mode loader`)", ""]
        parts += [markdown_table(LOADER_HEADER, loader_rows(results["loader"])), ""]
        parts.append(
            "The training order (a per-epoch permutation), batch 16, as `Trainer` builds it; samples/s over the "
            "timed batches after warm-up batches that absorb worker start-up ('startup s' is the time to those). "
            "N = os.cpu_count() = "
            f"{os.cpu_count()} workers.\n"
        )
    parts.append(
        "Peak RSS: 'main' is the phase process's own maximum (VmHWM); 'all' adds its workers, sampled every "
        "50 ms and summed, so pages a forked worker shares with its parent count twice."
    )
    return "\n".join(parts) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the section of RESULTS.md headed by the section's first line (up to the next `## ` heading), or
    append it; the other sections stay as they are. Shared with the other benchmarks."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


# --------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--num_utterances", type=int, default=20_000, help="corpus size (the generator stops ~30k)")
    parser.add_argument("--mode", choices=("all", "dataset", "loader"), default="all")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir; a rerun reuses its corpus")
    parser.add_argument("--passes", type=int, default=3, help="timed streaming passes (plus one cold pass)")
    parser.add_argument("--loader_batches", type=int, default=48, help="timed batches per loader configuration")
    parser.add_argument("--loader_workers", type=_int_list, default=sorted({1, 2, os.cpu_count() or 1}))
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    parser.add_argument("--results_file", type=Path, default=RESULTS_FILE)
    parser.add_argument("--json", type=Path, help="also write every measured number here")
    for hidden in ("--_phase", "--_spec", "--_result"):  # how the parent starts a phase process
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",")})


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._phase:
        run_child(args._phase, json.loads(args._spec), args._result)
        return None
    created = args.workdir is None or not args.workdir.exists()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="kspon-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = run_all(args, workdir, phase_env(workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir if created else workdir / "hf", ignore_errors=True)
            if not created:
                shutil.rmtree(workdir / "corpus", ignore_errors=True)
                (workdir / "corpus.json").unlink(missing_ok=True)
    command = "python benchmarks/data_pipeline.py " + shlex.join(argv)
    section = format_section(results, command)
    print("\n" + section)
    if args.write_results:
        write_section(args.results_file, section)
        print(f"updated the '{SECTION}' section of {args.results_file}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def run_all(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    results = {"corpus": ensure_corpus(workdir, args.num_utterances)}
    corpus = str(workdir / "corpus")
    if args.mode in ("all", "dataset"):
        results["dataset"] = run_dataset_phases(corpus, workdir, env, args)
    if args.mode in ("all", "loader"):
        results["loader"] = run_loader_phases(corpus, env, args)
    return results


if __name__ == "__main__":
    main()
