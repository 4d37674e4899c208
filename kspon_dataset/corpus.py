"""Finding and reading KsponSpeech as AI Hub ships it: the raw ZIPs, the extracted folders, or a mix of both.

Nothing is unzipped. A ZIP's central directory is read once per process and kept open (keyed by process id, so a
forked `num_proc` worker or DataLoader worker never shares a file offset with its parent), and each member is read
on demand. Membership of a split is decided from the utterance id alone, so every split, scheme and process count
sees the same utterances.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 16_000
BYTES_PER_SECOND = 2 * SAMPLE_RATE  # headerless signed 16-bit little-endian mono

TRAIN_ARCHIVES = tuple(f"KsponSpeech_{i:02d}" for i in range(1, 6))
EVAL_ARCHIVE = "KsponSpeech_eval"
SCRIPTS_ARCHIVE = "KsponSpeech_scripts"
OFFICIAL_DEV_FOLDERS = frozenset({"KsponSpeech_0621", "KsponSpeech_0622", "KsponSpeech_0623"})
EVAL_CLEAN_LAST = 3000  # eval_clean is E00001-E03000, eval_other E03001-E06000
SHARD_SIZE = 1000  # one shard per 1,000-utterance folder; the 3,000-utterance eval folders are cut to this size

HOMEPAGE = "https://aihub.or.kr/aihubdata/data/view.do?dataSetSn=123"
_UTTERANCE = re.compile(r"^(KsponSpeech_(?:E\d{5}|\d{6}))\.(pcm|txt)$")

# Reasons an utterance is dropped. Duration reasons are a filter the user chose; every other reason is data loss
# and counts towards `max_skip_ratio`.
DURATION_REASONS = frozenset({"too_short", "too_long"})
SKIP_REASONS = (
    "missing_audio",
    "missing_transcript",
    "undecodable_transcript",
    "empty_text",
    "zero_length",
    "too_short",
    "too_long",
    "bad_crc",
    "duplicate_id",
)


@dataclass(frozen=True)
class Member:
    """One file of an utterance, inside a ZIP or under a folder."""

    source: str  # the .zip file or the extracted folder it lives in
    name: str  # the ZIP member name or the path relative to the folder
    size: int  # uncompressed bytes


@dataclass(frozen=True)
class Utterance:
    uid: str
    pcm: Member | None  # None when only the transcript is there
    txt: Member | None
    extra_copies: int = 0  # further members with this id in the same folder (a ZIP may hold a name twice)


def pcm_duration_seconds(num_bytes: int) -> float:
    # An odd byte count holds a dangling half-sample; it is dropped on read, so it does not count here either.
    return (num_bytes - num_bytes % 2) / BYTES_PER_SECOND


def random_split_of(uid: str) -> str:
    """The 8:1:1 split of an id, from a stable hash: identical across runs, machines, processes and streaming."""
    bucket = int.from_bytes(hashlib.sha1(uid.encode()).digest()[:8], "big") % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def eval_split_of(uid: str) -> str:
    return "eval_clean" if int(uid.removeprefix("KsponSpeech_E")) <= EVAL_CLEAN_LAST else "eval_other"


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


def missing_data_dir_message(data_dir: str | None, config_name: str) -> str:
    return (
        f"KsponSpeech was not found at data_dir={data_dir!r}. The corpus needs a manual download: log in at "
        f"{HOMEPAGE}, download KsponSpeech_01.zip ... KsponSpeech_05.zip, KsponSpeech_eval.zip and "
        "KsponSpeech_scripts.zip into one folder (no need to unzip), then retry with\n"
        f'    load_dataset("./kspon_dataset", "{config_name}", data_dir="/path/to/that/folder", '
        "trust_remote_code=True)"
    )


def find_sources(data_dir: str) -> CorpusSources:
    """Find each archive as a .zip or an extracted folder; refuse split downloads and broken ZIPs by name."""
    root = Path(data_dir)
    _refuse_unjoined_parts(root)
    train = tuple(src for name in TRAIN_ARCHIVES if (src := _archive(root, name)) is not None)
    eval_source = _archive(root, EVAL_ARCHIVE) or _first_dir(root, "eval_clean", "eval_other")
    scripts = _archive(root, SCRIPTS_ARCHIVE) or (str(root) if any(root.glob("*.trn")) else None)
    if not train and eval_source is None:
        raise FileNotFoundError(
            f"No KsponSpeech audio in {root}: expected {TRAIN_ARCHIVES[0]}.zip ... {TRAIN_ARCHIVES[-1]}.zip and/or "
            f"{EVAL_ARCHIVE}.zip (or their extracted folders). Found: {sorted(p.name for p in root.iterdir())[:20]}"
        )
    return CorpusSources(train=train, eval=eval_source, scripts=scripts)


def _archive(root: Path, name: str) -> str | None:
    """The .zip of an archive if present (checked to be a real ZIP), else its extracted folder, else None."""
    zip_path = root / f"{name}.zip"
    if zip_path.is_file():
        _check_zip(zip_path)
        return str(zip_path)
    folder = root / name
    return str(folder) if folder.is_dir() else None


def _first_dir(root: Path, *names: str) -> str | None:
    return str(root) if any((root / n).is_dir() for n in names) else None


def _check_zip(path: Path) -> None:
    try:
        open_zip(str(path))
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"{path} is not a readable ZIP archive ({err}). It is probably truncated: compare its size with the one "
            f"on {HOMEPAGE} and download it again."
        ) from err


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
# Indexing and reading


# One entry per archive of the download (5 training, eval, scripts). A smaller cache re-reads ZIP directories when
# shuffled shards hop between archives: 2.7 s for each of KsponSpeech_0N.zip's ~250k members, ~370 times an epoch.
# The price is the directories in memory, ~230 MiB per training archive per process.
_ARCHIVES_PER_DOWNLOAD = len(TRAIN_ARCHIVES) + 2


@functools.lru_cache(maxsize=_ARCHIVES_PER_DOWNLOAD)
def _open_zip_in_process(path: str, pid: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def open_zip(path: str) -> zipfile.ZipFile:
    return _open_zip_in_process(path, os.getpid())


@functools.lru_cache(maxsize=_ARCHIVES_PER_DOWNLOAD)
def _index_in_process(source: str, pid: int) -> dict[str, list[Utterance]]:
    folders: dict[str, dict[str, dict[str, Member]]] = {}
    copies: Counter[tuple[str, str]] = Counter()
    for member in _list_members(source):
        folder, _, filename = member.name.rpartition("/")
        match = _UTTERANCE.match(filename)
        if not match:
            continue
        uid, ext = match.groups()
        files = folders.setdefault(folder, {}).setdefault(uid, {})
        if ext in files:
            copies[folder, uid] += ext == "pcm"
        else:
            files[ext] = member
    return {
        folder: [
            Utterance(uid, files.get("pcm"), files.get("txt"), copies[folder, uid])
            for uid, files in sorted(utterances.items())
        ]
        for folder, utterances in sorted(folders.items())
    }


def index_source(source: str) -> dict[str, list[Utterance]]:
    """Utterances of a source grouped by folder (the member's parent path), sorted by id.

    The first copy of a name wins, as `unzip` would keep it; later copies are only counted.
    """
    return _index_in_process(source, os.getpid())


def _list_members(source: str) -> Iterator[Member]:
    if source.endswith(".zip"):
        for info in open_zip(source).infolist():
            if not info.is_dir():
                yield Member(source, info.filename, info.file_size)
        return
    for dirpath, _, filenames in os.walk(source):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            yield Member(source, os.path.relpath(path, source).replace(os.sep, "/"), os.path.getsize(path))


def read_member(member: Member) -> bytes:
    """The member's bytes; raises `CorruptMember` when the ZIP's CRC or deflate stream does not check out."""
    if not member.source.endswith(".zip"):
        with open(os.path.join(member.source, member.name), "rb") as f:
            return f.read()
    try:
        return open_zip(member.source).read(member.name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise CorruptMember(f"{member.source}:{member.name}: {err}") from err


class CorruptMember(Exception):
    pass


def list_shards(sources: tuple[str, ...], folder_filter=None) -> list[tuple[str, str, int, int]]:
    """(source, folder, start, stop) shards of at most SHARD_SIZE utterances, one folder used once across sources.

    A folder present both in a ZIP and extracted beside it (a half-finished unzip) is read from the first source,
    the ZIP, so no utterance is generated twice across shards.
    """
    shards, seen_folders = [], set()
    for source in sources:
        for folder, utterances in index_source(source).items():
            folder_name = folder.rpartition("/")[2]
            if folder_name in seen_folders or (folder_filter is not None and not folder_filter(folder_name)):
                continue
            seen_folders.add(folder_name)
            shards.extend(
                (source, folder, start, min(start + SHARD_SIZE, len(utterances)))
                for start in range(0, len(utterances), SHARD_SIZE)
            )
    return shards


def read_script_ids(scripts_source: str, filename: str) -> list[str]:
    """Utterance ids listed in a .trn file (`<path>.pcm :: <transcript>` per line), read line by line."""
    member = next((m for m in _list_members(scripts_source) if m.name.rpartition("/")[2] == filename), None)
    if member is None:
        raise FileNotFoundError(
            f"{filename} is not in {scripts_source}. split_scheme='official' needs KsponSpeech_scripts.zip from "
            f"{HOMEPAGE}; use split_scheme='random' without it."
        )
    text = read_member(member).decode("utf-8-sig")
    return [
        line.split("::", 1)[0].strip().rpartition("/")[2].removesuffix(".pcm") for line in text.splitlines() if line
    ]
