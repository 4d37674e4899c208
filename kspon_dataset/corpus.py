"""Finding, indexing, splitting and reading KsponSpeech as AI Hub ships it: raw ZIPs, extracted folders, or a mix.

Nothing is unzipped. Each archive's central directory is parsed once into a compact numpy index (one 74-byte record
per utterance: where its `.pcm` and `.txt` members start, their sizes and CRCs), cached beside the datasets cache and
memory-mapped by every later process, so 8 ranks x 4 workers share one copy. A member is read with `os.pread` at
the offset the index recorded, which needs no shared file position (safe across fork) and reads exactly the entry
that was measured, even when a ZIP stores a name twice.

Splits are decided from the index alone (`select`), before any audio is read: the 8:1:1 split assigns whole
folders, so the turns of one conversation never straddle train and test.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .normalize import decode_transcript, normalize_transcript

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
BYTES_PER_SECOND = 2 * SAMPLE_RATE  # headerless signed 16-bit little-endian mono

TRAIN_ARCHIVES = tuple(f"KsponSpeech_{i:02d}" for i in range(1, 6))
EVAL_ARCHIVE = "KsponSpeech_eval"
SCRIPTS_ARCHIVE = "KsponSpeech_scripts"
OFFICIAL_DEV_FOLDERS = frozenset({"KsponSpeech_0621", "KsponSpeech_0622", "KsponSpeech_0623"})
EVAL_CLEAN_LAST = 3000  # eval_clean is E00001-E03000, eval_other E03001-E06000
ZIP_LAST_FOLDERS = (124, 248, 372, 496, 623)  # KsponSpeech_01.zip holds folders 0001-0124, and so on
INDEX_IN_CHILDREN_BYTES = 256 << 20  # ZIPs this large together are indexed in child processes (`build_indexes`)
SHARD_SIZE = 1000  # one shard per 1,000-utterance folder; the 3,000-utterance eval folders are cut to this size

SPLIT_SCHEMES = ("random", "random_utterance", "official")
HOMEPAGE = "https://aihub.or.kr/aihubdata/data/view.do?dataSetSn=123"
_UTTERANCE = re.compile(r"^KsponSpeech_(E?)(\d{5,6})\.(pcm|txt)$")

# Reasons an utterance is dropped. The index decides the first ones before any read; the last ones need the bytes.
# Every reason but NOT_LOST is data loss and counts towards `max_skip_ratio`.
INDEX_REASONS = (
    "duplicate_id",  # the same id again (a second archive, an extracted copy, a name stored twice): read once
    "missing_audio",
    "missing_transcript",
    "transcript_too_long",  # over MAX_TRANSCRIPT_BYTES: no 30 s clip says that much; not worth normalising
    "zero_length",
    "too_short",
    "too_long",
)
READ_REASONS = ("undecodable_transcript", "empty_text", "bad_crc", "unreadable")
NOT_LOST = frozenset({"duplicate_id", "too_short", "too_long"})  # a copy that is read elsewhere, or the user's filter
MAX_TRANSCRIPT_BYTES = 4096  # real transcripts of a <= 30 s clip stay under ~600 bytes
SKIP_REASONS = INDEX_REASONS + READ_REASONS
# Below this many utterances one bad file already exceeds 1 %, so the ratio check waits for this many; the counts
# are logged either way.
MIN_UTTERANCES_FOR_SKIP_CHECK = 1_000

# One record per utterance. offset is the local header's offset in a ZIP (-1 in a folder), size -1 when absent.
_FILE_FIELDS = (("offset", "<i8"), ("csize", "<i8"), ("size", "<i8"), ("crc", "<u4"), ("method", "<u2"))
UTTERANCE_DTYPE = np.dtype(
    [("uid", "<i8"), ("folder", "<i4"), ("copies", "<u2")]
    + [(f"{kind}_{name}", t) for kind in ("pcm", "txt") for name, t in _FILE_FIELDS]
)
_INDEX_FORMAT = 1  # bump when UTTERANCE_DTYPE or the parsing changes: old cache files are then ignored
_PLAIN_FILE = 0xFFFF  # `method` of a member that is a file in an extracted folder


def uid_string(number: int) -> str:
    """The utterance id for an index number: train ids are positive, eval ids (`KsponSpeech_E…`) negative."""
    return f"KsponSpeech_{number:06d}" if number > 0 else f"KsponSpeech_E{-number:05d}"


def pcm_duration_seconds(num_bytes: int) -> float:
    # An odd byte count holds a dangling half-sample; it is dropped on read, so it does not count here either.
    return (num_bytes - num_bytes % 2) / BYTES_PER_SECOND


def pcm_to_wav(pcm: bytes) -> bytes:
    """Wrap headerless 16 kHz s16le mono PCM in a 44-byte WAV header, dropping a dangling odd byte."""
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        *(b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, SAMPLE_RATE, BYTES_PER_SECOND, 2, 16, b"data", len(pcm)),
    )
    return header + pcm


# --------------------------------------------------------------------------------------------------------------
# Locating the download


@dataclass(frozen=True)
class CorpusSources:
    """Where each part of the download lives: a .zip path or an extracted folder, per archive."""

    train: tuple[str, ...]  # training-audio sources, one per archive present (zip preferred over folder)
    eval: str | None
    scripts: str | None

    def fingerprint(self) -> str:
        """Changes when an archive appears, disappears or is replaced: part of the prepared cache's identity."""
        parts = [(s, *_stat(s)) for s in (*self.train, self.eval, self.scripts) if s is not None]
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def missing_data_dir_message(data_dir: str | None, config_name: str) -> str:
    return (
        f"KsponSpeech was not found at data_dir={data_dir!r}. The corpus needs a manual download: log in at "
        f"{HOMEPAGE}, download KsponSpeech_01.zip ... KsponSpeech_05.zip, KsponSpeech_eval.zip and "
        "KsponSpeech_scripts.zip into one folder (no need to unzip), then retry with\n"
        f'    load_kspon("/path/to/that/folder", "{config_name}")   # from kspon_dataset import load_kspon\n'
        f'    load_dataset("./kspon_dataset", "{config_name}", data_dir="/path/to/that/folder", '
        "trust_remote_code=True)   # datasets < 4"
    )


