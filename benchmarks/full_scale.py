"""Full-scale check of the data path: KsponSpeech's real member count, measured the way the trainer reads it.

    python benchmarks/full_scale.py --write_results                        # 622,545 utterances, ~15 min on 2 cores
    python benchmarks/full_scale.py --folders 12 --per_folder 40 --eval_utterances 60 --examples_per_rank 0  # ~1 min

The corpus is written once into the work dir (reused by later runs of the same shape): five training ZIPs holding 623
folders of 1,000 utterances (the last one 545) where AI Hub puts them, the eval ZIP (6,000) and the scripts ZIP.
Audio is zeros of realistic lengths (log-normal around 4.5 s, a few clips under 0.5 s and over 30 s); zeros deflate
~1,000:1, so the corpus is ~350 MB. Three names are stored twice, the second copy longer. Each training ZIP has over
65,535 entries (a ZIP64 end record) and gives its second half of members ZIP64 offsets, as the ~14 GB archives do.

Each measurement runs in a fresh process (`harness.run_fresh`): index time and memory (cold, then memory-mapped), the
trainer's first batch, one streamed pass over validation (RSS every 10k examples), the training loader at world size
1 and 8 (audio reads per kept example, counted by wrapping `read_file`), batch diversity, split shares, and every
split's counts against what the generator wrote. A failed check fails the command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/full_scale.py`, the repo packages need not be installed

from benchmarks import harness  # noqa: E402

SECTION = "## Full scale"
MIB = 2**20
BATCH_SIZE, SEED, TRAINER_WORKERS = 16, 42, 4  # the trainer's per_device_batch_size, seed and num_workers defaults
REAL_LAST_FOLDERS = (124, 248, 372, 496, 623)  # last folder of KsponSpeech_01.zip ... _05.zip
LAST_FOLDER_SHARE = 0.545  # folder 0623 holds 545 utterances
DEV_FOLDERS = ("KsponSpeech_0621", "KsponSpeech_0622", "KsponSpeech_0623")
SHORT_SHARE, LONG_SHARE = 0.002, 0.0005  # clips the 0.5-30 s filter must drop
SCHEMES = ("random", "official", "random_utterance")

# A minimal ZIP writer: zipfile would deflate the same zeros 622,545 times, and cannot give small offsets ZIP64 form.
_LOCAL, _CENTRAL, _EOCD = struct.Struct("<4s5H3I2H"), struct.Struct("<4s6H3I5HII"), struct.Struct("<4s4H2IH")
_ZIP64_EOCD, _ZIP64_LOCATOR = struct.Struct("<4sQ2H2I4Q"), struct.Struct("<4sIQI")
_DATE, _U32, _U16 = (2018 - 1980) << 9 | 7 << 5 | 1, 0xFFFFFFFF, 0xFFFF  # 2018-07-01


class ZipWriter:
    """Members written from precomputed deflate streams; ZIP64 end records whenever a count or offset needs them."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close(), after the central directory)
        self.central, self.buffer, self.offset, self.count = bytearray(), bytearray(), 0, 0

    def add(self, name: str, data: bytes, crc: int, size: int, method: int = 8, zip64_offset: bool = False) -> None:
        raw, extra = name.encode(), struct.pack("<HHQ", 1, 8, self.offset) if zip64_offset else b""
        self.buffer += _LOCAL.pack(b"PK\x03\x04", 20, 0, method, 0, _DATE, crc, len(data), size, len(raw), 0)
        self.buffer += raw + data
        attributes = (0o40755 << 16 | 0x10) if name.endswith("/") else 0o644 << 16
        version, offset = (45, _U32) if zip64_offset else (20, self.offset)
        header = (b"PK\x01\x02", 0x031E, version, 0, method, 0, _DATE, crc, len(data), size, len(raw), len(extra))
        self.central += _CENTRAL.pack(*header, 0, 0, 0, attributes, offset) + raw + extra
        self.offset += _LOCAL.size + len(raw) + len(data)
        self.count += 1
        if len(self.buffer) > 1 << 22:
            self.file.write(self.buffer)
            self.buffer.clear()

    def close(self) -> None:
        self.file.write(self.buffer + self.central)
        size, count = len(self.central), min(self.count, _U16)
        if self.count >= _U16 or self.offset >= _U32:
            zip64 = (b"PK\x06\x06", 44, 45, 45, 0, 0, self.count, self.count, size, self.offset)
            self.file.write(_ZIP64_EOCD.pack(*zip64) + _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, self.offset + size, 1))
        self.file.write(_EOCD.pack(b"PK\x05\x06", 0, 0, count, count, size, min(self.offset, _U32), 0))
        self.file.close()


