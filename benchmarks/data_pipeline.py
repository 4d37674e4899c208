"""Data-pipeline benchmark: how fast KsponSpeech reaches the model, streamed, prepared, or unzipped the blog way.

    python benchmarks/data_pipeline.py --num_utterances 20000 --write_results   # ~10 min on 2 cores

On a synthetic corpus in AI Hub's exact ZIP layout (`kspon_dataset.sample_corpus`, tone voice) it measures the
loading script (`load_kspon`, the `KsponSpeech` builder: datasets 3.6 and 5.x alike) streaming with the audio
decoded, in one process and through a 2-worker DataLoader; `download_and_prepare` with num_proc 1 and 2; the blog
route it replaces (extract every ZIP, one WAV per utterance, JSON manifests, the blog's split) and the floor under
any route from the ZIPs; then the trainer's own DataLoader (`load_splits` -> `speech_batcher` -> `make_dataloader`,
in the training order) with log-mel in the workers (80 and 128 mels) or deferred to the GPU. The corpus at its real
size (622,545 utterances): `benchmarks/full_scale.py`.

Every phase runs in a fresh Python process, so its peak RSS is its own and no ZIP index, lazy import or page of
decoded audio carries over from the phase before. All caches live in the work dir; nothing reaches the network.
"""

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/data_pipeline.py`, the repo packages are not installed

from kspon_dataset.corpus import SAMPLE_RATE, eval_split_of, pcm_samples, utterance_split  # noqa: E402

RESULTS_FILE = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Data pipeline"
BATCH_SIZE = 16  # the trainer's per_device_batch_size default
SEED = 42  # the trainer's default seed: the same order as a real first epoch
MIB = 2**20
RSS_HEADER = "peak RSS MiB main / all"
DATASET_HEADER = ["phase", "examples timed", "s", "utt/s", "utt/s per core", "audio s/s", RSS_HEADER]
LOADER_HEADER = ["audio_mode", "mels", "workers", "samples timed", "samples/s", "per worker", "startup s", RSS_HEADER]


# --------------------------------------------------------------------------------------------------------------
# Phases: each runs in its own process (`run_child`) and returns a JSON-able dict


def audio_samples(audio) -> int:
    """Samples of a decoded `audio` value (datasets 3.x: a dict with "array"; >= 4: torchcodec's AudioDecoder), or
    of its WAV bytes where datasets does not decode (>= 4 without torchcodec: a plain {bytes, path} struct)."""
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
    """One pass over {"n", "samples"} batches, the wait for the first included; `steady` is the same pass from its
    first batch on, once DataLoader workers have started."""
    start, first_s, first_n, n, samples = time.perf_counter(), None, 0, 0, 0
    for batch in batches:
        n, samples = n + batch["n"], samples + batch["samples"]
        if first_s is None:
            first_s, first_n = time.perf_counter() - start, n
    seconds = time.perf_counter() - start
    print(f"    {n:,} examples in {seconds:.2f} s = {n / seconds:,.0f} utt/s", flush=True)
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
    seconds = time.perf_counter() - start
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    size = tree_bytes(spec["cache_dir"])
    return {"seconds": seconds, "examples": sum(splits.values()), "splits": splits, "bytes": size}


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
    """The trainer's training DataLoader, wired as `Trainer.__init__` wires it; samples/s over `timed_batches`
    after `warmup_batches` that absorb worker start-up."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperProcessor

    from kspon_whisper.data import load_splits, make_dataloader, set_epoch, speech_batcher
    from kspon_whisper.inference import LANGUAGE, TASK

    processor = WhisperProcessor.from_pretrained(spec["model_dir"])
    processor.tokenizer.set_prefix_tokens(language=LANGUAGE, task=TASK, predict_timestamps=False)
    if processor.feature_extractor.feature_size != spec["n_mels"]:  # large-v3's differs from base's only in this
        processor.feature_extractor = WhisperFeatureExtractor(feature_size=spec["n_mels"])
    config = WhisperConfig.from_pretrained(spec["model_dir"])
    batcher = speech_batcher(processor, config, log_mel_on_device=spec["audio_mode"] == "waveform")
    train = load_splits(spec["corpus"], config="spelling", split_scheme="random", streaming=True)["train"]
    order = {"rank": 0, "world_size": 1, "seed": SEED, "shuffle": True}  # one process's first training epoch
    loader = make_dataloader(train, batcher, batch_size=BATCH_SIZE, num_workers=spec["workers"], **order)
    set_epoch(loader, 0)
    start, batches = time.perf_counter(), iter(loader)
    skipped = sum(1 for _ in itertools.islice(batches, spec["warmup_batches"]))
    startup_s, start = time.perf_counter() - start, time.perf_counter()
    sizes = [len(batch["id"]) for batch in itertools.islice(batches, spec["timed_batches"])]
    seconds = time.perf_counter() - start
    print(f"    {sum(sizes):,} samples in {len(sizes)} batches, {seconds:.2f} s, after {skipped} warm-up", flush=True)
    return {"startup_s": startup_s, "batches": len(sizes), "examples": sum(sizes), "seconds": seconds}


def run_child(phase: str, spec: dict, result_path: str) -> None:
    """Entry point of a phase process: quiet libraries, run the phase, add this process's own peak RSS."""
    import datasets

    datasets.logging.set_verbosity_error()  # the 2 deliberately bad clips would log a warning per shard and split
    datasets.disable_progress_bars()
    result = globals()[f"phase_{phase}"](spec)
    # VmHWM, not getrusage: Linux carries ru_maxrss over exec, so a phase would report the peak of its parent, which
    # held the generated corpus. VmHWM belongs to the new address space.
    result["rss_self_mib"] = int(re.search(r"VmHWM:\s*(\d+)", Path("/proc/self/status").read_text())[1]) / 1024
    Path(result_path).write_text(json.dumps(result))


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
        root, tree_peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            with contextlib.suppress(psutil.Error):  # a process may exit between listing and reading: skip the sample
                tree_peak = max(tree_peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            time.sleep(0.05)
        if process.returncode != 0:
            raise RuntimeError(f"phase {phase} failed (exit {process.returncode}); its output is above")
        result = json.loads(Path(result_path).read_text())
    # Sampling can miss a short spike, the kernel's own maximum cannot; summed RSS counts shared pages per process.
    result["rss_tree_mib"] = max(tree_peak / MIB, result["rss_self_mib"])
    result["load_avg"] = [load_before, os.getloadavg()[0]]
    return result


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


def run_all(args: argparse.Namespace, workdir: Path) -> dict:
    from kspon_dataset.sample_corpus import write_corpus
    from tools.offline_whisper import DEFAULT_OUTPUT_DIR, build_offline_whisper  # tools/ is not installed

    corpus, env = workdir / "corpus", phase_env(workdir)
    print(f"writing a {args.num_utterances:,}-utterance corpus (tone voice) to {corpus} ...", flush=True)
    start = time.perf_counter()
    summary = write_corpus(corpus, num_utterances=args.num_utterances, voice="tone", seed=0)
    seconds = time.perf_counter() - start
    print(f"  {summary.format()}\n  took {seconds:.1f} s", flush=True)
    info = {"num_utterances": args.num_utterances, "seconds": seconds, "audio_s": summary.audio_seconds}
    results = {"corpus": info | {"zip_bytes": summary.total_bytes}, "dataset": {}, "loader": []}

    def run(name: str, title: str, **spec) -> dict:
        print(title, flush=True)
        return run_phase(name, {"corpus": str(corpus), **spec}, env)

    dataset = results["dataset"]
    title = "[stream] load_dataset(streaming=True)['train'], 1 process, audio decoded"
    dataset["stream"] = run("stream", title, passes=args.passes, workers=0)
    title = "[stream_dataloader] the same through torch DataLoader, 2 workers, batch 16"
    dataset["stream_dataloader"] = run("stream", title, passes=args.passes, workers=2)
    for num_proc in (1, 2):
        cache_dir = workdir / f"prepared_np{num_proc}"
        title = f"[prepare] download_and_prepare(num_proc={num_proc}) into a fresh cache {cache_dir}"
        dataset[f"prepare_np{num_proc}"] = run("prepare", title, num_proc=num_proc, cache_dir=str(cache_dir))
        shutil.rmtree(cache_dir, ignore_errors=True)
    title = "[unzip] the blog route: extractall, one WAV per utterance, JSON manifests"
    dataset["unzip"] = run("unzip", title, out_dir=str(workdir / "unzipped"))
    shutil.rmtree(workdir / "unzipped", ignore_errors=True)
    dataset["inflate"] = run("inflate", "[inflate] floor for any route from the ZIPs: read every member, keep nothing")

    model_dir = str(build_offline_whisper(DEFAULT_OUTPUT_DIR))
    modes = (("features", 80), ("features", 128), ("waveform", 80))
    for (audio_mode, n_mels), workers in itertools.product(modes, args.loader_workers):
        title = f"[loader] {audio_mode}, {n_mels if audio_mode == 'features' else 'no'} mels, {workers} workers"
        spec = {"model_dir": model_dir, "audio_mode": audio_mode, "n_mels": n_mels, "workers": workers}
        spec |= {"warmup_batches": max(2, workers), "timed_batches": args.loader_batches}
        results["loader"].append(spec | run("loader", title, **spec))
    return results


# --------------------------------------------------------------------------------------------------------------
# Report


def rate(run: dict) -> float:
    return run["examples"] / run["seconds"]


def rss(phase: dict) -> str:
    return f"{phase['rss_self_mib']:,.0f} / {phase['rss_tree_mib']:,.0f}"


def median_run(runs: list[dict]) -> dict:
    """The pass with the median time (the lower median for an even count), with how many passes it came from."""
    seconds = statistics.median_low([run["seconds"] for run in runs])
    return next(run for run in runs if run["seconds"] == seconds) | {"of": len(runs)}


def dataset_report(results: dict) -> list[str]:
    """The loading script's table, then what it means."""
    stream, dataloader, unzip, inflate = (results[k] for k in ("stream", "stream_dataloader", "unzip", "inflate"))
    warm, loaded = median_run(stream["warm"]), median_run(dataloader["warm"])
    cores, steady = min(2, os.cpu_count() or 1), loaded["steady"]
    epoch = f"streaming, DataLoader 2 workers x batch 16, whole epoch incl. worker start, median of {loaded['of']}"
    rows = [  # (label, timed run, cores it may use, the phase whose RSS it reports)
        ("streaming, 1 process, first pass (builds ZIP index, lazy imports)", stream["cold"], 1, stream),
        (f"streaming, 1 process, median of {warm['of']} warm passes", warm, 1, stream),
        (epoch, loaded, cores, dataloader),
        ("the same epoch from its first batch on (workers running)", steady, cores, dataloader),
    ]
    for num_proc in (1, 2):
        run = results[f"prepare_np{num_proc}"]
        label = f"download_and_prepare(num_proc={num_proc}), all splits, {run['bytes'] / MIB:,.0f} MiB Arrow"
        rows.append((label, run, min(num_proc, cores), run))
    label = f"blog route: extract {unzip['extract_s']:.1f} s + WAVs {unzip['wav_s']:.1f} s + manifests "
    rows.append((label + f"{unzip['manifest_s']:.1f} s, {unzip['bytes'] / MIB:,.0f} MiB on disk", unzip, 1, unzip))
    label = f"floor: inflate all {inflate['examples']:,} ZIP members ({inflate['bytes'] / MIB:,.0f} MiB), no output"
    rows.append((label, inflate | {"examples": unzip["examples"]}, 1, inflate))
    table = []
    for label, run, n_cores, phase in rows:
        audio = f"{run['audio_s'] / run['seconds']:,.0f}" if "audio_s" in run else "-"
        timed = [f"{run['examples']:,}", f"{run['seconds']:.2f}", f"{rate(run):,.0f}", f"{rate(run) / n_cores:,.0f}"]
        table.append([label, *timed, audio, rss(phase)])
    lines = [markdown_table(DATASET_HEADER, table), ""]
    lines.append(
        f"- Streaming, 1 process: **{rate(warm):,.0f} utt/s per core** (goal >= 1,000). Through 2 DataLoader "
        f"workers: {rate(loaded):,.0f} utt/s over a whole epoch ({rate(loaded) / cores:,.0f} per core), "
        f"{rate(steady):,.0f} utt/s ({rate(steady) / cores:,.0f} per core) once the workers run."
    )
    for num_proc in (1, 2):
        prepare_s = results[f"prepare_np{num_proc}"]["seconds"]
        lines.append(
            f"- Blog route / prepared route (num_proc={num_proc}): {unzip['seconds']:.1f} s / {prepare_s:.1f} s = "
            f"**{unzip['seconds'] / prepare_s:.2f}x** (goal >= 10x)."
        )
    lines.append(
        f"- Any route from the ZIPs must at least inflate them: {inflate['seconds']:.1f} s in one process, so on this "
        "corpus a single-process prepared route cannot make the ratio exceed "
        f"{unzip['seconds'] / inflate['seconds']:.1f}x (two processes at best double that)."
    )
    lines.append(
        f"- Streaming needs no preparation at all: load_dataset returned in {stream['setup_s']:.1f} s and the first "
        f"decoded example arrived {stream['setup_s'] + stream['cold']['first_s']:.1f} s after the call; the blog "
        f"route needs {unzip['seconds']:.1f} s before its first."
    )
    return lines


def loader_table(runs: list[dict]) -> str:
    rows = []
    for run in runs:
        mels = str(run["n_mels"]) if run["audio_mode"] == "features" else "- (on GPU)"
        timed = [f"{run['examples']:,} ({run['batches']} batches)", f"{rate(run):,.1f}"]
        timed += [f"{rate(run) / max(run['workers'], 1):,.1f}", f"{run['startup_s']:.1f}"]
        rows.append([run["audio_mode"], mels, str(run["workers"]), *timed, rss(run)])
    return markdown_table(LOADER_HEADER, rows)


def machine_lines(results: dict, command: str) -> list[str]:
    corpus = results["corpus"]
    loads = [load for phase in [*results["dataset"].values(), *results["loader"]] for load in phase["load_avg"]]
    names = ("datasets", "torch", "transformers", "torchdata", "numpy", "pyarrow", "soundfile")
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)
    machine = f"{os.cpu_count()} cores ({cpu_model()}), {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    lines = [f"- Command: `{command}`"]
    lines.append(
        f"- Machine: {machine}, {platform.platform()}; shared with other engineers' test runs: the 1-minute load "
        f"average read {min(loads):.1f} to {max(loads):.1f} at the starts and ends of the phases (this run itself "
        "keeps 1 to 2 cores busy)."
    )
    lines.append(f"- Versions: Python {platform.python_version()}, {versions}.")
    lines.append(
        f"- Corpus: {corpus['num_utterances']:,} utterances, {corpus['audio_s'] / 3600:.1f} h of tone audio "
        f"({corpus['audio_s'] / corpus['num_utterances']:.2f} s per clip; real KsponSpeech averages ~5.6 s), "
        f"{corpus['zip_bytes'] / MIB:,.0f} MiB of ZIPs, generated in {corpus['seconds']:.0f} s. Every route reads "
        "the ZIPs from the page cache; no route fsyncs what it writes."
    )
    return lines


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_section(results: dict, command: str) -> str:
    parts = [SECTION, "", *machine_lines(results, command), "", "### Loading script", ""]
    parts += [*dataset_report(results["dataset"]), "", "### Training DataLoader", "", loader_table(results["loader"])]
    parts.append(
        "\nThe training order (a per-epoch permutation), batch 16, as `Trainer` builds it; samples/s over the "
        "timed batches after warm-up batches that absorb worker start-up ('startup s' is the time to those). "
        f"N = os.cpu_count() = {os.cpu_count()} workers.\n"
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


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--num_utterances", type=int, default=20_000, help="corpus size")
    parser.add_argument("--workdir", type=Path, help="scratch folder, emptied afterwards (default: a temporary one)")
    parser.add_argument("--passes", type=int, default=3, help="timed streaming passes (plus one cold pass)")
    parser.add_argument("--loader_batches", type=int, default=48, help="timed batches per loader configuration")
    workers = sorted({1, 2, os.cpu_count() or 1})  # the trainer's DataLoader is timed with each count
    parser.add_argument("--loader_workers", type=lambda s: sorted({int(n) for n in s.split(",")}), default=workers)
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    parser.add_argument("--results_file", type=Path, default=RESULTS_FILE)
    for hidden in ("--_phase", "--_spec", "--_result"):  # how the parent starts a phase process
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._phase:
        run_child(args._phase, json.loads(args._spec), args._result)
        return None
    created = args.workdir is None or not args.workdir.exists()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="kspon-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = run_all(args, workdir)
    finally:  # a folder the user gave keeps what it held before
        for path in [workdir] if created else [workdir / "hf", workdir / "corpus"]:
            shutil.rmtree(path, ignore_errors=True)
    section = format_section(results, "python benchmarks/data_pipeline.py " + shlex.join(argv))
    print("\n" + section)
    if args.write_results:
        write_section(args.results_file, section)
        print(f"updated the '{SECTION}' section of {args.results_file}")
    return results


if __name__ == "__main__":
    main()
