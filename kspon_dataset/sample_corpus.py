"""Write a small synthetic corpus laid out exactly like KsponSpeech as AI Hub distributes it.

    python -m kspon_dataset.sample_corpus --out kspon_dataset/sample --num_utterances 150 --voice espeak --seed 0
    python -m kspon_dataset.sample_corpus --out /tmp/kspon_big --num_utterances 5000 --voice tone

Layout (all four ZIP kinds, ZIP_DEFLATED, fixed timestamps so the same seed gives the same bytes):
- `KsponSpeech_0K.zip` (K = 1..5) hold `KsponSpeech_0K/KsponSpeech_FFFF/KsponSpeech_NNNNNN.pcm`, a `.txt` beside
  each; utterance N lives in folder ceil(N / 1000), and zip K holds folders 0001-0124, 0125-0248, 0249-0372, 0373-0496,
  0497-0623. Folders 0621-0623 are the official dev set.
- `KsponSpeech_eval.zip` holds `KsponSpeech_eval/eval_clean/KsponSpeech_E00001.pcm` (E00001-E03000) and
  `.../eval_other/KsponSpeech_E03001.pcm` (E03001-E06000).
- `KsponSpeech_scripts.zip` holds `train.trn`, `dev.trn`, `eval_clean.trn`, `eval_other.trn`: UTF-8 lines
  `<path>.pcm :: <raw transcript>`. dev.trn lists a strict subset of folders 0621-0623, as the real one lists
  2,545 of 3,000.
Audio is headerless 16 kHz signed 16-bit little-endian mono PCM; `.txt` transcripts are CP949, some with CRLF.

Voices: `espeak` has espeak-ng's Korean voice read the pronunciation side of each transcript (needs `espeak-ng` and
`sox`); `tone` writes a few deterministic sine tones per utterance, fast enough for corpora of thousands.

Sentences come from `sample_sentences.txt`, real-style tagged transcripts written for this repo (not taken from
KsponSpeech). Each is used at most once per corpus and the dev/eval sentences are drawn from a pool the training split
never touches; corpora larger than the bank join two pool sentences into one utterance.
"""

import argparse
import itertools
import math
import random
import re
import shutil
import subprocess
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .corpus import (
    EVAL_ARCHIVE,
    EVAL_CLEAN_LAST,
    SAMPLE_RATE,
    SCRIPTS_ARCHIVE,
    ZIP_LAST_FOLDERS,
    eval_split_of,
    pcm_samples,
)
from .normalize import normalize_transcript

SENTENCE_BANK = tuple(Path(__file__).with_name("sample_sentences.txt").read_text(encoding="utf-8").splitlines())
ZIP_DATE_TIME = (2018, 7, 1, 0, 0, 0)  # fixed, so two runs with one seed write identical archives
DEV_FOLDERS = (621, 622, 623)
# Three folders per training zip (first, middle, last, so the 0124 | 0125 boundaries are exercised), ordered so
# that dealing utterances round-robin reaches all five zips first.
TRAIN_FOLDERS = (1, 125, 249, 373, 497, 62, 186, 310, 434, 558, 124, 248, 372, 496, 620)
# Utterances the loader must drop, kept out of the bank so a random draw never produces them.
EMPTY_TEXT_CASE = "b/ n/"
TOO_SHORT_CASE = "네"
TOO_SHORT_SECONDS = 0.3
MIN_SECONDS = 0.7  # every other clip is at least this long
VOICES = ("espeak", "tone")
LAYOUTS = ("zip", "dir")  # dir: the zips extracted
_UID = re.compile(r"KsponSpeech_(\d{6}|E\d{5})")


@dataclass(frozen=True)
class Utterance:
    """One clip and its transcript, as written into the archives."""

    uid: str  # KsponSpeech_000001 (training / dev) or KsponSpeech_E00001 (eval)
    raw_text: str  # tagged transcript, as in the .txt and .trn files
    pcm: bytes  # headerless 16 kHz s16le mono
    txt: bytes | None = None  # exact .txt bytes (a bad encoding, say); None writes raw_text as CP949
    crlf: bool = False  # end the .txt with CRLF, as many AI Hub files do
    omit_txt: bool = False  # write the .pcm without its .txt

    def txt_bytes(self) -> bytes:
        if self.txt is not None:
            return self.txt
        return self.raw_text.encode("cp949") + (b"\r\n" if self.crlf else b"")


