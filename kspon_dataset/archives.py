"""Where the bytes of KsponSpeech live: AI Hub's ZIPs (or extracted folders), indexed once and read by offset.

Each archive's central directory (ZIP64 aware: each real archive is ~14 GB) is parsed into a numpy index of one
74-byte record per utterance: where its `.pcm` and `.txt` members start, their sizes and CRCs. The index is cached
beside the datasets cache and memory-mapped by every later process, so 8 ranks x 4 workers share one copy. A member
is read with `os.pread` at the recorded offset, which needs no shared file position (safe across fork) and reads
exactly the entry that was measured, even when a ZIP stores a name twice. `zipfile` is not used: it keeps a ZipInfo
object per member (~1 GB for the five training ZIPs in every process) and reads the last copy of a repeated name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INDEX_IN_CHILDREN_BYTES = 256 << 20  # ZIPs this large together are indexed in child processes (`build_indexes`)
_UTTERANCE = re.compile(r"^KsponSpeech_(E?)(\d{5,6})\.(pcm|txt)$")

# One record per utterance. offset is the local header's offset in a ZIP (-1 in a folder), size -1 when absent.
_FILE_FIELDS = (("offset", "<i8"), ("csize", "<i8"), ("size", "<i8"), ("crc", "<u4"), ("method", "<u2"))
UTTERANCE_DTYPE = np.dtype(
    [("uid", "<i8"), ("folder", "<i4"), ("copies", "<u2")]
    + [(f"{kind}_{name}", t) for kind in ("pcm", "txt") for name, t in _FILE_FIELDS]
)
_INDEX_FORMAT = 2  # bump when UTTERANCE_DTYPE or the parsing changes: old cache files are then ignored
_PLAIN_FILE = 0xFFFF  # `method` of a member that is a file in an extracted folder


def uid_string(number: int) -> str:
    """The utterance id for an index number: train ids are positive, eval ids (`KsponSpeech_E…`) negative."""
    return f"KsponSpeech_{number:06d}" if number > 0 else f"KsponSpeech_E{-number:05d}"


def file_stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


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


def check_zip(path: str) -> None:
    """Raise `BadArchive` (or OSError) unless the file ends in a readable ZIP central directory."""
    _central_directory(path)


def source_fingerprint(source: str) -> tuple[int, str]:
    """(bytes, sha256) of an archive: its size and the digest of its central directory, which lists every member's
    name, size and CRC (a few MB of a ~14 GB ZIP, so cheap to read); of an extracted folder, its files' total size and
    the digest of their names and sizes. Unlike the index cache's key, no mtime: copies of one file agree."""
    digest = hashlib.sha256()
    if source.endswith(".zip"):
        digest.update(_central_directory(source)[0])
        return os.path.getsize(source), digest.hexdigest()
    total = 0
    for name, (*_, size, _crc, _method) in sorted(_folder_members(source)):
        digest.update(f"{name}\0{size}\n".encode())
        total += size
    return total, digest.hexdigest()


def _zip_members(path: str) -> Iterable[tuple[str, tuple[int, int, int, int, int]]]:
    """(name, (offset, compressed size, size, crc, method)) for each entry of the central directory."""
    directory, count = _central_directory(path)
    pos = 0
    unsafe = []
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
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            unsafe.append(name)  # sorted before the real folder of the same name, it would be the copy kept
            continue
        yield name, (offset, csize, size, crc, method)
    if unsafe:
        logger.warning(
            f"Leaving out {len(unsafe)} member(s) of {path} named with an absolute path or '..' (first: {unsafe[0]}); "
            "AI Hub's archives have none. Download the archive again if it should be the original."
        )


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
    if not missing or sum(file_stat(s)[0] for s in missing) < INDEX_IN_CHILDREN_BYTES:  # small: not worth a start
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
    size, mtime = file_stat(source)
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


def read_named_file(source: str, filename: str, hint: str = "") -> bytes:
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
    raise FileNotFoundError(f"{filename} is not in {source}.{hint}")
