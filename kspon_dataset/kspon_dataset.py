"""KsponSpeech: 965 hours of Korean spontaneous speech, read lazily from the ZIPs that AI Hub distributes.

    load_dataset("./kspon_dataset", data_dir="/data/KsponSpeech", trust_remote_code=True)             # spelling
    load_dataset("./kspon_dataset", "phonetic", data_dir=..., split_scheme="official", trust_remote_code=True)
    load_dataset("./kspon_dataset", data_dir=..., streaming=True, trust_remote_code=True)

`data_dir` holds KsponSpeech_01.zip ... KsponSpeech_05.zip, KsponSpeech_eval.zip and KsponSpeech_scripts.zip, their
extracted folders, or a mix. Transcripts lose ETRI's tags (see normalize.py); clips outside 0.5-30 s are dropped;
every dropped utterance is counted by reason and logged per split.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np

from .archives import build_indexes
from .corpus import (
    HOMEPAGE,
    NOT_LOST,
    SAMPLE_RATE,
    SKIP_REASONS,
    SPLIT_SCHEMES,
    Selection,
    check_skips,
    find_sources,
    kept_line,
    missing_data_dir_message,
    pcm_to_wav,
    read_script_ids,
    read_utterance,
    select,
)
from .normalize import TRANSCRIPT_FORMS

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

_FORM_DESCRIPTIONS = {
    "spelling": "The spelling side of dual transcriptions: (70%)/(칠 십 퍼센트) -> 70% (ESPnet, SpeechBrain, Lhotse).",
    "phonetic": "The pronunciation side of dual transcriptions: (70%)/(칠 십 퍼센트) -> 칠 십 퍼센트 (kospeech).",
}
_VERSION = "2.0.0"  # 2.0: the 8:1:1 split assigns whole folders

logger = logging.getLogger(__name__)


@dataclass
class KsponSpeechConfig(datasets.BuilderConfig):
    """The config name is the transcript form; the fields below can be passed as `load_dataset` keywords."""

    # "random": 8:1:1 by recording folder; "random_utterance": 8:1:1 by utterance id (leaks conversations across
    # splits; the blog's split, kept for comparison); "official": train.trn / dev.trn
    split_scheme: str = "random"
    min_duration: float = 0.5  # seconds; shorter clips are dropped
    max_duration: float = 30.0  # seconds; longer clips are dropped (Whisper sees at most 30 s)
    max_skip_ratio: float = 0.01  # fail when more than this fraction is lost for reasons other than duration

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        # Also called from _split_generators: load_dataset's keywords are set on a copy, bypassing __post_init__.
        if self.name not in TRANSCRIPT_FORMS:
            raise ValueError(f"Unknown config {self.name!r}: choose a transcript form, one of {TRANSCRIPT_FORMS}.")
        if self.split_scheme not in SPLIT_SCHEMES:
            raise ValueError(f"split_scheme={self.split_scheme!r} is not one of {SPLIT_SCHEMES}.")
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(f"Need 0 <= min_duration < max_duration, got {self.min_duration}, {self.max_duration}.")
        if not 0 <= self.max_skip_ratio <= 1:
            raise ValueError(f"max_skip_ratio must lie in [0, 1], got {self.max_skip_ratio}.")


class KsponSpeech(datasets.GeneratorBasedBuilder):
    """KsponSpeech, read straight from AI Hub's ZIPs (or their extracted folders)."""

    VERSION = datasets.Version(_VERSION)
    BUILDER_CONFIG_CLASS = KsponSpeechConfig
    BUILDER_CONFIGS: ClassVar[list[KsponSpeechConfig]] = [
        KsponSpeechConfig(name=name, version=_VERSION, description=text) for name, text in _FORM_DESCRIPTIONS.items()
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
                    "audio": audio_feature(),
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

    def selections(self, data_dir: str | None = None) -> dict[str, Selection]:
        """Each split the download provides, decided from the archives' indexes before any audio is read."""
        self.config.validate()
        data_dir = os.path.expanduser(data_dir or self.config.data_dir or "")
        if not data_dir or not os.path.isdir(data_dir):
            raise FileNotFoundError(missing_data_dir_message(data_dir or None, self.config.name))
        sources, cfg = find_sources(data_dir), self.config
        build_indexes([*sources.train, *([sources.eval] if sources.eval else [])])
        wiring: dict[str, tuple[tuple[str, ...], frozenset[str] | None]] = {}  # split -> (sources, ids it lists)
        if cfg.split_scheme != "official":
            wiring.update({split: (sources.train, None) for split in ("train", "validation", "test")})
        elif sources.train:
            if sources.scripts is None:
                raise FileNotFoundError(
                    f"split_scheme='official' needs KsponSpeech_scripts.zip (train.trn, dev.trn) in {data_dir}; "
                    f"download it from {_HOMEPAGE}, or use split_scheme='random'."
                )
            wiring["train"] = (sources.train, None)
            wiring["validation"] = (sources.train, read_script_ids(sources.scripts, "dev.trn"))
        if sources.eval is not None:
            wiring.update({split: ((sources.eval,), None) for split in ("eval_clean", "eval_other")})
        durations = {"min_duration": cfg.min_duration, "max_duration": cfg.max_duration}
        chosen = {
            split: select(split_sources, split, cfg.split_scheme, keep_ids=keep_ids, **durations)
            for split, (split_sources, keep_ids) in wiring.items()
        }
        for split, selection in chosen.items():
            check_skips(split, selection.tally, cfg.max_skip_ratio)
        return {split: selection for split, selection in chosen.items() if len(selection)}

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        selections = self.selections(self.config.data_dir or dl_manager.manual_dir)
        for split, selection in selections.items():
            tally = selection.tally + Counter(kept=selection.tally["candidates"])
            logger.info(f"{kept_line(split, tally)} before reading; unreadable files are logged as they are met")
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"selection": selection, "shards": selection.shards()})
            for split, selection in selections.items()
        ]

    def _generate_examples(self, selection: Selection, shards: list[tuple[int, int]]) -> Iterator[tuple[str, dict]]:
        for start, stop in shards:
            for i in range(start, stop):
                example, reason = read_utterance(selection, i, self.config.name)
                if example is None:
                    logger.info(f"Skipping {selection.utterance(i)[2]}: {reason}")
                    continue
                wav = {"path": f"{example['id']}.wav", "bytes": pcm_to_wav(example.pop("pcm"))}
                # float32 as the feature stores it, so streamed and prepared examples are equal on every release
                yield example["id"], example | {"audio": wav, "duration": float(np.float32(example["duration"]))}