def find_sources(data_dir: str) -> CorpusSources:
    """Find each archive as a .zip or an extracted folder; refuse split downloads and broken ZIPs by name."""
    root = Path(data_dir)
    _refuse_unjoined_parts(root)
    train = tuple(src for name in TRAIN_ARCHIVES if (src := _archive(root, name)) is not None)
    _warn_about_missing_archives(root, train)
    eval_source = _archive(root, EVAL_ARCHIVE) or _first_dir(root, "eval_clean", "eval_other")
    scripts = _archive(root, SCRIPTS_ARCHIVE) or (str(root) if any(root.glob("*.trn")) else None)
    if not train and eval_source is None:
        raise FileNotFoundError(
            f"No KsponSpeech audio in {root}: expected {TRAIN_ARCHIVES[0]}.zip ... {TRAIN_ARCHIVES[-1]}.zip and/or "
            f"{EVAL_ARCHIVE}.zip (or their extracted folders). Found: {sorted(p.name for p in root.iterdir())[:20]}"
        )
    return CorpusSources(train=train, eval=eval_source, scripts=scripts)


def _warn_about_missing_archives(root: Path, found: tuple[str, ...]) -> None:
    present = {Path(source).name.removesuffix(".zip") for source in found}
    if not present:
        return
    for number, name in enumerate(TRAIN_ARCHIVES):
        if name in present:
            continue
        first, last = (0, *ZIP_LAST_FOLDERS)[number] + 1, ZIP_LAST_FOLDERS[number]
        others = sorted(p.name for p in root.glob(f"{name}.*") if p.name != f"{name}.zip")
        hint = f" Found {others}: rename or join it to {name}.zip." if others else f" Download it from {HOMEPAGE}."
        logger.warning(f"{name}.zip is not in {root}: its folders {first:04d}-{last:04d} are left out.{hint}")