def deflated(data: bytes | int, cache: dict = {}) -> tuple[bytes, int, int]:  # noqa: B006 (the cache is the point)
    """(deflate stream, CRC, size) of `data`, or of that many zero bytes, computed once per distinct member."""
    if data not in cache:
        raw, deflater = bytes(data) if isinstance(data, int) else data, zlib.compressobj(9, zlib.DEFLATED, -15)
        cache[data] = deflater.compress(raw) + deflater.flush(), zlib.crc32(raw), len(raw)
    return cache[data]


def plan_durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds per clip in 10 ms steps: log-normal around 4.5 s, SHORT_SHARE under 0.5 s, LONG_SHARE over 30 s."""
    seconds = np.clip(rng.lognormal(math.log(4.5), 0.45, n), 0.6, 29.5)
    short = rng.choice(n, max(2, round(SHORT_SHARE * n)), replace=False)
    seconds[short] = rng.uniform(0.1, 0.45, len(short))
    long = rng.choice(np.setdiff1d(np.arange(n), short), max(2, round(LONG_SHARE * n)), replace=False)
    seconds[long] = rng.uniform(30.5, 45.0, len(long))
    return np.round(seconds, 2)


def zip_of_folder(folder: int, folders: int) -> tuple[int, bool]:
    """KsponSpeech_0K.zip of a folder (the real ranges at 623 folders, scaled for fewer), and whether the folder
    lies in the second half of its archive, where a ~14 GB archive's offsets pass 4 GiB."""
    lasts = [0, *(round(last * folders / 623) for last in REAL_LAST_FOLDERS)]
    k = next(k for k in range(1, 6) if folder <= lasts[k])
    return k, folder > (lasts[k - 1] + lasts[k]) / 2


