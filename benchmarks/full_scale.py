"""Full-scale check of the data path: KsponSpeech's real member count, measured the way the trainer reads it.

    python benchmarks/full_scale.py --write_results                       # 622,545 utterances, ~15 min on 2 cores
    git worktree add /tmp/before 7b9d3ee                                   # the old data layer, for "before"
    python benchmarks/full_scale.py --before_checkout /tmp/before --before_python .venv/bin/python --write_results
    python benchmarks/full_scale.py --folders 12 --per_folder 40 --eval_utterances 60   # CI's scale, ~30 s

The corpus is written once into the work dir (default /tmp/kspon_full_scale; reused by later runs with the same
shape): five training ZIPs holding 623 folders of 1,000 utterances (the last one 545) exactly where AI Hub puts them,
the eval ZIP (6,000) and the scripts ZIP (train.trn, dev.trn). Audio is zeros of realistic lengths (log-normal around
4.5 s, plus a few clips under 0.5 s and over 30 s for the duration filter); zeros deflate ~1,000:1, so the whole
corpus is ~300 MB. Three names are stored twice, the second copy longer. Each training ZIP has more than 65,535
entries (a ZIP64 end record) and gives its second half of members ZIP64 offsets, as the real ~14 GB archives do.

Each measurement runs in a fresh process: index time and memory (cold, then memory-mapped), time to the trainer's
first batch, one streamed pass over validation (RSS every 10k examples), the training loader at world size 1 and 8
(audio reads per kept example, counted by wrapping `read_file`), batch diversity, split proportions, and every split's
counts against what the generator wrote. With `--before_checkout`, the same questions are put to the old data layer.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Full scale"
MIB = 2**20
SAMPLE_RATE = 16_000
BATCH_SIZE = 16  # the trainer's per_device_batch_size default
SEED = 42  # the trainer's default seed
TRAINER_WORKERS = 4  # the trainer's num_workers default
REAL_LAST_FOLDERS = (124, 248, 372, 496, 623)  # last folder of KsponSpeech_01.zip ... _05.zip
LAST_FOLDER_SHARE = 0.545  # folder 0623 holds 545 utterances
DEV_FOLDERS = ("KsponSpeech_0621", "KsponSpeech_0622", "KsponSpeech_0623")
SHORT_SHARE, LONG_SHARE = 0.002, 0.0005  # clips the 0.5-30 s filter must drop

# --------------------------------------------------------------------------------------------------------------
# Writing the corpus: a minimal ZIP writer, because zipfile would deflate the same zeros 622,545 times

_LOCAL = struct.Struct("<4s5H3I2H")
_CENTRAL = struct.Struct("<4s6H3I5HII")
_ZIP64_EOCD = struct.Struct("<4sQ2H2I4Q")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_EOCD = struct.Struct("<4s4H2IH")
_DOS_TIME, _DOS_DATE = 0, (2018 - 1980) << 9 | 7 << 5 | 1  # 2018-07-01 00:00
_U32, _U16 = 0xFFFFFFFF, 0xFFFF


class ZipWriter:
    """Members written from precomputed deflate streams; ZIP64 end records whenever a count or offset needs them."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close(), after the central directory)
        self.central, self.buffer = bytearray(), bytearray()
        self.offset, self.count = 0, 0

    def add(self, name: str, data: bytes, crc: int, size: int, method: int = 8, zip64_offset: bool = False) -> None:
        raw = name.encode()
        is_dir = name.endswith("/")
        self.buffer += _LOCAL.pack(
            b"PK\x03\x04", 20, 0, method, _DOS_TIME, _DOS_DATE, crc, len(data), size, len(raw), 0
        )
        self.buffer += raw
        self.buffer += data
        extra = struct.pack("<HHQ", 1, 8, self.offset) if zip64_offset else b""
        attributes = (0o40755 << 16 | 0x10) if is_dir else 0o644 << 16
        self.central += _CENTRAL.pack(
            *(b"PK\x01\x02", 0x031E, 45 if zip64_offset else 20, 0, method, _DOS_TIME, _DOS_DATE, crc, len(data)),
            *(size, len(raw), len(extra), 0, 0, 0, attributes, _U32 if zip64_offset else self.offset),
        )
        self.central += raw + extra
        self.offset += _LOCAL.size + len(raw) + len(data)
        self.count += 1
        if len(self.buffer) > 1 << 22:
            self.file.write(self.buffer)
            self.buffer.clear()

    def close(self) -> None:
        self.file.write(self.buffer)
        self.file.write(self.central)
        cd_offset, cd_size = self.offset, len(self.central)
        zip64 = self.count >= _U16 or cd_offset >= _U32
        if zip64:
            end64 = cd_offset + cd_size
            self.file.write(
                _ZIP64_EOCD.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, self.count, self.count, cd_size, cd_offset)
            )
            self.file.write(_ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, end64, 1))
        count = min(self.count, _U16)
        self.file.write(_EOCD.pack(b"PK\x05\x06", 0, 0, count, count, cd_size, min(cd_offset, _U32), 0))
        self.file.close()


