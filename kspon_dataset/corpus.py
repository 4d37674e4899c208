"""Finding KsponSpeech in a download, splitting it, and reading one utterance: the layer every path shares.

`find_sources` locates each archive (ZIP or extracted folder) and says by name what is missing. `select` decides a
split from the archives' indexes (`archives.py`) before any audio is read, counting every utterance it drops and
why; the 8:1:1 split assigns whole recording folders, so the turns of one conversation never straddle train and
test. `read_utterance` is the one reader behind the prepared, streamed and trainer paths.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .archives import (
    UTTERANCE_DTYPE,
    BadArchive,
    CorruptMember,
    check_zip,
    file_stat,
    index_source,
    read_file,
    read_named_file,
    source_fingerprint,
    uid_string,
)
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
SHARD_SIZE = 1000  # one shard per 1,000-utterance folder; the 3,000-utterance eval folders are cut to this size

SPLIT_SCHEMES = ("random", "random_utterance", "official")
HOMEPAGE = "https://aihub.or.kr/aihubdata/data/view.do?dataSetSn=123"
CORPUS_HOURS = 965  # the training archives, as AI Hub and Bang et al. (2020) give it

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


def pcm_duration_seconds(num_bytes: int) -> float:
    # An odd byte count holds a dangling half-sample; it is dropped on read, so it does not count here either.
    return (num_bytes - num_bytes % 2) / BYTES_PER_SECOND


def pcm_samples(pcm: bytes | memoryview) -> np.ndarray:
    """int16 samples of headerless 16 kHz s16le mono PCM, without a copy; a dangling odd byte is dropped.

    The one PCM decoder: the trainer's streamed reads, `kspon_whisper.audio` (.pcm files, the loading script's WAVs)
    and transcription all read samples through it.
    """
    return np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)


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
        parts = [(s, *file_stat(s)) for s in (*self.train, self.eval, self.scripts) if s is not None]
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def missing_data_dir_message(data_dir: str | None, config_name: str) -> str:
    return (
        f"KsponSpeech was not found at data_dir={data_dir!r}. The corpus needs a manual download: log in at "
        f"{HOMEPAGE}, download KsponSpeech_01.zip ... KsponSpeech_05.zip, KsponSpeech_eval.zip and "
        "KsponSpeech_scripts.zip into one folder (no need to unzip), then retry with\n"
        f'    load_kspon("/path/to/that/folder", "{config_name}")   # from kspon_dataset import load_kspon\n'
        f'    load_dataset("./kspon_dataset", "{config_name}", data_dir="/path/to/that/folder", '
        "trust_remote_code=True)   # datasets < 4"
    )


def find_sources(data_dir: str, warn: bool = True) -> CorpusSources:
    """Find each archive as a .zip or an extracted folder; refuse split downloads and broken ZIPs by name."""
    root = Path(data_dir)
    _refuse_unjoined_parts(root)
    train = tuple(src for name in TRAIN_ARCHIVES if (src := _archive(root, name)) is not None)
    if warn:
        _warn_about_missing_archives(root, train)
    eval_source = _archive(root, EVAL_ARCHIVE) or _first_dir(root, "eval_clean", "eval_other")
    scripts = _archive(root, SCRIPTS_ARCHIVE) or (str(root) if any(root.glob("*.trn")) else None)
    if not train and eval_source is None:
        raise FileNotFoundError(
            f"No KsponSpeech audio in {root}: expected {TRAIN_ARCHIVES[0]}.zip ... {TRAIN_ARCHIVES[-1]}.zip and/or "
            f"{EVAL_ARCHIVE}.zip (or their extracted folders). Found: {sorted(p.name for p in root.iterdir())[:20]}"
        )
    return CorpusSources(train=train, eval=eval_source, scripts=scripts)


def corpus_fingerprint(data_dir: str) -> dict[str, tuple[int, str]]:
    """{archive: (bytes, sha256)} for every source `find_sources` uses, named as in data_dir ("KsponSpeech_05.zip",
    "." for transcripts or eval folders found at its top): machines whose copies agree here read the same corpus."""
    sources = find_sources(data_dir, warn=False)  # the warnings come once, when the data is loaded
    found = {s for s in (*sources.train, sources.eval, sources.scripts) if s is not None}
    return {os.path.relpath(s, data_dir): source_fingerprint(s) for s in sorted(found)}


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
            check_zip(str(zip_path))
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


_SCRIPTS_HINT = f" split_scheme='official' needs KsponSpeech_scripts.zip from {HOMEPAGE}; use 'random' without it."


def read_script_ids(scripts_source: str, filename: str) -> frozenset[str]:
    """Utterance ids listed in a .trn file (`<path>.pcm :: <transcript>` per line)."""
    text = read_named_file(scripts_source, filename, hint=_SCRIPTS_HINT).decode("utf-8-sig")
    return frozenset(
        line.split("::", 1)[0].strip().rpartition("/")[2].removesuffix(".pcm") for line in text.splitlines() if line
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