def _archive(root: Path, name: str) -> str | None:
    """The .zip of an archive if present (checked to be a real ZIP), else its extracted folder, else None."""
    zip_path = root / f"{name}.zip"
    if zip_path.is_file():
        try:
            _central_directory(str(zip_path))
        except (BadArchive, OSError) as err:
            raise ValueError(
                f"{zip_path} is not a readable ZIP archive ({err}). It is probably truncated: compare its size with "
                f"the one on {HOMEPAGE} and download it again."
            ) from err
        return str(zip_path)
    folder = root / name
    return str(folder) if folder.is_dir() else None


def _first_dir(root: Path, *names: str) -> str | None:
    return str(root) if any((root / n).is_dir() for n in names) else None


def _refuse_unjoined_parts(root: Path) -> None:
    parts = sorted(root.glob("*.zip.part*"))
    unjoined = sorted({p.name.split(".zip.part")[0] for p in parts} - {p.stem for p in root.glob("*.zip")})
    if unjoined:
        name = unjoined[0]
        raise FileNotFoundError(
            f"{root} holds {name}.zip as split parts ({', '.join(p.name for p in parts if p.name.startswith(name))}) "
            f"but not the joined archive. Join the parts in numeric order, then retry:\n"
            f"    cat $(ls {root}/{name}.zip.part* | sort -V) > {root}/{name}.zip"
        )


# --------------------------------------------------------------------------------------------------------------
# The ZIP format, as far as reading members by offset needs it (ZIP64 included: each real archive is ~14 GB)


class BadArchive(Exception):
    pass


class CorruptMember(Exception):
    pass


_EOCD = struct.Struct("<4s4H2IH")  # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQ2H2I4Q")
_CENTRAL = struct.Struct("<4s6H3I5HII")  # one central-directory entry, 46 bytes
_LOCAL = struct.Struct("<4s5H3I2H")  # a member's local header, 30 bytes
_U32 = 0xFFFFFFFF


def _central_directory(path: str) -> tuple[bytes, int]:
    """The raw central directory of a ZIP and its entry count."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - (_EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            raise BadArchive("no end-of-central-directory record")
        _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        if count == 0xFFFF or cd_size == _U32 or cd_offset == _U32:
            locator = tail[at - _ZIP64_LOCATOR.size : at]
            if len(locator) != _ZIP64_LOCATOR.size or locator[:4] != b"PK\x06\x07":
                raise BadArchive("ZIP64 sizes without a ZIP64 locator")
            f.seek(_ZIP64_LOCATOR.unpack(locator)[2])
            record = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
            if record[0] != b"PK\x06\x06":
                raise BadArchive("broken ZIP64 end-of-central-directory record")
            count, cd_size, cd_offset = record[-3], record[-2], record[-1]
        if cd_offset + cd_size > size:
            raise BadArchive(f"central directory at {cd_offset:,}+{cd_size:,} lies past the end ({size:,} bytes)")
        f.seek(cd_offset)
        directory = f.read(cd_size)
    return directory, count


def _zip_members(path: str) -> Iterable[tuple[str, tuple[int, int, int, int, int]]]:
    """(name, (offset, compressed size, size, crc, method)) for each entry of the central directory."""
    directory, count = _central_directory(path)
    pos = 0
    for _ in range(count):
        if directory[pos : pos + 4] != b"PK\x01\x02":
            raise BadArchive(f"central directory entry {_} is damaged")
        (_, _, _, flags, method, _, _, crc, csize, size, name_len, extra_len, comment_len, *_, offset) = (
            _CENTRAL.unpack_from(directory, pos)
        )
        name_at = pos + _CENTRAL.size
        raw_name = directory[name_at : name_at + name_len]
        name = raw_name.decode("utf-8" if flags & 0x800 or raw_name.isascii() else "cp437")
        if _U32 in (csize, size, offset):
            extra = directory[name_at + name_len : name_at + name_len + extra_len]
            size, csize, offset = _zip64_sizes(extra, size, csize, offset)
        pos = name_at + name_len + extra_len + comment_len
        yield name, (offset, csize, size, crc, method)


def _zip64_sizes(extra: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    """The 64-bit values a ZIP64 extra field holds, in order, for whichever of them the entry set to 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        header_id, length = struct.unpack_from("<HH", extra, pos)
        if header_id == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            size = next(values) if size == _U32 else size
            csize = next(values) if csize == _U32 else csize
            offset = next(values) if offset == _U32 else offset
            return size, csize, offset
        pos += 4 + length
    raise BadArchive("ZIP64 sizes without a ZIP64 extra field")