@dataclass
class CorpusSummary:
    """What `write_corpus` wrote; the counts are utterances (one .pcm each)."""

    out_dir: Path
    per_zip: dict[str, int]  # KsponSpeech_01.zip .. KsponSpeech_eval.zip (in dir layout: the extracted archive)
    per_split: dict[str, int]  # train (0001-0620), dev (0621-0623), dev_trn (listed in dev.trn), eval_clean/other
    must_skip: dict[str, str]  # uid -> why the loader has to drop it
    audio_seconds: float
    total_bytes: int

    def format(self) -> str:
        size = f"{self.audio_seconds:.1f} s of audio, {self.total_bytes / 1e6:.2f} MB"
        lines = [
            f"wrote {sum(self.per_zip.values())} utterances ({size}) to {self.out_dir}",
            "  per zip:   " + ", ".join(f"{name} {count}" for name, count in self.per_zip.items()),
            "  per split: " + ", ".join(f"{name} {count}" for name, count in self.per_split.items()),
        ]
        return "\n".join(lines + [f"  must skip: {uid} ({reason})" for uid, reason in self.must_skip.items()])


def member_path(uid: str, eval_root: str = EVAL_ARCHIVE) -> str:
    """Archive path of an utterance without extension, e.g. KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001."""
    match = _UID.fullmatch(uid)
    if match is None:
        raise ValueError(f"utterance id {uid!r} is neither KsponSpeech_NNNNNN nor KsponSpeech_ENNNNN")
    if match[1].startswith("E"):
        return f"{eval_root}/{eval_split_of(uid)}/{uid}"
    folder = math.ceil(int(match[1]) / 1000)
    if not 1 <= folder <= ZIP_LAST_FOLDERS[-1]:
        raise ValueError(f"{uid} falls in folder {folder}, outside KsponSpeech's 0001-{ZIP_LAST_FOLDERS[-1]:04d}")
    zip_number = 1 + sum(folder > last for last in ZIP_LAST_FOLDERS)
    return f"KsponSpeech_{zip_number:02d}/KsponSpeech_{folder:04d}/{uid}"


def write_archive(out_dir: Path, archive: str, members: dict[str, bytes], layout: str) -> None:
    """Write members in the given order as `out_dir/archive`, deflated with a fixed date, names ending in "/" as
    folders (layout "zip"); or extracted under `out_dir` (layout "dir")."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not a corpus layout; use one of {', '.join(LAYOUTS)}")
    if layout == "dir":
        for name, data in members.items():
            if not name.endswith("/"):
                (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / name).write_bytes(data)
        return
    with zipfile.ZipFile(out_dir / archive, "w") as zipped:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            is_dir = name.endswith("/")
            info.external_attr = ((0o40755 if is_dir else 0o644) << 16) | (0x10 if is_dir else 0)
            info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
            zipped.writestr(info, data)


def write_utterances(
    out_dir: Path, utterances: Iterable[Utterance], layout: str = "zip", eval_root: str = EVAL_ARCHIVE
) -> dict[str, int]:
    """Write clips and transcripts into their AI Hub archives (folders first, as zip tools write them, then the
    utterances sorted by id); returns utterances per archive."""
    archives: dict[str, dict[str, bytes]] = {}
    for utt in sorted(utterances, key=lambda utt: utt.uid):
        path = member_path(utt.uid, eval_root)
        top = EVAL_ARCHIVE if utt.uid.startswith("KsponSpeech_E") else path.split("/", 1)[0]
        members = archives.setdefault(f"{top}.zip", {})
        parts = path.split("/")
        for depth in range(1, len(parts)):
            members.setdefault("/".join(parts[:depth]) + "/", b"")
        members[f"{path}.pcm"] = utt.pcm
        if not utt.omit_txt:
            members[f"{path}.txt"] = utt.txt_bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    for archive, members in archives.items():
        write_archive(out_dir, archive, members, layout)
    return {archive: sum(name.endswith(".pcm") for name in members) for archive, members in archives.items()}


def write_scripts(out_dir: Path, scripts: dict[str, list[Utterance]], layout: str = "zip") -> None:
    """Write `{name}.trn` per entry (train, dev, eval_clean, eval_other) into KsponSpeech_scripts.zip."""
    members = {
        f"{name}.trn": "".join(f"{member_path(utt.uid)}.pcm :: {utt.raw_text}\n" for utt in utts).encode("utf-8")
        for name, utts in scripts.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_archive(out_dir, f"{SCRIPTS_ARCHIVE}.zip", members, layout)


def espeak_pcm(text: str) -> bytes:
    """espeak-ng's Korean voice reading `text`, as 16 kHz s16le mono with the silence around it trimmed."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"voice 'espeak' needs {' and '.join(missing)}: apt-get install -y espeak-ng sox, or use --voice tone"
        )
    # -s 190 words/min (default 175) keeps the committed sample under 5 MB and still sounds like speech.
    espeak = ["espeak-ng", "-v", "ko", "-s", "190", "--stdout"]
    wav = subprocess.run(espeak, input=text.encode(), capture_output=True, check=True)
    # -D: no dither, whose random noise would make two runs differ.
    sox = f"sox -D -V1 -t wav - -t raw -r {SAMPLE_RATE} -e signed -b 16 -c 1 -L -".split()
    raw = subprocess.run(sox, input=wav.stdout, capture_output=True, check=True).stdout
    samples = pcm_samples(raw)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    if loud.size:  # keep 80 ms around the speech
        margin = int(0.08 * SAMPLE_RATE)
        samples = samples[max(0, loud[0] - margin) : loud[-1] + margin]
    return samples.tobytes()