def write_full_corpus(out: Path, folders: int, per_folder: int, eval_utterances: int, seed: int = 0) -> dict:
    """Write the whole layout and return its manifest: per-folder counts, filtered and duplicated ids, eval sizes."""
    from kspon_dataset.normalize import normalize_transcript
    from kspon_dataset.sample_corpus import SENTENCE_BANK

    if folders < 10 or not 1 <= per_folder <= 1000:
        raise ValueError("need --folders >= 10 (one block of 10 per 8:1:1) and 1 <= --per_folder <= 1000")
    bank = [line.encode("cp949") for line in SENTENCE_BANK if normalize_transcript(line, "spelling")]
    rng = np.random.default_rng(seed)
    sizes = [per_folder] * (folders - 1) + [max(1, round(LAST_FOLDER_SHARE * per_folder))]
    uids = [(f - 1) * 1000 + i for f, n in enumerate(sizes, 1) for i in range(1, n + 1)]  # utterance N in ceil(N/1000)
    seconds = dict(zip(uids, plan_durations(len(uids), rng).tolist(), strict=True))
    normal = [u for u in uids if 0.5 <= seconds[u] <= 30]
    duplicated = sorted(normal[round(len(normal) * q)] for q in (0.05, 0.5, 0.95))
    out.mkdir(parents=True, exist_ok=True)
    writers, trn = {}, {"train": [], "dev": []}
    for folder, n in enumerate(sizes, 1):
        k, zip64 = zip_of_folder(folder, folders)
        if (archive := f"KsponSpeech_{k:02d}") not in writers:
            writers[archive] = ZipWriter(out / f"{archive}.zip")
            writers[archive].add(f"{archive}/", b"", 0, 0, method=0)
        writer, path = writers[archive], f"{archive}/KsponSpeech_{folder:04d}/"
        writer.add(path, b"", 0, 0, method=0)
        for uid in range((folder - 1) * 1000 + 1, (folder - 1) * 1000 + n + 1):
            name = f"{path}KsponSpeech_{uid:06d}"
            text = bank[uid % len(bank)] + (b"\r\n" if uid % 3 == 0 else b"")
            writer.add(f"{name}.pcm", *deflated(round(seconds[uid] * 100) * 320), zip64_offset=zip64)
            writer.add(f"{name}.txt", *deflated(text), zip64_offset=zip64)
            line = f"{name}.pcm :: {text.decode('cp949').strip()}\n"
            trn["dev" if path.rstrip("/").endswith(DEV_FOLDERS) else "train"].append(line)
        for uid in duplicated:
            if (uid - 1) // 1000 + 1 == folder:  # the second copy, 4 s longer, after the folder's other members
                writer.add(f"{path}KsponSpeech_{uid:06d}.pcm", *deflated(round(seconds[uid] * 100 + 400) * 320))
    eval_writer, half = ZipWriter(out / "KsponSpeech_eval.zip"), eval_utterances // 2
    eval_ids = {"eval_clean": range(1, half + 1), "eval_other": range(3001, 3001 + half)}
    eval_seconds = np.clip(plan_durations(eval_utterances, np.random.default_rng(seed + 1)), 0.6, 29.5)  # none dropped
    for subset, numbers in eval_ids.items():
        for k, number in enumerate(numbers):
            name = f"KsponSpeech_eval/{subset}/KsponSpeech_E{number:05d}"
            duration = eval_seconds[k + (half if subset == "eval_other" else 0)]
            eval_writer.add(f"{name}.pcm", *deflated(round(duration * 100) * 320))
            eval_writer.add(f"{name}.txt", *deflated(bank[number % len(bank)]))
    scripts = ZipWriter(out / "KsponSpeech_scripts.zip")
    for split, lines in trn.items():
        scripts.add(f"{split}.trn", *deflated("".join(lines).encode()))
    for writer in (*writers.values(), eval_writer, scripts):
        writer.close()
    return {
        "folders": {f"KsponSpeech_{f:04d}": n for f, n in enumerate(sizes, 1)},
        "too_short": [u for u in uids if seconds[u] < 0.5],
        "too_long": [u for u in uids if seconds[u] > 30],
        "duplicated": {str(u): [seconds[u], round(seconds[u] + 4.0, 2)] for u in duplicated},
        "eval": {split: len(numbers) for split, numbers in eval_ids.items()},
        "audio_hours": (sum(seconds.values()) + float(eval_seconds.sum())) / 3600,
        "zip_members": {w.file.name.rpartition("/")[2]: w.count for w in (*writers.values(), eval_writer)},
    }


def ensure_corpus(workdir: Path, folders: int, per_folder: int, eval_utterances: int) -> dict:
    """The corpus and its manifest, written unless an earlier run left one of the same shape."""
    corpus, marker = workdir / "corpus", workdir / "corpus.json"
    shape = {"folders": folders, "per_folder": per_folder, "eval_utterances": eval_utterances, "format": 2}
    if marker.exists() and (known := json.loads(marker.read_text()))["shape"] == shape:
        print(f"reusing the corpus in {corpus}", flush=True)
        return known
    shutil.rmtree(corpus, ignore_errors=True)
    marker.unlink(missing_ok=True)
    print(f"writing {folders} folders of {per_folder} utterances (+ eval {eval_utterances}) to {corpus}", flush=True)
    start = time.perf_counter()
    manifest = write_full_corpus(corpus, folders, per_folder, eval_utterances)
    info = {"shape": shape, "manifest": manifest, "seconds": time.perf_counter() - start}
    info["zip_bytes"] = sum(p.stat().st_size for p in corpus.glob("*.zip"))
    marker.write_text(json.dumps(info))
    return info


def count_rows(rows: list[dict]) -> dict:
    """A collate_fn with no batching work: ids, and what `PassCounter` reads from a batch."""
    kept = [row["id"] for row in rows if "skip" not in row]
    return {"id": kept, "num_labels_too_long": 0, "skipped": Counter(row["skip"] for row in rows if "skip" in row)}