@functools.cache
def _descriptor(path: str) -> int:
    # `os.pread` takes the offset with each call, so one descriptor serves threads and forked workers alike.
    return os.open(path, os.O_RDONLY)


def read_file(source: str, folder: str, uid: str, ext: str, record: np.void) -> bytes:
    """One member's bytes, checked against its size and CRC; reads at most what the index declared (plus a byte)."""
    method = int(record[f"{ext}_method"])
    if method == _PLAIN_FILE:
        with open(os.path.join(source, folder, f"{uid}.{ext}"), "rb") as f:
            return f.read()
    offset, csize, size = int(record[f"{ext}_offset"]), int(record[f"{ext}_csize"]), int(record[f"{ext}_size"])
    where = f"{source}:{folder}/{uid}.{ext}"
    fd = _descriptor(source)
    header = os.pread(fd, _LOCAL.size, offset)
    if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise CorruptMember(f"{where}: no local header at offset {offset:,}")
    name_len, extra_len = _LOCAL.unpack(header)[-2:]
    raw = os.pread(fd, csize, offset + _LOCAL.size + name_len + extra_len)
    if method == 0:
        data = raw
    elif method == 8:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, size + 1)  # a lying header cannot make us inflate more than this
        except zlib.error as err:
            raise CorruptMember(f"{where}: {err}") from err
    else:
        raise CorruptMember(f"{where}: compression method {method} is not stored or deflate")
    if len(data) != size or zlib.crc32(data) != int(record[f"{ext}_crc"]):
        raise CorruptMember(f"{where}: CRC or size mismatch ({len(data):,} bytes read, {size:,} declared)")
    return data


# --------------------------------------------------------------------------------------------------------------
# The index


@dataclass(frozen=True)
class ArchiveIndex:
    source: str
    folders: tuple[str, ...]  # member folder paths, e.g. "KsponSpeech_01/KsponSpeech_0001"
    records: np.ndarray  # UTTERANCE_DTYPE, sorted by (folder, uid)


def index_cache_dir() -> Path:
    if "KSPON_INDEX_CACHE" in os.environ:
        return Path(os.environ["KSPON_INDEX_CACHE"])
    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets"
    )
    return Path(datasets_cache) / "kspon_index"


@functools.cache
def index_source(source: str) -> ArchiveIndex:
    """The index of one archive or extracted folder, built once per machine for a ZIP and memory-mapped after."""
    if not source.endswith(".zip"):
        return _build_index(source, _folder_members(source))
    return _cached_index(source) or _build_and_save(source)