def tone_pcm(text: str, uid: str, seed: int = 0) -> bytes:
    """A few sine tones with a little noise, 0.4 s plus 0.07 s per character: deterministic per (uid, seed)."""
    rng = np.random.default_rng([zlib.crc32(uid.encode()), seed])
    n_chars = max(1, len(text.replace(" ", "")))
    num_samples = int((0.4 + 0.07 * n_chars) * SAMPLE_RATE)
    n_tones = max(1, n_chars // 3)
    freqs = np.repeat(rng.uniform(120.0, 400.0, n_tones), math.ceil(num_samples / n_tones))[:num_samples]
    phase = 2 * np.pi * np.cumsum(freqs) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(np.arange(num_samples), np.arange(num_samples)[::-1]) / 800)
    signal = envelope * (0.3 * np.sin(phase) + 0.02 * rng.standard_normal(num_samples))
    return (signal * 32767).astype("<i2").tobytes()


def make_pcm(uid: str, raw_text: str, voice: str, seed: int) -> bytes:
    """Audio for one utterance: the pronunciation side is what a speaker would have said."""
    spoken = normalize_transcript(raw_text, "phonetic")
    if raw_text == EMPTY_TEXT_CASE:
        spoken = "음"  # breath and noise: some sound, no words
    pcm = espeak_pcm(spoken) if voice == "espeak" else tone_pcm(spoken, uid, seed)
    if raw_text == TOO_SHORT_CASE:
        return pcm[: int(TOO_SHORT_SECONDS * SAMPLE_RATE) * 2]
    # Pad with silence to well above the loader's 0.5 s floor, so only the deliberate clip is too short.
    missing = max(0, int(MIN_SECONDS * SAMPLE_RATE) - len(pcm) // 2)
    return bytes(missing // 2 * 2) + pcm + bytes((missing - missing // 2) * 2)


def _sentence_stream(pool: list[str], rng: random.Random) -> Iterable[str]:
    """Each pool sentence once, then distinct ordered pairs of them, so no line repeats within a corpus."""
    yield from pool
    pairs = [f"{first} {second}" for first, second in itertools.permutations(pool, 2)]
    rng.shuffle(pairs)
    yield from pairs


def _draw_sentences(n_train: int, n_held_out: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Training and held-out (dev + eval) sentences from disjoint halves of the shuffled bank."""
    bank = list(SENTENCE_BANK)
    rng.shuffle(bank)
    if n_train + n_held_out <= len(bank):
        n_pool = n_held_out
    else:  # pools can hold p * p lines (singles plus ordered pairs): size the held-out pool by its share
        n_pool = max(math.isqrt(n_held_out - 1) + 1, round(len(bank) * n_held_out / (n_train + n_held_out)))
    held_pool, train_pool = bank[:n_pool], bank[n_pool:]
    if len(train_pool) ** 2 < n_train:
        raise ValueError(
            f"{n_train} training utterances need more sentences than the bank can make; "
            f"use --num_utterances {len(train_pool) ** 2 + n_held_out} or fewer"
        )
    train = list(itertools.islice(_sentence_stream(train_pool, rng), n_train))
    return train, list(itertools.islice(_sentence_stream(held_pool, rng), n_held_out))


def _split_sizes(num_utterances: int) -> tuple[int, int, int]:
    """Bank sentences for train, dev and each eval subset: 10% per eval subset, 8% dev, at least one per folder."""
    n_eval = max(1, round(0.1 * num_utterances))
    n_dev = max(len(DEV_FOLDERS), round(0.08 * num_utterances))
    return num_utterances - 2 * n_eval - n_dev - 2, n_dev, n_eval  # 2: the skip cases


def _spread_over_folders(count: int, folders: tuple[int, ...]) -> list[str]:
    """Deal utterances round-robin over folders; each folder numbers its own from (folder - 1) * 1000 + 1."""
    if count > 1000 * len(folders):
        raise ValueError(f"{count} utterances overflow {len(folders)} folders of 1,000; use fewer utterances")
    next_in_folder = {folder: (folder - 1) * 1000 + 1 for folder in folders}
    uids = []
    for i in range(count):
        folder = folders[i % len(folders)]
        uids.append(f"KsponSpeech_{next_in_folder[folder]:06d}")
        next_in_folder[folder] += 1
    return uids


def plan_corpus(num_utterances: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Split name -> [(uid, raw transcript)] for train, dev (folders 0621-0623), eval_clean and eval_other."""
    n_train, n_dev, n_eval = _split_sizes(num_utterances)
    if n_train < len(ZIP_LAST_FOLDERS):
        enough = next(n for n in itertools.count(num_utterances) if _split_sizes(n)[0] >= len(ZIP_LAST_FOLDERS))
        raise ValueError(
            f"num_utterances={num_utterances} leaves {n_train} training utterances, fewer than the "
            f"{len(ZIP_LAST_FOLDERS)} training zips; use --num_utterances {enough} or more"
        )
    train_text, held_text = _draw_sentences(n_train, n_dev + 2 * n_eval, random.Random(seed))
    train_text = [EMPTY_TEXT_CASE, TOO_SHORT_CASE, *train_text]  # first, so they land in folders 0001 and 0125
    eval_clean, eval_other = held_text[n_dev : n_dev + n_eval], held_text[n_dev + n_eval :]
    return {
        "train": list(zip(_spread_over_folders(len(train_text), TRAIN_FOLDERS), train_text, strict=True)),
        "dev": list(zip(_spread_over_folders(n_dev, DEV_FOLDERS), held_text[:n_dev], strict=True)),
        "eval_clean": [(f"KsponSpeech_E{1 + i:05d}", text) for i, text in enumerate(eval_clean)],
        "eval_other": [(f"KsponSpeech_E{EVAL_CLEAN_LAST + 1 + i:05d}", text) for i, text in enumerate(eval_other)],
    }


def write_corpus(
    out_dir: Path | str,
    num_utterances: int = 150,
    voice: str = "espeak",
    seed: int = 0,
    layout: str = "zip",
    progress: bool = False,
) -> CorpusSummary:
    """Generate a whole sample corpus (all five training zips, eval and scripts) and return what it holds."""
    if voice not in VOICES or layout not in LAYOUTS:
        raise ValueError(f"voice={voice!r}, layout={layout!r}: use a voice of {VOICES} and a layout of {LAYOUTS}")
    out_dir = Path(out_dir)
    plan = plan_corpus(num_utterances, seed)
    rows = [(split, uid, text) for split, split_rows in plan.items() for uid, text in split_rows]
    crlf_rng = random.Random(seed + 1)
    by_split: dict[str, list[Utterance]] = {split: [] for split in plan}
    for split, uid, text in tqdm(rows, desc=f"{voice} audio", unit="utt", disable=not progress):
        by_split[split].append(Utterance(uid, text, make_pcm(uid, text, voice, seed), crlf=crlf_rng.random() < 0.4))
    for utts in by_split.values():  # .trn files list utterances in path order, as AI Hub's do
        utts.sort(key=lambda utt: utt.uid)
    per_zip = write_utterances(out_dir, itertools.chain(*by_split.values()), layout)
    # The real dev.trn lists 2,545 of the 3,000 utterances in folders 0621-0623: leave out about 15%, at least one.
    dev = by_split["dev"]
    left_out = set(random.Random(seed + 2).sample(range(len(dev)), max(1, round(0.15 * len(dev)))))
    write_scripts(out_dir, {**by_split, "dev": [utt for i, utt in enumerate(dev) if i not in left_out]}, layout)
    skips = {EMPTY_TEXT_CASE: "empty_text", TOO_SHORT_CASE: f"too_short ({TOO_SHORT_SECONDS} s)"}
    return CorpusSummary(
        out_dir,
        per_zip,
        per_split={split: len(utts) for split, utts in by_split.items()} | {"dev_trn": len(dev) - len(left_out)},
        must_skip={utt.uid: skips[utt.raw_text] for utt in by_split["train"] if utt.raw_text in skips},
        audio_seconds=sum(len(utt.pcm) // 2 for utts in by_split.values() for utt in utts) / SAMPLE_RATE,
        total_bytes=sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file()),
    )


def main(argv: list[str] | None = None) -> CorpusSummary:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the archives into")
    parser.add_argument("--num_utterances", type=int, default=150, help="total, the 2 clips the loader drops included")
    parser.add_argument("--voice", choices=VOICES, default="espeak")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = write_corpus(args.out, args.num_utterances, args.voice, args.seed, progress=True)
    print(f"{summary.format()}\ngenerated in {time.perf_counter() - start:.1f} s")
    return summary


if __name__ == "__main__":
    main()