def train_loader(split, rank: int, world_size: int, workers: int, collate=count_rows, shuffle: bool = True):
    from kspon_whisper.data import make_dataloader, set_epoch

    order = {"rank": rank, "world_size": world_size, "seed": SEED, "shuffle": shuffle}
    loader = make_dataloader(split, collate, batch_size=BATCH_SIZE, num_workers=workers, **order)
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
    return {
        "seconds": seconds,
        "rss_before": before,
        "rss_after": after,
        "peak": harness.proc_mib("VmHWM"),
        "index_mib": sum(index.records.nbytes for index in indexes) / MIB,
        "memory_mapped": all(isinstance(index.records, np.memmap) for index in indexes),
        "utterances": sum(len(index.records) for index in indexes),
    }


def phase_first_batch(spec: dict) -> dict:
    """The trainer's streaming path from a fresh process: imports, load_splits, make_dataloader, first batch."""
    import psutil

    start = time.perf_counter()
    from kspon_whisper.data import load_splits  # noqa: F401 (timed: the imports a training run starts with)

    imported = time.perf_counter()
    splits = load(spec["corpus"])
    loaded = time.perf_counter()
    batches = iter(train_loader(splits["train"], 0, 1, TRAINER_WORKERS))  # held: dropping it stops the workers
    batch, end = next(batches), time.perf_counter()
    workers = [child.memory_full_info().uss / MIB for child in psutil.Process().children(recursive=True)]
    times = {"import_s": imported - start, "load_splits_s": loaded - imported, "first_batch_s": end - loaded}
    return {**times, "seconds": end - start, "batch": batch["id"], "workers_uss": workers}


def phase_validation_pass(spec: dict) -> dict:
    from kspon_whisper.data import PassCounter

    class OneProcess:  # what `PassCounter.line` asks of an Accelerator, for one process
        device = "cpu"
        reduce = staticmethod(lambda tensor, reduction: tensor)

    split = load(spec["corpus"])["validation"]
    counter, ids, rss, start = PassCounter(split), [], [(0, harness.proc_mib())], time.perf_counter()
    for batch in counter.counted(train_loader(split, 0, 1, 0, shuffle=False)):
        ids += batch["id"]
        if len(ids) // 10_000 > (len(ids) - len(batch["id"])) // 10_000:
            rss.append((len(ids), harness.proc_mib()))
    seconds, (line, total) = time.perf_counter() - start, counter.line("validation", OneProcess())
    return {"examples": len(ids), "unique": len(set(ids)), "seconds": seconds, "rss": rss, "line": line} | {
        "kept": total["kept"]
    }


def phase_loaders(spec: dict) -> dict:
    """The training loader at world size 1 and 8, reads counted in every process by wrapping `read_file`."""
    import multiprocessing

    from kspon_dataset import corpus
    from kspon_whisper.data import UtteranceStream

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
    result = {"split": len(train), "workers": workers}
    for world_size in (1, 8):
        ranks, ws = [], world_size
        for rank in range(world_size):
            loader = train_loader(train, rank, world_size, workers)
            before, start = reads.value, time.perf_counter()
            batches = [b["id"] for b in itertools.islice(loader, math.ceil(limit / BATCH_SIZE) if limit else None)]
            seconds, kept = time.perf_counter() - start, sum(map(len, batches))
            ranks.append({"kept": kept, "reads": reads.value - before, "seconds": seconds, "ids": batches})
        streams = [UtteranceStream(train, seed=SEED, rank=r, world_size=world_size, shuffle=True) for r in range(ws)]
        positions = np.concatenate([s.positions(w, TRAINER_WORKERS) for s in streams for w in range(TRAINER_WORKERS)])
        ids = [uid for rank in ranks for batch in rank["ids"] for uid in batch]
        result[f"world_{world_size}"] = {
            "ranks": [{k: v for k, v in rank.items() if k != "ids"} for rank in ranks],
            "disjoint": len(ids) == len(set(ids)),
            "positions_cover_once": bool(np.array_equal(np.sort(positions), np.arange(len(train)))),
        }
        if world_size == 1:
            result["batches"] = ranks[0]["ids"]
    return result