def build_indexes(sources: Iterable[str]) -> None:
    """Index every ZIP that has no cached index yet, each in a child process: the archives are indexed in parallel,
    and the building's transient memory never enters this process, which then only maps the finished index (~46 MB
    for the whole corpus)."""
    missing = [s for s in sources if s.endswith(".zip") and _cached_index(s) is None]
    if not missing or sum(_stat(s)[0] for s in missing) < INDEX_IN_CHILDREN_BYTES:  # small: not worth a start
        return
    logger.info(f"Indexing {len(missing)} archive(s) once for this machine, into {index_cache_dir()}")
    # Fresh interpreters rather than multiprocessing: spawn would re-run the caller's __main__, fork would copy
    # whatever threads (torch) the caller holds.
    code = f"import sys; from {__name__} import _build_and_save; _build_and_save(sys.argv[1])"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    children = [subprocess.Popen([sys.executable, "-c", code, source], env=env) for source in missing]
    try:
        failed = [source for source, child in zip(missing, children, strict=True) if child.wait() != 0]
    finally:
        for child in children:
            child.kill()
    if failed:  # index_source then builds them in this process
        logger.warning(f"Indexing {failed} in a child process failed; indexing in this process instead.")


def _cache_stem(source: str) -> Path:
    size, mtime = _stat(source)
    key = hashlib.sha1(f"{_INDEX_FORMAT}|{os.path.abspath(source)}|{size}|{mtime}".encode()).hexdigest()[:20]
    return index_cache_dir() / f"{Path(source).stem}-{key}"


def _cached_index(source: str) -> ArchiveIndex | None:
    stem = _cache_stem(source)
    try:
        folders = tuple(json.loads(stem.with_suffix(".json").read_text()))
        # Not np.load: datasets < 4 streaming swaps it for a version that hands numpy a file object, unmappable.
        return ArchiveIndex(source, folders, np.lib.format.open_memmap(stem.with_suffix(".npy"), mode="r"))
    except (OSError, ValueError):
        return None


def _build_and_save(source: str) -> ArchiveIndex:
    index = _build_index(source, _zip_members(source))
    _save_index(index, _cache_stem(source))
    return index


def _save_index(index: ArchiveIndex, stem: Path) -> None:
    """Write atomically; a read-only cache only costs the next process the indexing time."""
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(f".{stem.name}.{os.getpid()}")
        with open(f"{tmp}.npy", "wb") as f:
            np.save(f, index.records)
        Path(f"{tmp}.json").write_text(json.dumps(index.folders))
        os.replace(f"{tmp}.json", stem.with_suffix(".json"))
        os.replace(f"{tmp}.npy", stem.with_suffix(".npy"))
    except OSError as err:
        logger.warning(f"Could not cache the index of {index.source} in {stem.parent} ({err}); set KSPON_INDEX_CACHE.")


def _folder_members(root: str) -> Iterable[tuple[str, tuple[int, int, int, int, int]]]:
    """Files under an extracted folder. Links that lead outside it, and files that cannot be read, are left out by
    name (their utterance then counts as missing audio or transcript)."""
    inside = os.path.realpath(root) + os.sep
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            name = os.path.relpath(path, root).replace(os.sep, "/")
            if not _UTTERANCE.match(filename) and not filename.endswith(".trn"):
                continue
            if not os.path.realpath(path).startswith(inside):
                logger.warning(f"Leaving out {path}: it links to {os.path.realpath(path)}, outside {root}.")
                continue
            try:
                size = os.path.getsize(path)
            except OSError as err:  # a dangling link, a link loop
                logger.warning(f"Leaving out {path}: {err}")
                continue
            yield name, (-1, -1, size, 0, _PLAIN_FILE)