class Deflated:
    """The deflate stream and CRC of each distinct member, computed once."""

    def __init__(self):
        self.cache: dict[bytes | int, tuple[bytes, int, int]] = {}

    def zeros(self, size: int) -> tuple[bytes, int, int]:
        if size not in self.cache:
            self.cache[size] = self._deflate(bytes(size))
        return self.cache[size]

    def text(self, data: bytes) -> tuple[bytes, int, int]:
        if data not in self.cache:
            self.cache[data] = self._deflate(data)
        return self.cache[data]

    @staticmethod
    def _deflate(data: bytes) -> tuple[bytes, int, int]:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        return deflater.compress(data) + deflater.flush(), zlib.crc32(data), len(data)


def plan_durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds per clip in 10 ms steps: log-normal around 4.5 s, SHORT_SHARE under 0.5 s, LONG_SHARE over 30 s."""
    seconds = np.clip(rng.lognormal(math.log(4.5), 0.45, n), 0.6, 29.5)
    short = rng.choice(n, max(2, round(SHORT_SHARE * n)), replace=False)
    seconds[short] = rng.uniform(0.1, 0.45, len(short))
    rest = np.setdiff1d(np.arange(n), short)
    long = rng.choice(rest, max(2, round(LONG_SHARE * n)), replace=False)
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
    deflated, writers, trn = Deflated(), {}, {"train": [], "dev": []}
    for folder, n in enumerate(sizes, 1):
        k, zip64 = zip_of_folder(folder, folders)
        archive = f"KsponSpeech_{k:02d}"
        if archive not in writers:
            writers[archive] = ZipWriter(out / f"{archive}.zip")
            writers[archive].add(f"{archive}/", b"", 0, 0, method=0)
        writer, path = writers[archive], f"{archive}/KsponSpeech_{folder:04d}/"
        writer.add(path, b"", 0, 0, method=0)
        for uid in range((folder - 1) * 1000 + 1, (folder - 1) * 1000 + n + 1):
            name = f"{path}KsponSpeech_{uid:06d}"
            text = bank[uid % len(bank)] + (b"\r\n" if uid % 3 == 0 else b"")
            writer.add(f"{name}.pcm", *deflated.zeros(round(seconds[uid] * 100) * 320), zip64_offset=zip64)
            writer.add(f"{name}.txt", *deflated.text(text), zip64_offset=zip64)
            line = f"{name}.pcm :: {text.decode('cp949').strip()}\n"
            trn["dev" if path.rstrip("/").endswith(DEV_FOLDERS) else "train"].append(line)
        for uid in duplicated:
            if (uid - 1) // 1000 + 1 == folder:  # the second copy, 4 s longer, after the folder's other members
                writer.add(f"{path}KsponSpeech_{uid:06d}.pcm", *deflated.zeros(round(seconds[uid] * 100 + 400) * 320))
    eval_writer = ZipWriter(out / "KsponSpeech_eval.zip")
    eval_ids = {
        "eval_clean": range(1, eval_utterances // 2 + 1),
        "eval_other": range(3001, 3001 + eval_utterances // 2),
    }
    eval_seconds = plan_durations(eval_utterances, np.random.default_rng(seed + 1))
    eval_seconds = np.clip(eval_seconds, 0.6, 29.5)  # the official test sets have no clip to filter
    for subset, numbers in eval_ids.items():
        for k, number in enumerate(numbers):
            name = f"KsponSpeech_eval/{subset}/KsponSpeech_E{number:05d}"
            duration = eval_seconds[k + (eval_utterances // 2 if subset == "eval_other" else 0)]
            eval_writer.add(f"{name}.pcm", *deflated.zeros(round(duration * 100) * 320))
            eval_writer.add(f"{name}.txt", *deflated.text(bank[number % len(bank)]))
    scripts = ZipWriter(out / "KsponSpeech_scripts.zip")
    for split, lines in trn.items():
        scripts.add(f"{split}.trn", *Deflated._deflate("".join(lines).encode()))
    for writer in (*writers.values(), eval_writer, scripts):
        writer.close()
    short = [u for u in uids if seconds[u] < 0.5]
    return {
        "folders": {f"KsponSpeech_{f:04d}": n for f, n in enumerate(sizes, 1)},
        "too_short": short,
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
    print(
        f"writing {folders} folders of {per_folder} utterances (+ eval {eval_utterances}) to {corpus} ...", flush=True
    )
    start = time.perf_counter()
    manifest = write_full_corpus(corpus, folders, per_folder, eval_utterances)
    seconds = time.perf_counter() - start
    zip_bytes = sum(p.stat().st_size for p in corpus.glob("*.zip"))
    info = {"shape": shape, "manifest": manifest, "seconds": seconds, "zip_bytes": zip_bytes}
    print(f"  {sum(manifest['folders'].values()):,} training utterances, {zip_bytes / MIB:,.0f} MiB, {seconds:.0f} s")
    marker.write_text(json.dumps(info))
    return info


# --------------------------------------------------------------------------------------------------------------
# Phases: each runs in a fresh process (the old code's in its own checkout and virtualenv) and returns a dict


def proc_mib(field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def worker_memory() -> list[dict]:
    """RSS and USS (pages no other process shares) of each DataLoader worker, in MiB."""
    import psutil

    workers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            info = child.memory_full_info()
            workers.append({"rss": info.rss / MIB, "uss": info.uss / MIB})
    return workers


def count_rows(rows: list[dict]) -> dict:
    """A collate_fn with no batching work: ids, and what `PassCounter` reads from a batch."""
    kept = [row["id"] for row in rows if "skip" not in row]
    return {"id": kept, "num_labels_too_long": 0, "skipped": Counter(row["skip"] for row in rows if "skip" in row)}


class OneProcess:
    """What `PassCounter.total` asks of an Accelerator, for a single process."""

    device = "cpu"

    @staticmethod
    def reduce(tensor, reduction: str):
        return tensor


def phase_index(spec: dict) -> dict:
    from kspon_dataset.corpus import find_sources, index_source

    before = proc_mib()
    start = time.perf_counter()
    indexes = [index_source(source) for source in find_sources(spec["corpus"]).train]
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rss_before": before,
        "rss_after": proc_mib(),
        "peak": proc_mib("VmHWM"),
        "index_mib": sum(index.records.nbytes for index in indexes) / MIB,
        "memory_mapped": all(isinstance(index.records, np.memmap) for index in indexes),
        "utterances": sum(len(index.records) for index in indexes),
    }


def phase_first_batch(spec: dict) -> dict:
    """The trainer's streaming path from a fresh process: imports, load_splits, make_dataloader, first batch."""
    start = time.perf_counter()
    from kspon_whisper.data import load_splits, make_dataloader, set_epoch

    imported = time.perf_counter()
    splits = load_splits(spec["corpus"], config="spelling", split_scheme="random", streaming=True)
    loaded = time.perf_counter()
    loader = make_dataloader(
        splits["train"],
        count_rows,
        batch_size=BATCH_SIZE,
        num_workers=TRAINER_WORKERS,
        rank=0,
        world_size=1,
        seed=SEED,
        shuffle=True,
    )
    set_epoch(loader, 0)
    batches = iter(loader)  # held until the workers are measured: dropping it shuts them down
    batch = next(batches)
    end = time.perf_counter()
    return {
        "import_s": imported - start,
        "load_splits_s": loaded - imported,
        "first_batch_s": end - loaded,
        "seconds": end - start,
        "batch": batch["id"],
        "rss_main": proc_mib(),
        "workers": worker_memory(),
    }


