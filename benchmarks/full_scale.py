"""Full-scale check of the data path: KsponSpeech's real member count, measured the way the trainer reads it.

python benchmarks/full_scale.py --write_results                        # 622,545 utterances, ~15 min on 2 cores
python benchmarks/full_scale.py --folders 12 --per_folder 40 --eval_utterances 60 --examples_per_rank 0  # ~1 min
"""

import itertools
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/full_scale.py`

from benchmarks import harness
from tools.full_corpus import ensure_corpus

SECTION = "## Full scale"
BATCH_SIZE, SEED, TRAINER_WORKERS = 16, 42, 4  # the trainer's per_device_batch_size, seed and num_workers defaults


def count_rows(rows: list[dict]) -> dict:
    """A collate_fn with no batching work: ids, and what `PassCounter` reads from a batch."""
    kept = [row["id"] for row in rows if "skip" not in row]
    return {"id": kept, "num_labels_too_long": 0, "skipped": Counter(row["skip"] for row in rows if "skip" in row)}


def train_loader(split, rank: int, world_size: int, workers: int, shuffle: bool = True):
    from kspon_whisper.data import make_dataloader, set_epoch

    order = {"rank": rank, "world_size": world_size, "seed": SEED, "shuffle": shuffle}
    loader = make_dataloader(split, count_rows, batch_size=BATCH_SIZE, num_workers=workers, **order)
    set_epoch(loader, 0)
    return loader


def load(corpus: str) -> dict:
    from kspon_whisper.data import load_splits

    return load_splits(corpus, form="spelling", split_scheme="random", streaming=True)


def phase_index(spec: dict) -> dict:
    from kspon_dataset.corpus import find_sources, index_source

    before, start = harness.proc_mib(), time.perf_counter()
    indexes = [index_source(source) for source in find_sources(spec["corpus"]).train]
    seconds, after = time.perf_counter() - start, harness.proc_mib()
    arrays = sum(index.records.nbytes for index in indexes) / harness.MIB
    return {"seconds": seconds, "grown": after - before, "peak": harness.proc_mib("VmHWM"), "index_mib": arrays}


def phase_first_batch(spec: dict) -> dict:
    import psutil

    start = time.perf_counter()
    from kspon_whisper.data import load_splits  # noqa: F401 (timed: the imports a training run starts with)

    imported = time.perf_counter()
    splits = load(spec["corpus"])
    loaded = time.perf_counter()
    batches = iter(train_loader(splits["train"], 0, 1, TRAINER_WORKERS))  # held: dropping it stops the workers
    next(batches)
    end = time.perf_counter()
    workers = [child.memory_full_info().uss / harness.MIB for child in psutil.Process().children(recursive=True)]
    times = {"import_s": imported - start, "load_splits_s": loaded - imported, "first_batch_s": end - loaded}
    return {**times, "seconds": end - start, "workers_uss": workers}


def phase_validation_pass(spec: dict) -> dict:
    from kspon_whisper.data import PassCounter

    one_process = SimpleNamespace(device="cpu", reduce=lambda tensor, reduction: tensor)  # for PassCounter.line
    split = load(spec["corpus"])["validation"]
    counter, examples, rss, start = PassCounter(split), 0, [(0, harness.proc_mib())], time.perf_counter()
    for batch in counter.counted(train_loader(split, 0, 1, 0, shuffle=False)):
        examples += len(batch["id"])
        if examples // 10_000 > (examples - len(batch["id"])) // 10_000:
            rss.append((examples, harness.proc_mib()))
    seconds, (line, _) = time.perf_counter() - start, counter.line("validation", one_process)
    return {"examples": examples, "seconds": seconds, "rss": rss, "line": line}


def phase_loaders(spec: dict) -> dict:
    """The training loader at world size 1 and 8, reads counted in every process by wrapping `read_file`."""
    import multiprocessing

    from kspon_dataset import corpus

    train = load(spec["corpus"])["train"]
    reads = multiprocessing.get_context("fork").Value("q", 0)  # forked workers inherit the wrapper and the counter
    read_file = corpus.read_file

    def counting_read_file(source, folder, uid, ext, record):
        if ext == "pcm":
            with reads.get_lock():
                reads.value += 1
        return read_file(source, folder, uid, ext, record)

    corpus.read_file = counting_read_file
    limit, workers = spec["examples_per_rank"], (0 if spec["examples_per_rank"] else 2)
    result = {}
    for world_size in (1, 8):
        ranks = []
        for rank in range(world_size):
            loader = train_loader(train, rank, world_size, workers)
            before, start = reads.value, time.perf_counter()
            batches = [b["id"] for b in itertools.islice(loader, math.ceil(limit / BATCH_SIZE) if limit else None)]
            seconds, kept = time.perf_counter() - start, sum(map(len, batches))
            ranks.append({"kept": kept, "reads": reads.value - before, "seconds": seconds})
            result.setdefault("batches", batches)  # world size 1's, for batch diversity
        result[f"world_{world_size}"] = ranks
    return result


def phase_splits(spec: dict) -> dict:
    from kspon_dataset import KsponSpeech
    from kspon_dataset.corpus import index_source

    result = {}
    for scheme in ("random", "random_utterance"):
        selections = KsponSpeech(config_name="spelling", data_dir=spec["corpus"], split_scheme=scheme).selections()
        homes: dict[str, set[str]] = {}
        for split in ("train", "validation", "test"):
            for s, source in enumerate(selections[split].sources if split in selections else ()):
                folders = index_source(source).folders
                for f in np.unique(selections[split].folder[selections[split].source == s]):
                    homes.setdefault(folders[f], set()).add(split)
        result[scheme] = {
            "seen": {split: selection.tally.get("seen", 0) for split, selection in selections.items()},
            "straddling": f"{sum(len(splits) > 1 for splits in homes.values())} of {len(homes)}",
        }
    return result


def format_section(after: dict, info: dict, argv: list[str] | None) -> str:
    cold, warm, loaders, splits = after["index_cold"], after["index_warm"], after["loaders"], after["splits"]
    first = {label: after[f"first_batch_{label}"] for label in ("cold", "warm")}
    ranks = {ws: loaders[f"world_{ws}"] for ws in (1, 8)}
    rate = {ws: sum(r["kept"] for r in ranks[ws]) / max(1e-9, sum(r["seconds"] for r in ranks[ws])) for ws in (1, 8)}
    reads = sum(r["reads"] for r in ranks[8]) / max(1, sum(r["kept"] for r in ranks[8]))
    # batch diversity: distinct folders per full batch, and the share of within-batch pairs with adjacent ids
    full = [[int(uid[-6:]) for uid in batch] for batch in loaders["batches"] if len(batch) == BATCH_SIZE]
    pairs = [(a, b) for batch in full for a, b in itertools.combinations(batch, 2)]
    folders = np.mean([len({(n - 1) // 1000 for n in batch}) for batch in full]) if full else 0.0
    adjacent = sum(abs(a - b) == 1 for a, b in pairs) / max(1, len(pairs))
    uss = first["warm"]["workers_uss"]

    def shares(scheme: str) -> str:
        seen = [splits[scheme]["seen"].get(split, 0) for split in ("train", "validation", "test")]
        return " / ".join(f"{n / max(1, sum(seen)):.1%}" for n in seen)

    parts = "{import_s:.1f} / {load_splits_s:.1f} / {first_batch_s:.1f}".format(**first["warm"])
    rows = [
        ["index the five training ZIPs, s per process",
         f"{cold['seconds']:.1f} cold, {warm['seconds']:.2f} memory-mapped", "-"],
        ["RSS the index adds to a process, MiB",
         f"{cold['grown']:,.0f} cold, {warm['grown']:,.0f} memory-mapped ({cold['index_mib']:.0f} MiB of arrays)",
         "<= 150"],
        ["peak RSS of that process, MiB", f"{cold['peak']:,.0f} cold, {warm['peak']:,.0f} memory-mapped", "-"],
        ["first batch of the training loader in a fresh process, s", "{:.1f} cold, {:.1f} warm".format(
            first["cold"]["seconds"], first["warm"]["seconds"]), "< 30"],
        ["  of which imports / splits / until the first batch, s (warm)", parts, "-"],
        [f"memory of each of the {TRAINER_WORKERS} workers (USS, MiB) at the first batch",
         f"{np.mean(uss):,.0f} each ({len(uss)} workers)" if uss else "-", "-"],
        ["audio reads per kept example at world size 8", f"{reads:.2f}", "1.00"],
        ["kept examples/s per rank, world size 1 / 8", f"{rate[1]:,.0f} / {rate[8]:,.0f}", "equal"],
        ["distinct folders in a batch of 16", f"{folders:.1f}", ">= 12"],
        ["within-batch pairs with adjacent ids", f"{adjacent:.2%}", "< 1 %"],
        ["train / validation / test share of utterances", shares("random"), "80 / 10 / 10, +-1 point"],
        ["folders with utterances in more than one of train / validation / test", splits["random"]["straddling"], "0"],
        ['the same two with `split_scheme="random_utterance"` (the split before)',
         f"{shares('random_utterance')}; {splits['random_utterance']['straddling']}", "-"],
    ]  # fmt: skip
    manifest, validation = info["manifest"], after["validation_pass"]
    rss = ", ".join(f"{n // 1000}k: {mib:,.0f}" for n, mib in validation["rss"])
    table = harness.markdown_table(["measure", f"after ({harness.git_commit()})", "target"], rows)
    return (
        harness.section_head(SECTION, __file__, argv, "numpy")
        + f"- Corpus: {sum(manifest['folders'].values()):,} training utterances in {len(manifest['folders'])} folders "
        f"across the five ZIPs ({', '.join(f'{n:,}' for n in manifest['zip_members'].values())} entries per ZIP, eval "
        f"last), {sum(manifest['eval'].values()):,} eval, {manifest['audio_hours']:,.0f} h of zero-valued audio, "
        f"{info['zip_bytes'] / harness.MIB:,.0f} MiB of ZIPs, written in {info['seconds']:.0f} s; "
        f"{len(manifest['too_short']):,} clips under 0.5 s, {len(manifest['too_long']):,} over 30 s, "
        f"{len(manifest['duplicated'])} names stored twice.\n\n{table}\n\n"
        f"- Streamed validation pass (one process, no workers): {validation['examples']:,} examples in "
        f"{validation['seconds']:.0f} s; RSS MiB at each 10k examples: {rss}; `{validation['line']}`.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = harness.arguments(__doc__, SECTION)
    parser.add_argument("--folders", type=int, default=623, help="training folders (the real corpus has 623)")
    parser.add_argument("--per_folder", type=int, default=1000, help="utterances per folder (the last one: 54.5 %%)")
    parser.add_argument("--eval_utterances", type=int, default=6000, help="eval_clean + eval_other")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kspon_full_scale")
    help = "examples each rank reads, in one process; 0: its whole part, through 2 workers per rank"
    parser.add_argument("--examples_per_rank", type=int, default=4000, help=help)
    parser.add_argument("--json", type=Path, help="also write every measured number here")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    env = harness.offline_env(workdir, KSPON_INDEX_CACHE=str(workdir / "index_cache"))
    info = ensure_corpus(workdir, args.folders, args.per_folder, args.eval_utterances)  # kept for the next run
    spec, after = {"corpus": str(workdir / "corpus"), "examples_per_rank": args.examples_per_rank}, {}
    runs = [(phase, label) for phase in ("index", "first_batch") for label in ("_cold", "_warm")]
    for phase, label in [*runs, ("validation_pass", ""), ("loaders", ""), ("splits", "")]:
        if label == "_cold":
            shutil.rmtree(workdir / "index_cache", ignore_errors=True)
        print(f"[{phase}{label}]", flush=True)
        after[phase + label] = harness.run_fresh("full_scale", phase, spec, env, timeout_s=1200)
    harness.publish(format_section(after, info, argv), args.write_results)
    if args.json:
        args.json.write_text(json.dumps({"after": after, "corpus": info}, indent=2))


if __name__ == "__main__":
    main()