def phase_splits(spec: dict) -> dict:
    """Every split's index-level counts under each scheme, folders found in more than one split, duplicated names."""
    from kspon_dataset import KsponSpeech
    from kspon_dataset.corpus import index_source, read_utterance

    result = {}
    for scheme in SCHEMES:
        selections = KsponSpeech(config_name="spelling", data_dir=spec["corpus"], split_scheme=scheme).selections()
        homes: dict[str, set[str]] = {}
        for split in ("train", "validation", "test"):
            for s, source in enumerate(selections[split].sources if split in selections else ()):
                folders = index_source(source).folders
                for f in np.unique(selections[split].folder[selections[split].source == s]):
                    homes.setdefault(folders[f], set()).add(split)
        result[scheme] = {
            "tallies": {split: dict(selection.tally) for split, selection in selections.items()},
            "straddling_folders": sum(len(splits) > 1 for splits in homes.values()),
            "folders": len(homes),
        }
    result["duplicated"] = {}  # seconds of each duplicated name as the index measures it and as the reader reads it
    for selection in KsponSpeech(config_name="spelling", data_dir=spec["corpus"]).selections().values():
        for s, source in enumerate(selection.sources):
            at = np.flatnonzero(selection.source == s)
            numbers = index_source(source).records["uid"][selection.row[at]]
            for uid in spec["duplicated"]:
                for i in at[numbers == int(uid)]:
                    example, _ = read_utterance(selection, int(i), "spelling")
                    index_s = int(selection.utterance(int(i))[3]["pcm_size"]) / 32_000
                    result["duplicated"][uid] = {"index_s": index_s, "read_s": example and example["duration"]}
    return result


def expected_tallies(manifest: dict, scheme: str) -> dict[str, dict[str, int]]:
    """Each split's counts as the generator wrote them: seen, the duration drops, the duplicates, candidates."""
    from kspon_dataset.corpus import folder_split, uid_string, utterance_split

    short, long_ = set(manifest["too_short"]), set(manifest["too_long"])
    duplicated = {int(uid) for uid in manifest["duplicated"]}
    tallies: dict[str, Counter] = {}
    for folder, n in manifest["folders"].items():
        first = (int(folder[-4:]) - 1) * 1000 + 1
        for uid in range(first, first + n):
            if scheme == "random":
                split = folder_split(folder)
            elif scheme == "random_utterance":
                split = utterance_split(uid_string(uid))
            else:
                split = "validation" if folder in DEV_FOLDERS else "train"
            reason = "too_short" if uid in short else "too_long" if uid in long_ else "candidates"
            tally = {"seen": 1 + (uid in duplicated), "duplicate_id": uid in duplicated, reason: 1}
            tallies.setdefault(split, Counter()).update(tally)
    for split, n in manifest["eval"].items():
        tallies[split] = Counter(seen=n, candidates=n)
    return {split: dict(+tally) for split, tally in tallies.items()}


def analyse(after: dict, manifest: dict) -> dict[str, bool]:
    """The pass/fail checks of a run."""
    loaders, splits, passed, checks = after["loaders"], after["splits"], after["validation_pass"], {}
    for scheme in SCHEMES:
        expected = expected_tallies(manifest, scheme)
        for split in sorted(set(expected) | set(splits[scheme]["tallies"])):
            got = splits[scheme]["tallies"].get(split)
            checks[f"{scheme} {split}: counts match the generator"] = got == expected.get(split)
            if got != expected.get(split):
                print(f"  {scheme} {split}: expected {expected.get(split)}, got {got}", flush=True)
    candidates = expected_tallies(manifest, "random")["validation"]["candidates"]
    checks["streamed validation pass kept every candidate, once"] = (
        passed["examples"] == passed["unique"] == candidates == passed["kept"]
    )
    for ws in (1, 8):
        world = loaders[f"world_{ws}"]
        once = all(r["reads"] == r["kept"] for r in world["ranks"])
        checks[f"world size {ws}: one audio read per kept example"] = once
        checks[f"world size {ws}: ranks' ids disjoint"] = world["disjoint"]
        checks[f"world size {ws}: ranks x workers cover the split once"] = world["positions_cover_once"]
    checks["random split: no folder in two splits"] = splits["random"]["straddling_folders"] == 0
    for uid, (first_s, _) in manifest["duplicated"].items():
        seen = splits["duplicated"].get(uid, {})
        written = round(first_s * 100) * 320 / 32_000
        agree = seen.get("index_s") == seen.get("read_s") == written
        checks[f"duplicated {uid}: index and reader agree on the first copy"] = agree
    return checks