def phase_validation_pass(spec: dict) -> dict:
    from kspon_whisper.data import PassCounter, load_splits, make_dataloader

    split = load_splits(spec["corpus"], config="spelling", split_scheme="random", streaming=True)["validation"]
    loader = make_dataloader(
        split, count_rows, batch_size=BATCH_SIZE, num_workers=0, rank=0, world_size=1, seed=SEED, shuffle=False
    )
    counter, ids, rss, start = PassCounter(split), [], [(0, proc_mib())], time.perf_counter()
    for batch in counter.counted(loader):
        ids += batch["id"]
        if len(ids) // 10_000 > (len(ids) - len(batch["id"])) // 10_000:
            rss.append((len(ids), proc_mib()))
    seconds = time.perf_counter() - start
    line, total = counter.line("validation", OneProcess())
    return {
        "examples": len(ids),
        "unique": len(set(ids)),
        "seconds": seconds,
        "rss": rss,
        "line": line,
        "counts": dict(total),
        "peak": proc_mib("VmHWM"),
    }


def phase_loaders(spec: dict) -> dict:
    """The training loader at world size 1 and 8, reads counted in every process by wrapping `read_file`."""
    import multiprocessing

    from kspon_dataset import corpus
    from kspon_whisper.data import UtteranceStream, load_splits, make_dataloader, set_epoch

    train = load_splits(spec["corpus"], config="spelling", split_scheme="random", streaming=True)["train"]
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
        ranks = []
        for rank in range(world_size):
            loader = make_dataloader(
                train,
                count_rows,
                batch_size=BATCH_SIZE,
                num_workers=workers,
                rank=rank,
                world_size=world_size,
                seed=SEED,
                shuffle=True,
            )
            set_epoch(loader, 0)
            before, start, batches = reads.value, time.perf_counter(), []
            for batch in itertools.islice(loader, math.ceil(limit / BATCH_SIZE) if limit else None):
                batches.append(batch["id"])
            seconds = time.perf_counter() - start
            kept = sum(map(len, batches))
            ranks.append({"kept": kept, "reads": reads.value - before, "seconds": seconds, "ids": batches})
        positions = np.concatenate(
            [
                UtteranceStream(train, seed=SEED, rank=r, world_size=world_size, shuffle=True).positions(
                    w, TRAINER_WORKERS
                )
                for r in range(world_size)
                for w in range(TRAINER_WORKERS)
            ]
        )
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
    for scheme in ("random", "official", "random_utterance"):
        builder = KsponSpeech(config_name="spelling", data_dir=spec["corpus"], split_scheme=scheme)
        selections = builder.selections()
        homes: dict[str, set[str]] = {}
        for split in ("train", "validation", "test"):
            if split in selections:
                selection = selections[split]
                for s, source in enumerate(selection.sources):
                    folders = index_source(source).folders
                    for f in np.unique(selection.folder[selection.source == s]):
                        homes.setdefault(folders[f], set()).add(split)
        result[scheme] = {
            "tallies": {split: dict(selection.tally) for split, selection in selections.items()},
            "straddling_folders": sum(len(splits) > 1 for splits in homes.values()),
            "folders": len(homes),
        }
        if scheme == "random":
            result["duplicated"] = read_duplicated(selections, spec["duplicated"], index_source, read_utterance)
    return result