def _build_index(source: str, members: Iterable[tuple[str, tuple]]) -> ArchiveIndex:
    """Group members into utterances, sorted by (folder, id). The first copy of a name is the one kept and read;
    later copies are counted. Vectorised: a training ZIP has ~250,000 members."""
    folder_ids: dict[str, int] = {}
    folders, uids, is_pcm, entries = [], [], [], []
    for name, entry in members:
        folder, _, filename = name.rpartition("/")
        match = _UTTERANCE.match(filename)
        if match:
            eval_mark, number, ext = match.groups()
            folders.append(folder_ids.setdefault(folder, len(folder_ids)))
            uids.append(-int(number) if eval_mark else int(number))
            is_pcm.append(ext == "pcm")
            entries.append(entry)
    if not entries:
        return ArchiveIndex(source, (), np.zeros(0, UTTERANCE_DTYPE))
    names = sorted(folder_ids)
    rank = np.empty(len(names), np.int32)
    rank[[folder_ids[n] for n in names]] = np.arange(len(names), dtype=np.int32)
    folder = rank[np.array(folders, np.int64)]
    uid, pcm = np.array(uids, np.int64), np.array(is_pcm, bool)
    entry = np.array(entries, np.int64).reshape(-1, len(_FILE_FIELDS))
    # Sorted by folder, id, kind, then member order, the first row of each (folder, id, kind) is the copy kept.
    order = np.lexsort((np.arange(len(uid)), pcm, uid, np.abs(uid), folder))
    folder, uid, pcm, entry = folder[order], uid[order], pcm[order], entry[order]
    same_pair = (folder[1:] == folder[:-1]) & (uid[1:] == uid[:-1])
    new_pair, new_kind = np.r_[True, ~same_pair], np.r_[True, ~same_pair | (pcm[1:] != pcm[:-1])]
    pair = np.cumsum(new_pair) - 1
    records = np.zeros(int(new_pair.sum()), UTTERANCE_DTYPE)
    records["uid"], records["folder"] = uid[new_pair], folder[new_pair]
    for kind, of_kind in (("pcm", pcm), ("txt", ~pcm)):
        records[f"{kind}_offset"] = records[f"{kind}_csize"] = records[f"{kind}_size"] = -1
        first = new_kind & of_kind
        for column, (field, _) in enumerate(_FILE_FIELDS):
            records[f"{kind}_{field}"][pair[first]] = entry[first, column]
    records["copies"] = np.maximum(np.bincount(pair[pcm], minlength=len(records)) - 1, 0)
    return ArchiveIndex(source, tuple(names), records)


# --------------------------------------------------------------------------------------------------------------
# Splits


def folder_split(folder: str) -> str:
    """The 8:1:1 split of a recording folder, a pure function of its name.

    Folders are taken in blocks of ten consecutive numbers (0001-0010, 0011-0020, ...); a hash ranks the ten
    positions of each block, and the first goes to validation, the second to test. So every block gives 8:1:1
    exactly, whatever else was downloaded, and at the full 623 folders each share is within 0.3 points of its target.
    """
    match = re.search(r"(\d+)$", folder)
    if match is None:  # not an AI Hub folder name: fall back to a hash of the name
        return utterance_split(folder)
    number = int(match.group(1)) - 1
    block, position = divmod(number, 10)
    ranks = sorted(range(10), key=lambda p: _hash(f"kspon-folder-split|{block}|{p}"))
    role = ranks.index(position)
    return "validation" if role == 0 else "test" if role == 1 else "train"


def utterance_split(uid: str) -> str:
    """The blog's 8:1:1 split by a hash of each utterance id.

    It leaks: consecutive turns of one conversation land in train and in validation/test, so held-out scores on
    it are optimistic. Kept for comparison with earlier results (`split_scheme="random_utterance"`).
    """
    bucket = _hash(uid) % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def eval_split_of(uid: str) -> str:
    return "eval_clean" if int(uid.removeprefix("KsponSpeech_E")) <= EVAL_CLEAN_LAST else "eval_other"


@dataclass
class Selection:
    """The utterances of one split that pass the index checks, and the count of those that did not."""

    sources: tuple[str, ...]
    source: np.ndarray  # int16 index into `sources`, per utterance
    row: np.ndarray  # int64 row of that source's index
    folder: np.ndarray  # int32 folder of that source's index
    tally: Counter  # "seen", "candidates", and the INDEX_REASONS

    def __len__(self) -> int:
        return len(self.row)

    def utterance(self, i: int) -> tuple[str, str, str, np.void]:
        """(source, folder, uid, record) of the i-th selected utterance."""
        index = index_source(self.sources[self.source[i]])
        record = index.records[self.row[i]]
        return index.source, index.folders[record["folder"]], uid_string(int(record["uid"])), record

    def shards(self) -> list[tuple[int, int]]:
        """(start, stop) ranges of at most SHARD_SIZE utterances, never spanning two folders."""
        folder_key = self.source.astype(np.int64) << 32 | self.folder
        starts = [0, *np.flatnonzero(np.diff(folder_key)) + 1, len(self)]
        return [(a, min(a + SHARD_SIZE, b)) for lo, b in itertools.pairwise(starts) for a in range(lo, b, SHARD_SIZE)]


