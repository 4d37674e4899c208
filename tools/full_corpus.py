"""KsponSpeech at its real member count, with zero-valued audio: the corpus the full-scale benchmarks measure on.

    from tools.full_corpus import ensure_corpus
    info = ensure_corpus(workdir)  # workdir/corpus (~350 MB, ~40 s on 2 cores), reused by later calls of that shape

Five training ZIPs hold 623 folders of 1,000 utterances (the last one 545) where AI Hub puts them, then the eval ZIP
(6,000) and the scripts ZIP. Clips are zeros of realistic lengths (log-normal around 4.5 s, a few under 0.5 s and
over 30 s), which deflate ~1,000:1. Three names are stored twice, the second copy longer. Each training ZIP has over
65,535 entries (a ZIP64 end record) and gives its second half of members ZIP64 offsets, as the ~14 GB archives do.
"""

import json
import math
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np

REAL_LAST_FOLDERS = (124, 248, 372, 496, 623)  # last folder of KsponSpeech_01.zip ... _05.zip
LAST_FOLDER_SHARE = 0.545  # folder 0623 holds 545 utterances
DEV_FOLDERS = ("KsponSpeech_0621", "KsponSpeech_0622", "KsponSpeech_0623")
SHORT_SHARE, LONG_SHARE = 0.002, 0.0005  # clips the 0.5-30 s filter must drop

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


def ensure_corpus(workdir: Path, folders: int = 623, per_folder: int = 1000, eval_utterances: int = 6000) -> dict:
    """workdir/corpus and its manifest ({"shape", "manifest", "seconds", "zip_bytes"}), written unless an earlier
    call left one of the same shape (workdir/corpus.json)."""
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