def read_duplicated(selections: dict, uids: list[str], index_source, read_utterance) -> dict:
    """Seconds of each duplicated name as the index measures it and as the reader reads it."""
    found = {}
    for selection in selections.values():
        for s, source in enumerate(selection.sources):
            at = np.flatnonzero(selection.source == s)
            numbers = index_source(source).records["uid"][selection.row[at]]
            for uid in uids:
                for i in at[numbers == int(uid)]:
                    record = selection.utterance(int(i))[3]
                    example, _ = read_utterance(selection, int(i), "spelling")
                    found[uid] = {
                        "index_s": int(record["pcm_size"]) / 32_000,
                        "read_s": example and example["duration"],
                    }
    return found


# The old data layer (7b9d3ee): zipfile directories, `load_dataset` on the script, `split_dataset_by_node`


def phase_before_index(spec: dict) -> dict:
    from kspon_dataset.corpus import find_sources, list_shards

    before = proc_mib()
    start = time.perf_counter()
    shards = list_shards(find_sources(spec["corpus"]).train)
    return {
        "seconds": time.perf_counter() - start,
        "rss_before": before,
        "rss_after": proc_mib(),
        "peak": proc_mib("VmHWM"),
        "shards": len(shards),
    }


def old_loader(splits: dict, rank: int, world_size: int, workers: int):
    from kspon_whisper.data import make_dataloader, set_epoch

    loader = make_dataloader(
        splits["train"],
        old_rows,
        batch_size=BATCH_SIZE,
        num_workers=workers,
        rank=rank,
        world_size=world_size,
        seed=SEED,
        shuffle=True,
    )
    set_epoch(loader, 0, SEED)
    return loader


def old_rows(rows: list[dict]) -> dict:
    return {"id": [row["id"] for row in rows]}


def phase_before_first_batch(spec: dict) -> dict:
    start = time.perf_counter()
    import datasets

    from kspon_whisper.data import load_kspon

    datasets.logging.set_verbosity_error()
    imported = time.perf_counter()
    splits = load_kspon(spec["corpus"], config="spelling", split_scheme="random", streaming=True)
    loaded = time.perf_counter()
    batches = iter(old_loader(splits, 0, 1, TRAINER_WORKERS))  # held until the workers are measured
    batch = next(batches)
    end = time.perf_counter()
    return {
        "import_s": imported - start,
        "load_splits_s": loaded - imported,
        "first_batch_s": end - loaded,
        "seconds": end - start,
        "batch": batch["id"],
        "rss_main": proc_mib(),
        "workers": worker_memory(),
    }


def phase_before_loaders(spec: dict) -> dict:
    """Rank 0 of world size 1 and 8 in one process, audio reads counted at `ZipFile.read`."""
    import zipfile

    import datasets

    from kspon_whisper.data import load_kspon

    datasets.logging.set_verbosity_error()
    reads = Counter()
    zip_read = zipfile.ZipFile.read

    def counting_read(self, name, pwd=None):
        reads["pcm"] += str(getattr(name, "filename", name)).endswith(".pcm")
        return zip_read(self, name, pwd)

    zipfile.ZipFile.read = counting_read
    splits = load_kspon(spec["corpus"], config="spelling", split_scheme="random", streaming=True)
    result = {}
    for world_size in (1, 8):
        loader = old_loader(splits, 0, world_size, 0)
        before, start, batches = reads["pcm"], time.perf_counter(), []
        for batch in itertools.islice(loader, math.ceil(spec["examples_per_rank"] / BATCH_SIZE)):
            batches.append(batch["id"])
        seconds = time.perf_counter() - start
        kept = sum(map(len, batches))
        result[f"world_{world_size}"] = {"kept": kept, "reads": reads["pcm"] - before, "seconds": seconds}
        if world_size == 1:
            result["batches"] = batches
    return result