@functools.lru_cache(maxsize=1)
def audio_feature() -> datasets.Audio | dict:
    """`datasets.Audio` wherever datasets can encode it; else the very same Arrow storage as a plain struct.

    datasets >= 4 encodes and decodes audio through torchcodec, which needs FFmpeg. Without a working one, the
    column holds the same 16 kHz WAV bytes as `{"bytes", "path"}`: cast it to `datasets.Audio` once torchcodec
    works, or read the bytes with soundfile. The trainer reads the bytes itself and never needs torchcodec.
    """
    if int(datasets.__version__.split(".")[0]) < 4:
        return datasets.Audio(sampling_rate=SAMPLE_RATE)
    try:
        import torchcodec.encoders  # noqa: F401
    except (ImportError, OSError, RuntimeError) as err:
        logger.info(f"torchcodec does not load ({type(err).__name__}); `audio` holds WAV bytes as {{bytes, path}}.")
        return {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    return datasets.Audio(sampling_rate=SAMPLE_RATE)


def load_kspon(
    data_dir: str,
    name: str = "spelling",
    *,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    with_counts: bool = False,
    **config_kwargs,
):
    """Every split of KsponSpeech, on any datasets release (3.6 through 5.x: no script loading needed).

        from kspon_dataset import load_kspon
        splits = load_kspon("/data/KsponSpeech", "spelling", split_scheme="random")             # prepared (Arrow)
        stream = load_kspon("/data/KsponSpeech", streaming=True)                                  # read on the fly

    The prepared cache is keyed by this package's code and by the archives read (their sizes and modification
    times), so a new or replaced ZIP is read again instead of serving stale data. Each prepared split ends with one
    "kept N of M (reasons)" line; `with_counts=True` also returns those counts, per split.
    """
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(missing_data_dir_message(data_dir, name))
    builder = KsponSpeech(
        config_name=name,
        data_dir=data_dir,
        cache_dir=cache_dir,
        hash=_cache_key(data_dir),
        **config_kwargs,
    )
    if streaming:
        return builder.as_streaming_dataset()
    builder.download_and_prepare(num_proc=num_proc)
    splits = builder.as_dataset()
    counts = {
        split: _count_prepared(split, selection, splits[split], builder.config)
        for split, selection in builder.selections().items()
    }
    return (splits, counts) if with_counts else splits


def _count_prepared(split: str, selection: Selection, prepared: datasets.Dataset, config) -> Counter:
    """One line for the whole split, whatever num_proc was: what the index dropped, plus what reading dropped."""
    tally = selection.tally + Counter(kept=len(prepared))
    if len(prepared) < len(selection):  # rare (a damaged member, an undecodable transcript): re-read those to say why
        kept_ids = set(prepared["id"])
        for i in range(len(selection)):
            if selection.utterance(i)[2] not in kept_ids:
                tally[read_utterance(selection, i, config.name)[1] or "bad_crc"] += 1
    lost = any(tally[reason] for reason in SKIP_REASONS if reason not in NOT_LOST)
    (logger.warning if lost else logger.info)(kept_line(split, tally))
    check_skips(split, tally, config.max_skip_ratio)
    return tally


def _cache_key(data_dir: str) -> str:
    """This package's code and the archives it reads: either changing means preparing again."""
    digest = hashlib.sha1(find_sources(data_dir).fingerprint().encode())
    digest.update(repr(audio_feature()).encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