def select(
    sources: tuple[str, ...],
    split: str,
    scheme: str,
    *,
    min_duration: float,
    max_duration: float,
    keep_ids: frozenset[str] | None = None,
) -> Selection:
    """Pick a split's utterances from the indexes and apply every check the index can make, counting each drop."""
    parts = []
    for s, source in enumerate(sources):
        index = index_source(source)
        for f, folder in enumerate(index.folders):
            if _folder_in_split(folder.rpartition("/")[2], split, scheme):
                lo, hi = np.searchsorted(index.records["folder"], [f, f + 1])
                parts.append((s, np.arange(lo, hi)))
    source = np.concatenate([np.full(len(r), s, np.int16) for s, r in parts]) if parts else np.zeros(0, np.int16)
    row = np.concatenate([r for _, r in parts]) if parts else np.zeros(0, np.int64)
    records = _gather(sources, source, row)
    keep = np.ones(len(row), bool)
    if scheme == "random_utterance" or keep_ids is not None or split.startswith("eval_"):
        ids = [uid_string(int(u)) for u in records["uid"]]
        keep = np.array([_utterance_in_split(uid, split, scheme, keep_ids) for uid in ids], bool)
    source, row, records = source[keep], row[keep], records[keep]
    copies = int(records["copies"].sum())  # further copies of a name inside one folder
    reasons = _index_reasons(records, min_duration, max_duration)
    tally = Counter({reason: int((reasons == reason).sum()) for reason in INDEX_REASONS})
    tally.update(seen=len(row) + copies, duplicate_id=copies)
    ok = reasons == ""
    tally["candidates"] = int(ok.sum())
    return Selection(sources, source[ok], row[ok], records["folder"][ok].astype(np.int32), +tally)


def _gather(sources: tuple[str, ...], source: np.ndarray, row: np.ndarray) -> np.ndarray:
    records = np.zeros(len(row), UTTERANCE_DTYPE)
    for s, src in enumerate(sources):
        mask = source == s
        records[mask] = index_source(src).records[row[mask]]
    return records


def _folder_in_split(folder: str, split: str, scheme: str) -> bool:
    if split.startswith("eval_") or scheme == "random_utterance":
        return True
    if scheme == "official":
        return (folder in OFFICIAL_DEV_FOLDERS) == (split == "validation")
    return folder_split(folder) == split


def _utterance_in_split(uid: str, split: str, scheme: str, keep_ids: frozenset[str] | None) -> bool:
    if keep_ids is not None and uid not in keep_ids:
        return False
    if split.startswith("eval_"):
        return eval_split_of(uid) == split
    return scheme != "random_utterance" or utterance_split(uid) == split


def _index_reasons(records: np.ndarray, min_duration: float, max_duration: float) -> np.ndarray:
    """The first index-level reason to drop each utterance, "" for none."""
    reasons = np.full(len(records), "", dtype=object)
    _, first = np.unique(records["uid"], return_index=True)
    duplicate = np.ones(len(records), bool)
    duplicate[first] = False  # the same id in two folders or archives: the first source's copy is read
    seconds = (records["pcm_size"] - records["pcm_size"] % 2) / BYTES_PER_SECOND
    checks = (
        ("duplicate_id", duplicate),
        ("missing_audio", records["pcm_size"] < 0),
        ("missing_transcript", records["txt_size"] < 0),
        ("transcript_too_long", records["txt_size"] > MAX_TRANSCRIPT_BYTES),
        ("zero_length", seconds == 0),
        ("too_short", seconds < min_duration),
        ("too_long", seconds > max_duration),
    )
    for reason, mask in reversed(checks):  # the earliest check wins, so it is applied last
        reasons[mask] = reason
    return reasons