def diversity(batches: list[list[str]]) -> tuple[float, float]:
    """Mean distinct folders per full batch, and the share of within-batch pairs whose ids are adjacent."""
    full = [[int(uid[-6:]) for uid in batch] for batch in batches if len(batch) == BATCH_SIZE]
    pairs = [(a, b) for batch in full for a, b in itertools.combinations(batch, 2)]
    folders = [len({(n - 1) // 1000 for n in batch}) for batch in full]
    return float(np.mean(folders)) if folders else 0.0, sum(abs(a - b) == 1 for a, b in pairs) / max(1, len(pairs))


def rows(after: dict) -> list[list[str]]:
    """measure | after | target, one row per number the issue asks for."""
    cold, warm, loaders, splits = after["index_cold"], after["index_warm"], after["loaders"], after["splits"]
    first = {label: after[f"first_batch_{label}"] for label in ("cold", "warm")}
    grown = {label: f"{i['rss_after'] - i['rss_before']:,.0f}" for label, i in (("cold", cold), ("warm", warm))}
    ranks = {ws: loaders[f"world_{ws}"]["ranks"] for ws in (1, 8)}
    rate = {ws: sum(r["kept"] for r in ranks[ws]) / max(1e-9, sum(r["seconds"] for r in ranks[ws])) for ws in (1, 8)}
    reads = sum(r["reads"] for r in ranks[8]) / max(1, sum(r["kept"] for r in ranks[8]))
    folders, adjacent = diversity(loaders["batches"])
    uss = first["warm"]["workers_uss"]

    def shares(scheme: str) -> str:
        seen = [splits[scheme]["tallies"].get(split, {}).get("seen", 0) for split in ("train", "validation", "test")]
        return " / ".join(f"{n / max(1, sum(seen)):.1%}" for n in seen)

    straddling = {s: f"{splits[s]['straddling_folders']} of {splits[s]['folders']}" for s in SCHEMES}
    parts = "{import_s:.1f} / {load_splits_s:.1f} / {first_batch_s:.1f}".format(**first["warm"])
    index_mib = f"{grown['cold']} cold, {grown['warm']} memory-mapped ({cold['index_mib']:.0f} MiB of arrays)"
    return [
        ["index the five training ZIPs, s per process",
         f"{cold['seconds']:.1f} cold, {warm['seconds']:.2f} memory-mapped"],
        ["RSS the index adds to a process, MiB", index_mib, "<= 150"],
        ["peak RSS of that process, MiB", f"{cold['peak']:,.0f} cold, {warm['peak']:,.0f} memory-mapped"],
        ["first batch of the training loader in a fresh process, s", "{:.1f} cold, {:.1f} warm".format(
            first["cold"]["seconds"], first["warm"]["seconds"]), "< 30"],
        ["  of which imports / splits / until the first batch, s (warm)", parts],
        [f"memory of each of the {TRAINER_WORKERS} workers (USS, MiB) at the first batch",
         f"{np.mean(uss):,.0f} each ({len(uss)} workers)" if uss else "-"],
        ["audio reads per kept example at world size 8", f"{reads:.2f}", "1.00"],
        ["kept examples/s per rank, world size 1 / 8", f"{rate[1]:,.0f} / {rate[8]:,.0f}", "equal"],
        ["distinct folders in a batch of 16", f"{folders:.1f}", ">= 12"],
        ["within-batch pairs with adjacent ids", f"{adjacent:.2%}", "< 1 %"],
        ["train / validation / test share of utterances", shares("random"), "80 / 10 / 10, +-1 point"],
        ["folders with utterances in more than one of train / validation / test", straddling["random"], "0"],
        ['the same two with `split_scheme="random_utterance"` (the split before)',
         f"{shares('random_utterance')}; {straddling['random_utterance']}"],
    ]  # fmt: skip


def format_section(after: dict, checks: dict[str, bool], info: dict, argv: list[str] | None) -> str:
    manifest, validation = info["manifest"], after["validation_pass"]
    missed = []
    for label in ("cold", "warm"):
        index, first = after[f"index_{label}"], after[f"first_batch_{label}"]
        if index["rss_after"] - index["rss_before"] > 150:
            missed.append(f"indexing {label} adds {index['rss_after'] - index['rss_before']:,.0f} MiB (> 150)")
        if first["seconds"] >= 30:
            missed.append(f"first batch {label} after {first['seconds']:.1f} s (>= 30)")
    duplicated = "; ".join(
        f"{uid}: written {a:.2f} s then {b:.2f} s, index {after['splits']['duplicated'][uid]['index_s']:.2f} s, "
        f"read {after['splits']['duplicated'][uid]['read_s']:.2f} s"
        for uid, (a, b) in manifest["duplicated"].items()
    )
    lines = [harness.section_head(SECTION, __file__, argv, "numpy").rstrip("\n")]
    lines.append(
        f"- Corpus: {sum(manifest['folders'].values()):,} training utterances in {len(manifest['folders'])} folders "
        f"across the five ZIPs ({', '.join(f'{n:,}' for n in manifest['zip_members'].values())} entries per ZIP, eval "
        f"last), {sum(manifest['eval'].values()):,} eval, {manifest['audio_hours']:,.0f} h of zero-valued audio, "
        f"{info['zip_bytes'] / MIB:,.0f} MiB of ZIPs, written in {info['seconds']:.0f} s; "
        f"{len(manifest['too_short']):,} clips under 0.5 s, {len(manifest['too_long']):,} over 30 s, "
        f"{len(manifest['duplicated'])} names stored twice."
    )
    table = [row + ["-"] * (3 - len(row)) for row in rows(after)]
    lines += ["", harness.markdown_table(["measure", f"after ({harness.git_commit()})", "target"], table), ""]
    rss = ", ".join(f"{n // 1000}k: {mib:,.0f}" for n, mib in validation["rss"])
    lines += [
        f"- Targets missed: {'; '.join(missed) or 'none'}.",
        (
            f"- Streamed validation pass (one process, no workers): {validation['examples']:,} examples in "
            f"{validation['seconds']:.0f} s; RSS MiB at each 10k examples: {rss}; `{validation['line']}`."
        ),
        f"- Duplicated names: {duplicated}.",
        "- Checks: " + "; ".join(f"{name}: {'pass' if ok else 'FAIL'}" for name, ok in checks.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--folders", type=int, default=623, help="training folders (the real corpus has 623)")
    parser.add_argument("--per_folder", type=int, default=1000, help="utterances per folder (the last one: 54.5 %%)")
    parser.add_argument("--eval_utterances", type=int, default=6000, help="eval_clean + eval_other")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kspon_full_scale")
    help = "examples each rank reads, in one process; 0: its whole part, through 2 workers per rank"
    parser.add_argument("--examples_per_rank", type=int, default=4000, help=help)
    parser.add_argument("--clean", action="store_true", help="remove the work dir (and its corpus) at the end")
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    parser.add_argument("--json", type=Path, help="also write every measured number here")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = harness.offline_env(workdir, KSPON_INDEX_CACHE=str(workdir / "index_cache"))
    env["PYTHONWARNINGS"] = "ignore::FutureWarning,ignore::UserWarning"
    try:
        info = ensure_corpus(workdir, args.folders, args.per_folder, args.eval_utterances)
        spec, after = {"corpus": str(workdir / "corpus")}, {}
        for phase, label in itertools.product(("index", "first_batch"), ("cold", "warm")):
            if label == "cold":
                shutil.rmtree(workdir / "index_cache", ignore_errors=True)
            print(f"[{phase} {label}]", flush=True)
            after[f"{phase}_{label}"] = harness.run_fresh("full_scale", phase, spec, env, timeout_s=1200)
        more = {"loaders": {"examples_per_rank": args.examples_per_rank}}
        more["splits"] = {"duplicated": list(info["manifest"]["duplicated"])}
        for phase in ("validation_pass", "loaders", "splits"):
            print(f"[{phase}]", flush=True)
            after[phase] = harness.run_fresh("full_scale", phase, spec | more.get(phase, {}), env, timeout_s=1200)
    finally:
        if args.clean:
            shutil.rmtree(workdir, ignore_errors=True)
    checks = analyse(after, info["manifest"])
    harness.publish(format_section(after, checks, info, argv), args.write_results)
    if args.json:
        args.json.write_text(json.dumps({"after": after, "corpus": info}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