PHASES = {
    "index": phase_index,
    "first_batch": phase_first_batch,
    "validation_pass": phase_validation_pass,
    "loaders": phase_loaders,
    "splits": phase_splits,
    "before_index": phase_before_index,
    "before_first_batch": phase_before_first_batch,
    "before_loaders": phase_before_loaders,
}


def run_child(phase: str, spec: dict, result_path: str) -> None:
    sys.path.insert(0, spec["repo"])  # this checkout, or the old one for before_* phases
    result = PHASES[phase](spec)
    result["peak_rss_mib"] = proc_mib("VmHWM")
    package = sys.modules.get("kspon_dataset") or sys.modules["kspon_whisper"]
    result["package"] = str(Path(package.__file__).parent.parent)  # the checkout that was measured
    Path(result_path).write_text(json.dumps(result))


def run_phase(phase: str, spec: dict, env: dict[str, str], python: str = sys.executable, timeout: int = 1200) -> dict:
    """One phase in a fresh process; its whole process group is killed if it overruns."""
    with tempfile.TemporaryDirectory(prefix="kspon-full-") as scratch:
        result_path = os.path.join(scratch, "result.json")
        command = [python, __file__, "--_phase", phase, "--_spec", json.dumps(spec), "--_result", result_path]
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            raise RuntimeError(f"phase {phase} ran past {timeout} s and was killed") from None
        if process.returncode != 0:
            raise RuntimeError(f"phase {phase} failed (exit {process.returncode}); its output is above")
        result = json.loads(Path(result_path).read_text())
    result["wall_s"] = time.perf_counter() - start
    print(f"    {phase}: {result['wall_s']:.1f} s", flush=True)
    return result


def phase_env(workdir: Path) -> dict[str, str]:
    """The data benchmark's offline, private-cache environment, with a private index cache too."""
    from benchmarks.data_pipeline import phase_env as offline_env

    return offline_env(workdir) | {
        "KSPON_INDEX_CACHE": str(workdir / "index_cache"),
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning",
    }


# --------------------------------------------------------------------------------------------------------------
# The parent: generate, run the phases, check the counts against the generator


def run_after(corpus: Path, workdir: Path, info: dict, args: argparse.Namespace) -> dict:
    env, spec = phase_env(workdir), {"corpus": str(corpus), "repo": str(REPO)}
    results = {}
    for label in ("cold", "warm"):
        if label == "cold":
            shutil.rmtree(workdir / "index_cache", ignore_errors=True)
        print(f"[index {label}] index_source on the five training ZIPs", flush=True)
        results[f"index_{label}"] = run_phase("index", spec, env)
    for label in ("cold", "warm"):
        if label == "cold":
            shutil.rmtree(workdir / "index_cache", ignore_errors=True)
        print(f"[first batch {label}] load_splits + make_dataloader ({TRAINER_WORKERS} workers) + next()", flush=True)
        results[f"first_batch_{label}"] = run_phase("first_batch", spec, env)
    print("[validation pass] one streamed pass, RSS every 10k examples", flush=True)
    results["validation_pass"] = run_phase("validation_pass", spec, env)
    print("[loaders] the training loader at world size 1 and 8, reads counted", flush=True)
    results["loaders"] = run_phase("loaders", spec | {"examples_per_rank": args.examples_per_rank}, env)
    print("[splits] every split under each scheme, duplicated names", flush=True)
    duplicated = list(info["manifest"]["duplicated"])
    results["splits"] = run_phase("splits", spec | {"duplicated": duplicated}, env)
    return results


def run_before(corpus: Path, workdir: Path, args: argparse.Namespace) -> dict:
    env = phase_env(workdir / "before")
    spec = {"corpus": str(corpus), "repo": str(args.before_checkout.resolve())}
    python = str(args.before_python)
    print(f"[before: index] list_shards on the five training ZIPs ({args.before_checkout})", flush=True)
    results = {"index": run_phase("before_index", spec, env, python)}
    print(f"[before: first batch] load_kspon + make_dataloader ({TRAINER_WORKERS} workers) + next()", flush=True)
    results["first_batch"] = run_phase("before_first_batch", spec, env, python)
    print("[before: loaders] rank 0 at world size 1 and 8, reads counted", flush=True)
    results["loaders"] = run_phase("before_loaders", spec | {"examples_per_rank": args.before_examples}, env, python)
    results["commit"] = git_commit(args.before_checkout)
    return results