def read_script_ids(scripts_source: str, filename: str) -> frozenset[str]:
    """Utterance ids listed in a .trn file (`<path>.pcm :: <transcript>` per line)."""
    text = _read_named_file(scripts_source, filename).decode("utf-8-sig")
    return frozenset(
        line.split("::", 1)[0].strip().rpartition("/")[2].removesuffix(".pcm") for line in text.splitlines() if line
    )


def _read_named_file(source: str, filename: str) -> bytes:
    members = _zip_members(source) if source.endswith(".zip") else _folder_members(source)
    for name, (offset, csize, size, crc, method) in members:
        if name.rpartition("/")[2] == filename:
            if method == _PLAIN_FILE:
                return Path(source, name).read_bytes()
            record = np.zeros((), UTTERANCE_DTYPE)
            record["txt_offset"], record["txt_csize"], record["txt_size"] = offset, csize, size
            record["txt_crc"], record["txt_method"] = crc, method
            folder, _, stem = name.rpartition("/")
            return read_file(source, folder, stem.removesuffix(".txt"), "txt", record)
    raise FileNotFoundError(
        f"{filename} is not in {source}. split_scheme='official' needs KsponSpeech_scripts.zip from {HOMEPAGE}; "
        "use split_scheme='random' without it."
    )


# --------------------------------------------------------------------------------------------------------------
# Reading one utterance: the one reader behind the prepared, streamed and trainer paths


def read_utterance(selection: Selection, i: int, form: str) -> tuple[dict | None, str | None]:
    """{"id", "pcm", "text", "raw_text", "duration"} for the i-th selected utterance, or the reason it is dropped."""
    source, folder, uid, record = selection.utterance(i)
    try:
        raw_text = decode_transcript(read_file(source, folder, uid, "txt", record))
        if raw_text is None:
            return None, "undecodable_transcript"
        text = normalize_transcript(raw_text, form)
        if not text:
            return None, "empty_text"
        pcm = read_file(source, folder, uid, "pcm", record)
    except CorruptMember as err:
        logger.warning(f"Skipping {uid}: {err}")
        return None, "bad_crc"
    except OSError as err:
        logger.warning(f"Skipping {uid}: {err}")
        return None, "unreadable"
    duration = pcm_duration_seconds(len(pcm))
    return {"id": uid, "pcm": pcm, "text": text, "raw_text": raw_text, "duration": duration}, None


def kept_line(split: str, tally: Counter) -> str:
    """`train: kept 497,118 of 497,905 utterances (too_short: 612, ...)`, the one line each split ends with."""
    reasons = ", ".join(f"{r}: {tally[r]:,}" for r in (*SKIP_REASONS, "labels_too_long") if tally[r])
    return f"{split}: kept {tally['kept']:,} of {tally['seen']:,} utterances ({reasons or 'none skipped'})"


def check_skips(split: str, tally: Counter, max_skip_ratio: float) -> None:
    """Fail when too much was lost for reasons other than the duration filter."""
    seen = tally["seen"]
    lost = sum(tally[r] for r in SKIP_REASONS if r not in NOT_LOST)
    if seen >= MIN_UTTERANCES_FOR_SKIP_CHECK and lost / seen > max_skip_ratio:
        raise ValueError(
            f"{split}: {lost:,} of {seen:,} utterances ({lost / seen:.1%}) were unreadable or unusable "
            f"({kept_line(split, tally)}), more than max_skip_ratio={max_skip_ratio:.1%}. Check the download "
            "(re-download any archive named in the warnings above), or pass a larger max_skip_ratio if this loss is "
            "expected."
        )
