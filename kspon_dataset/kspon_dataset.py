"""KsponSpeech: 965 hours of Korean spontaneous speech, read lazily from the ZIPs that AI Hub distributes.

    load_dataset("./kspon_dataset", data_dir="/data/KsponSpeech", trust_remote_code=True)             # spelling
    load_dataset("./kspon_dataset", "phonetic", data_dir=..., split_scheme="official", trust_remote_code=True)
    load_dataset("./kspon_dataset", data_dir=..., streaming=True, trust_remote_code=True)

`data_dir` holds KsponSpeech_01.zip ... KsponSpeech_05.zip, KsponSpeech_eval.zip and KsponSpeech_scripts.zip, their
extracted folders, or a mix. Transcripts lose ETRI's tags (see normalize.py); clips outside 0.5-30 s are dropped;
every dropped utterance is counted by reason and logged per split.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets

from .corpus import (
    DURATION_REASONS,
    HOMEPAGE,
    OFFICIAL_DEV_FOLDERS,
    SAMPLE_RATE,
    SKIP_REASONS,
    CorruptMember,
    eval_split_of,
    find_sources,
    index_source,
    list_shards,
    missing_data_dir_message,
    pcm_duration_seconds,
    pcm_to_wav,
    random_split_of,
    read_member,
    read_script_ids,
)
from .normalize import decode_transcript, normalize_transcript

_CITATION = """\
@article{bang2020ksponspeech,
  title   = {KsponSpeech: Korean Spontaneous Speech Corpus for Automatic Speech Recognition},
  author  = {Bang, Jeong-Uk and Yun, Seung and Kim, Seung-Hi and Choi, Mu-Yeol and Lee, Min-Kyu and
             Kim, Yeo-Jeong and Kim, Dong-Hyun and Park, Jun and Lee, Young-Jik and Kim, Sang-Hun},
  journal = {Applied Sciences},
  volume  = {10},
  number  = {19},
  pages   = {6936},
  year    = {2020},
  doi     = {10.3390/app10196936}
}
"""

_DESCRIPTION = """\
KsponSpeech is a corpus of about 622,000 utterances (965 hours) of Korean spontaneous conversation between two
speakers on open topics, recorded by ETRI and distributed by AI Hub. Audio is 16 kHz 16-bit mono PCM; transcripts
follow ETRI's tagged notation (dual spelling/pronunciation transcriptions, filler and noise tags), from which this
script produces clean `text` in the spelling (default) or phonetic form.
"""

_HOMEPAGE = HOMEPAGE

_LICENSE = (
    "AI Hub terms of use: free for research and development by registered users; redistribution of the data is "
    "not allowed."
)

_TRANSCRIPT_FORMS = {
    "spelling": "The spelling side of dual transcriptions: (70%)/(칠 십 퍼센트) -> 70% (ESPnet, SpeechBrain, Lhotse).",
    "phonetic": "The pronunciation side of dual transcriptions: (70%)/(칠 십 퍼센트) -> 칠 십 퍼센트 (kospeech).",
}
_SPLIT_SCHEMES = ("random", "official")
_VERSION = "1.0.0"

# Below this many utterances one bad file already exceeds 1 %, so the ratio check waits for this many; the counts
# are logged either way.
MIN_UTTERANCES_FOR_SKIP_CHECK = 1_000

logger = datasets.logging.get_logger(__name__)


@dataclass
class KsponSpeechConfig(datasets.BuilderConfig):
    """The config name is the transcript form; the fields below can be passed as `load_dataset` keywords."""

    split_scheme: str = "random"  # "random": 8:1:1 by a hash of the id; "official": train.trn / dev.trn
    min_duration: float = 0.5  # seconds; shorter clips are dropped
    max_duration: float = 30.0  # seconds; longer clips are dropped (Whisper sees at most 30 s)
    max_skip_ratio: float = 0.01  # fail when more than this fraction is lost for reasons other than duration

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        # Also called from _split_generators: load_dataset's keywords are set on a copy, bypassing __post_init__.
        if self.name not in _TRANSCRIPT_FORMS:
            raise ValueError(f"Unknown config {self.name!r}: choose one of {sorted(_TRANSCRIPT_FORMS)}.")
        if self.split_scheme not in _SPLIT_SCHEMES:
            raise ValueError(f"split_scheme={self.split_scheme!r} is not one of {_SPLIT_SCHEMES}.")
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(f"Need 0 <= min_duration < max_duration, got {self.min_duration}, {self.max_duration}.")
        if not 0 <= self.max_skip_ratio <= 1:
            raise ValueError(f"max_skip_ratio must lie in [0, 1], got {self.max_skip_ratio}.")


class KsponSpeech(datasets.GeneratorBasedBuilder):
    """KsponSpeech, read straight from AI Hub's ZIPs (or their extracted folders)."""

    VERSION = datasets.Version(_VERSION)
    BUILDER_CONFIG_CLASS = KsponSpeechConfig
    BUILDER_CONFIGS: ClassVar[list[KsponSpeechConfig]] = [
        KsponSpeechConfig(name=name, version=_VERSION, description=text) for name, text in _TRANSCRIPT_FORMS.items()
    ]
    DEFAULT_CONFIG_NAME = "spelling"
    DEFAULT_WRITER_BATCH_SIZE = 256  # examples hold raw audio; keep the Arrow writer's buffer small

    @property
    def manual_download_instructions(self) -> str:
        return missing_data_dir_message(None, self.config.name)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=datasets.Features(
                {
                    "id": datasets.Value("string"),
                    "audio": datasets.Audio(sampling_rate=SAMPLE_RATE),
                    "text": datasets.Value("string"),
                    "raw_text": datasets.Value("string"),
                    "duration": datasets.Value("float32"),
                }
            ),
            supervised_keys=("audio", "text"),
            homepage=_HOMEPAGE,
            license=_LICENSE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        self.config.validate()
        data_dir = self.config.data_dir or dl_manager.manual_dir
        if not data_dir or not os.path.isdir(os.path.expanduser(data_dir)):
            raise FileNotFoundError(missing_data_dir_message(data_dir, self.config.name))
        sources = find_sources(os.path.expanduser(data_dir))

        wiring: dict[str, tuple[list, tuple[str, ...] | None]] = {}  # split -> (shards, the ids it lists, if any)
        if self.config.split_scheme == "random":
            shards = list_shards(sources.train)
            wiring.update({split: (shards, None) for split in ("train", "validation", "test")})
        elif sources.train:
            if sources.scripts is None:
                raise FileNotFoundError(
                    f"split_scheme='official' needs KsponSpeech_scripts.zip (train.trn, dev.trn) in {data_dir}; "
                    f"download it from {_HOMEPAGE}, or use split_scheme='random'."
                )
            dev_ids = tuple(read_script_ids(sources.scripts, "dev.trn"))
            wiring["train"] = (list_shards(sources.train, lambda folder: folder not in OFFICIAL_DEV_FOLDERS), None)
            wiring["validation"] = (list_shards(sources.train, OFFICIAL_DEV_FOLDERS.__contains__), dev_ids)
        if sources.eval is not None:
            eval_shards = list_shards((sources.eval,))
            wiring.update({split: (eval_shards, None) for split in ("eval_clean", "eval_other")})

        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"shards": shards, "split": split, "keep_ids": keep_ids})
            for split, (shards, keep_ids) in wiring.items()
            if shards
        ]

    def _generate_examples(self, shards, split, keep_ids, report_dir=None) -> Iterator[tuple[str, dict]]:
        in_split = self._membership(split, keep_ids)
        tally, seen = Counter(), set()
        for source, folder, start, stop in shards:
            for utt in index_source(source)[folder][start:stop]:
                if not in_split(utt.uid):
                    continue
                tally["seen"] += 1 + utt.extra_copies
                tally["duplicate_id"] += utt.extra_copies
                example, reason = self._read_utterance(utt, seen)
                tally[reason or "kept"] += 1
                if example is not None:
                    tally["odd_byte_count"] += utt.pcm.size % 2
                    yield utt.uid, example
        self._report(split, tally, report_dir)

    def _read_utterance(self, utt, seen: set[str]) -> tuple[dict | None, str | None]:
        """The example for one utterance, or the reason it is skipped. Cheap checks come before any audio read."""
        if utt.uid in seen:
            return None, "duplicate_id"
        seen.add(utt.uid)
        if utt.pcm is None:
            return None, "missing_audio"
        if utt.txt is None:
            return None, "missing_transcript"
        duration = pcm_duration_seconds(utt.pcm.size)
        if duration == 0:
            return None, "zero_length"
        if duration < self.config.min_duration:
            return None, "too_short"
        if duration > self.config.max_duration:
            return None, "too_long"
        try:
            raw_text = decode_transcript(read_member(utt.txt))
            if raw_text is None:
                return None, "undecodable_transcript"
            text = normalize_transcript(raw_text, self.config.name)
            if not text:
                return None, "empty_text"
            wav = pcm_to_wav(read_member(utt.pcm))
        except CorruptMember as err:
            logger.warning(f"Skipping {utt.uid}: {err}")
            return None, "bad_crc"
        example = {
            "id": utt.uid,
            "audio": {"path": f"{utt.uid}.wav", "bytes": wav},
            "text": text,
            "raw_text": raw_text,
            "duration": duration,
        }
        return example, None

    def _membership(self, split: str, keep_ids: tuple[str, ...] | None) -> Callable[[str], bool]:
        if keep_ids is not None:
            return frozenset(keep_ids).__contains__
        if split.startswith("eval_"):
            return lambda uid: eval_split_of(uid) == split
        if self.config.split_scheme == "random":
            return lambda uid: random_split_of(uid) == split
        return lambda uid: True  # official train: its shards are exactly the folders train.trn lists

    def _report(self, split: str, tally: Counter, report_dir: str | None) -> None:
        """Prepared mode: leave the counts in report_dir for the split-level check in `_prepare_split`.

        Streaming calls the generator once per shard and has no end of split, so the counts accumulate per process
        and the check runs on the running total.
        """
        if report_dir is not None:
            Path(report_dir, f"{uuid.uuid4().hex}.json").write_text(json.dumps(tally))
            return
        running = self.__dict__.setdefault("_streamed", {}).setdefault(split, Counter())
        running.update(tally)
        quiet = not _lost(tally)  # one line per shard would flood the log; speak up only when data was lost
        _check_skips(f"{split} (streamed so far)", running, self.config.max_skip_ratio, quiet=quiet)

    def _prepare_split(self, split_generator: datasets.SplitGenerator, **kwargs) -> None:
        # Workers of `num_proc` each see part of a split; they leave their counts in report_dir so the split's
        # "kept N of M" and the max_skip_ratio check cover the whole split.
        with tempfile.TemporaryDirectory(prefix="kspon-report-") as report_dir:
            split_generator.gen_kwargs["report_dir"] = report_dir
            try:
                super()._prepare_split(split_generator, **kwargs)
            finally:
                del split_generator.gen_kwargs["report_dir"]
            tally = sum((Counter(json.loads(p.read_text())) for p in Path(report_dir).glob("*.json")), Counter())
        _check_skips(split_generator.name, tally, self.config.max_skip_ratio)


def _lost(tally: Counter) -> int:
    return sum(tally[r] for r in SKIP_REASONS if r not in DURATION_REASONS)


def _check_skips(split: str, tally: Counter, max_skip_ratio: float, quiet: bool = False) -> None:
    seen, kept = tally["seen"], tally["kept"]
    if not seen:
        return
    reasons = ", ".join(f"{r}: {tally[r]:,}" for r in SKIP_REASONS if tally[r]) or "none skipped"
    if tally["odd_byte_count"]:
        reasons += f"; {tally['odd_byte_count']:,} kept with an odd byte count, last byte dropped"
    (logger.info if quiet else logger.warning)(f"{split}: kept {kept:,} of {seen:,} utterances ({reasons})")
    lost = _lost(tally)
    if seen >= MIN_UTTERANCES_FOR_SKIP_CHECK and lost / seen > max_skip_ratio:
        raise ValueError(
            f"{split}: {lost:,} of {seen:,} utterances ({lost / seen:.1%}) were unreadable or unusable ({reasons}), "
            f"more than max_skip_ratio={max_skip_ratio:.1%}. Check the download (re-download any archive named in "
            f"the warnings above), or pass a larger max_skip_ratio to load_dataset if this loss is expected."
        )