def git_commit(path: Path) -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        command = ["git", "-C", str(path), "rev-parse", "--short", "HEAD"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    return "unknown"


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
            tallies.setdefault(split, Counter()).update(
                {"seen": 1 + (uid in duplicated), "duplicate_id": uid in duplicated, reason: 1}
            )
    for split, n in manifest["eval"].items():
        tallies[split] = Counter(seen=n, candidates=n)
    return {split: dict(+tally) for split, tally in tallies.items()}


def batch_diversity(batches: list[list[str]]) -> dict:
    """Mean distinct folders per full batch, and the share of within-batch pairs whose ids are adjacent."""
    full = [[int(uid[-6:]) for uid in batch] for batch in batches if len(batch) == BATCH_SIZE]
    folders = [len({(n - 1) // 1000 for n in batch}) for batch in full]
    pairs = [(a, b) for batch in full for a, b in itertools.combinations(batch, 2)]
    adjacent = sum(abs(a - b) == 1 for a, b in pairs)
    return {
        "batches": len(full),
        "folders_per_batch": float(np.mean(folders)) if folders else 0.0,
        "adjacent_share": adjacent / len(pairs) if pairs else 0.0,
    }


def reads_per_kept(ranks: list[dict]) -> float:
    return sum(r["reads"] for r in ranks) / max(1, sum(r["kept"] for r in ranks))


def analyse(results: dict, info: dict) -> dict:
    """Derived numbers and pass/fail checks; a failed check fails the command."""
    after, manifest = results["after"], info["manifest"]
    loaders, splits = after["loaders"], after["splits"]
    derived = {
        "diversity": batch_diversity(loaders["batches"]),
        "reads_per_kept": {ws: reads_per_kept(loaders[f"world_{ws}"]["ranks"]) for ws in (1, 8)},
        "shares": split_shares(splits["random"]["tallies"]),
        "shares_utterance": split_shares(splits["random_utterance"]["tallies"]),
    }
    checks = {}
    for scheme in ("random", "official", "random_utterance"):
        expected = expected_tallies(manifest, scheme)
        for split in sorted(set(expected) | set(splits[scheme]["tallies"])):
            got = splits[scheme]["tallies"].get(split)
            checks[f"{scheme} {split}: counts match the generator"] = got == expected.get(split)
            if got != expected.get(split):
                print(f"  {scheme} {split}: expected {expected.get(split)}, got {got}", flush=True)
    validation = expected_tallies(manifest, "random")["validation"]
    passed = after["validation_pass"]
    checks["streamed validation pass kept every candidate, once"] = (
        passed["examples"] == passed["unique"] == validation["candidates"] == passed["counts"]["kept"]
    )
    for ws in (1, 8):
        world = loaders[f"world_{ws}"]
        checks[f"world size {ws}: one audio read per kept example"] = all(
            r["reads"] == r["kept"] for r in world["ranks"]
        )
        checks[f"world size {ws}: ranks' ids disjoint"] = world["disjoint"]
        checks[f"world size {ws}: ranks x workers cover the split once"] = world["positions_cover_once"]
    checks["random split: no folder in two splits"] = splits["random"]["straddling_folders"] == 0
    for uid, (first_s, _) in manifest["duplicated"].items():
        seen = splits["duplicated"].get(uid, {})
        checks[f"duplicated {uid}: index and reader agree on the first copy"] = (
            seen.get("index_s") == seen.get("read_s") == written_seconds(first_s)
        )
    return {"derived": derived, "checks": checks}


def written_seconds(seconds: float) -> float:
    return round(seconds * 100) * 320 / 32_000


def split_shares(tallies: dict) -> dict[str, float]:
    seen = {split: tallies.get(split, {}).get("seen", 0) for split in ("train", "validation", "test")}
    total = sum(seen.values()) or 1
    return {split: n / total for split, n in seen.items()}


# --------------------------------------------------------------------------------------------------------------
# Report


def machine_line() -> str:
    import psutil

    from benchmarks.data_pipeline import cpu_model

    return (
        f"- Machine: `nproc` = {os.cpu_count()} ({cpu_model()}), {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, "
        f"{platform.platform()}, Python {platform.python_version()}; shared with other engineers' jobs (1-minute load "
        f"average {os.getloadavg()[0]:.1f} at the end)."
    )


def comparison_rows(results: dict, analysis: dict) -> list[list[str]]:
    """measure | before | after | target, one row per number the issue asks for."""
    after, old, derived = results["after"], results.get("before"), analysis["derived"]
    cold, warm, loaders, splits = after["index_cold"], after["index_warm"], after["loaders"], after["splits"]
    rate = {ws: kept_rate(loaders[f"world_{ws}"]["ranks"]) for ws in (1, 8)}
    shares, leaky = derived["shares"], derived["shares_utterance"]
    new = {
        "index_s": f"{cold['seconds']:.1f} cold, {warm['seconds']:.2f} memory-mapped",
        "index_mib": f"{grown(cold)} cold, {grown(warm)} memory-mapped ({cold['index_mib']:.0f} MiB of arrays)",
        "peak": f"{cold['peak']:,.0f} cold, {warm['peak']:,.0f} memory-mapped",
        "first": f"{after['first_batch_cold']['seconds']:.1f} cold, {after['first_batch_warm']['seconds']:.1f} warm",
        "parts": phase_parts(after["first_batch_warm"]),
        "uss": workers_uss(after["first_batch_warm"]),
        "reads": f"{derived['reads_per_kept'][8]:.2f}",
        "rate": f"{rate[1]:,.0f} / {rate[8]:,.0f}",
        "folders": f"{derived['diversity']['folders_per_batch']:.1f}",
        "adjacent": f"{derived['diversity']['adjacent_share']:.2%}",
        "shares": " / ".join(f"{shares[s]:.1%}" for s in ("train", "validation", "test")),
        "straddling": f"{splits['random']['straddling_folders']} of {splits['random']['folders']}",
    }
    before = {key: "not measured" for key in new}
    before["shares"] = " / ".join(f"{leaky[s]:.1%}" for s in ("train", "validation", "test"))
    before["straddling"] = (
        f"{splits['random_utterance']['straddling_folders']} of {splits['random_utterance']['folders']}"
    )
    if old:
        old_loaders, old_diversity = old["loaders"], batch_diversity(old["loaders"]["batches"])
        before |= {
            "index_s": f"{old['index']['seconds']:.1f}",
            "index_mib": grown(old["index"]),
            "peak": f"{old['index']['peak']:,.0f}",
            "first": f"{old['first_batch']['seconds']:.1f}",
            "parts": phase_parts(old["first_batch"]),
            "uss": workers_uss(old["first_batch"]),
            "reads": f"{reads_per_kept([old_loaders['world_8']]):.2f}",
            "rate": f"{kept_rate([old_loaders['world_1']]):,.0f} / {kept_rate([old_loaders['world_8']]):,.0f}",
            "folders": f"{old_diversity['folders_per_batch']:.1f}",
            "adjacent": f"{old_diversity['adjacent_share']:.1%}",
        }
    return [[label, before[key], new[key], target] for key, label, target in ROWS]


ROWS = (
    ("index_s", "index the five training ZIPs, s per process", "-"),
    ("index_mib", "RSS the index adds to a process, MiB", "<= 150"),
    ("peak", "peak RSS of that process, MiB", "-"),
    ("first", "first batch of the training loader in a fresh process, s", "< 30"),
    ("parts", "  of which imports / splits / until the first batch, s (warm)", "-"),
    ("uss", f"memory of each of the {TRAINER_WORKERS} workers (USS, MiB) at the first batch", "-"),
    ("reads", "audio reads per kept example at world size 8", "1.00"),
    ("rate", "kept examples/s per rank, world size 1 / 8", "equal"),
    ("folders", "distinct folders in a batch of 16", ">= 12"),
    ("adjacent", "within-batch pairs with adjacent ids", "< 1 %"),
    ("shares", "train / validation / test share of utterances", "80 / 10 / 10, +-1 point"),
    ("straddling", "folders with utterances in more than one of train / validation / test", "0"),
)


def grown(phase: dict) -> str:
    return f"{phase['rss_after'] - phase['rss_before']:,.0f}"


def workers_uss(phase: dict) -> str:
    uss = [worker["uss"] for worker in phase["workers"]]
    return f"{np.mean(uss):,.0f} each ({len(uss)} workers)" if uss else "-"


def missed_targets(after: dict) -> list[str]:
    """The memory and start-up targets a phase missed (the checks below cover correctness)."""
    missed = []
    for label in ("cold", "warm"):
        index, first = after[f"index_{label}"], after[f"first_batch_{label}"]
        if index["rss_after"] - index["rss_before"] > 150:
            missed.append(f"indexing {label} adds {index['rss_after'] - index['rss_before']:,.0f} MiB (> 150)")
        if first["seconds"] >= 30:
            missed.append(f"first batch {label} after {first['seconds']:.1f} s (>= 30)")
    return missed


def phase_parts(phase: dict) -> str:
    return f"{phase['import_s']:.1f} / {phase['load_splits_s']:.1f} / {phase['first_batch_s']:.1f}"


def kept_rate(ranks: list[dict]) -> float:
    return sum(r["kept"] for r in ranks) / max(1e-9, sum(r["seconds"] for r in ranks))


NOTES = (
    (
        "- How: each number comes from a fresh process. 'RSS the index adds' is VmRSS after indexing minus "
        "before, in a process that has already imported the package (and so datasets). 'Cold' means no index "
        "cache; 'memory-mapped' reads the cache an earlier process wrote. The first batch is the trainer's "
        "streaming path (`load_splits`, `make_dataloader` with its 4 workers, a collate_fn that only lists ids), "
        "timed from the start of the imports."
    ),
    (
        "- Loaders: at world size 1 and 8 every rank of the new loader reads its first examples in one process "
        "without workers, so every read is counted (`read_file` wrapped); the old loader is measured on rank 0 "
        "(`ZipFile.read` wrapped). Batch diversity is over the world-size-1 batches."
    ),
    (
        "- 'Before' split shares and folders are the per-utterance hash split, computed with the new builder's "
        '`split_scheme="random_utterance"`, which is the old `random_split_of` unchanged.'
    ),
)


def format_section(results: dict, analysis: dict, info: dict, command: str) -> str:
    from benchmarks.data_pipeline import markdown_table

    manifest, after = info["manifest"], results["after"]
    n_train = sum(manifest["folders"].values())
    before = results.get("before")
    old_label = f"before ({before['commit']})" if before else "before"
    header = ["measure", old_label, f"after ({results['commit']})", "target"]
    validation = after["validation_pass"]
    rss = ", ".join(f"{n // 1000}k: {mib:,.0f}" for n, mib in validation["rss"])
    duplicated = "; ".join(
        f"{uid}: written {a:.2f} s then {b:.2f} s, index {after['splits']['duplicated'][uid]['index_s']:.2f} s, "
        f"read {after['splits']['duplicated'][uid]['read_s']:.2f} s"
        for uid, (a, b) in manifest["duplicated"].items()
    )
    lines = [
        SECTION,
        "",
        f"- Command: `{command}`",
        machine_line(),
        (
            f"- Corpus: {n_train:,} training utterances in {len(manifest['folders'])} folders across the five ZIPs "
            f"({', '.join(f'{n:,}' for n in manifest['zip_members'].values())} entries per ZIP, eval last), "
            f"{sum(manifest['eval'].values()):,} eval, {manifest['audio_hours']:,.0f} h of zero-valued audio, "
            f"{info['zip_bytes'] / MIB:,.0f} MiB of ZIPs, written in {info['seconds']:.0f} s; "
            f"{len(manifest['too_short']):,} clips under 0.5 s, {len(manifest['too_long']):,} over 30 s, "
            f"{len(manifest['duplicated'])} names stored twice."
        ),
        "",
        markdown_table(header, comparison_rows(results, analysis)),
        "",
        f"reads per kept example at world size 8: {analysis['derived']['reads_per_kept'][8]:.2f}",
        "",
        f"- Targets missed: {'; '.join(missed_targets(after)) or 'none'}.",
        (
            f"- Streamed validation pass (one process, no workers): {validation['examples']:,} examples in "
            f"{validation['seconds']:.0f} s; RSS MiB at each 10k examples: {rss}; `{validation['line']}`."
        ),
        f"- Duplicated names: {duplicated}.",
        *NOTES,
        "- Checks: "
        + "; ".join(f"{name}: {'pass' if ok else 'FAIL'}" for name, ok in analysis["checks"].items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--folders", type=int, default=623, help="training folders (the real corpus has 623)")
    parser.add_argument("--per_folder", type=int, default=1000, help="utterances per folder (the last one: 54.5 %%)")
    parser.add_argument("--eval_utterances", type=int, default=6000, help="eval_clean + eval_other")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kspon_full_scale")
    parser.add_argument(
        "--examples_per_rank",
        type=int,
        default=4000,
        help="examples each rank reads, in one process; 0: its whole part, through 2 workers per rank",
    )
    parser.add_argument("--before_checkout", type=Path, help="a checkout of the old data layer (e.g. 7b9d3ee)")
    parser.add_argument(
        "--before_python",
        type=Path,
        default=REPO / ".venv" / "bin" / "python",
        help="a Python with the old code's requirements (datasets < 4)",
    )
    parser.add_argument("--before_examples", type=int, default=400, help="examples rank 0 keeps in the old loader")
    parser.add_argument("--clean", action="store_true", help="remove the work dir (and its corpus) at the end")
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    parser.add_argument("--results_file", type=Path, default=RESULTS_FILE)
    parser.add_argument("--json", type=Path, help="also write every measured number here")
    parser.add_argument("--from_json", type=Path, help="only report: check and format the numbers a --json run wrote")
    for hidden in ("--_phase", "--_spec", "--_result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> tuple[dict, dict]:
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        info = ensure_corpus(workdir, args.folders, args.per_folder, args.eval_utterances)
        results = {"commit": git_commit(REPO), "after": run_after(workdir / "corpus", workdir, info, args)}
        if args.before_checkout:
            results["before"] = run_before(workdir / "corpus", workdir, args)
    finally:
        if args.clean:
            shutil.rmtree(workdir, ignore_errors=True)
    return info, results


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._phase:
        run_child(args._phase, json.loads(args._spec), args._result)
        return None
    sys.path.insert(0, str(REPO))  # run as `python benchmarks/full_scale.py`, the repo packages need not be installed
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        info = results.pop("corpus")
    else:
        info, results = measure(args)
        results["command"] = "python benchmarks/full_scale.py " + shlex.join(argv)
    analysis = analyse(results, info)
    for name, ok in analysis["checks"].items():
        print(f"  {'pass' if ok else 'FAIL'}: {name}")
    section = format_section(results, analysis, info, results["command"])
    print("\n" + section)
    if args.write_results:
        from benchmarks.data_pipeline import write_section

        write_section(args.results_file, section)
        print(f"updated the '{SECTION}' section of {args.results_file}")
    if args.json:
        args.json.write_text(json.dumps(results | {"corpus": info}, indent=2))
    results |= {"analysis": analysis, "corpus": info}
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome is None or all(outcome["analysis"]["checks"].values()) else 1)
