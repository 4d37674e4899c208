"""Speech sets beside KsponSpeech: any Hugging Face dataset (a Hub id, a local `audiofolder` or Parquet folder) as an
evaluation set of the trainer (`--eval_datasets`) and of `eval_whisper.py` (`--dataset_name`).

A set is named as transformers' `run_speech_recognition_seq2seq.py` and distil-whisper name one: a dataset (Hub id or
local path), its config, a split, the text column and the audio column. Several sets are joined with "+", each of
the other values given once for all or once per set:

    --dataset_name google/fleurs+/data/my_clips --dataset_config_name ko_kr+ --eval_split_name test+train \\
        --text_column_name transcription+text

`datasets.load_dataset` loads (and caches) each set, and its audio column is cast to `Audio(sampling_rate=16000)`,
so datasets decodes and resamples any rate. Their transcripts are normalised by the `plain` rule
(`plain_transcript`), not by KsponSpeech's: ETRI's annotation tags do not occur in other corpora, and a "/" or "+"
there is text. Scoring then applies the one normalisation of `metrics.py` to both sides, as for KsponSpeech.
A set whose split or columns do not exist, or whose audio column holds no audio, is refused at start-up with the
columns it has.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from kspon_dataset.corpus import SAMPLE_RATE

from .data import Split

logger = logging.getLogger(__name__)

PLAIN = "plain"
PLAIN_TEXT_NORMALIZATION = (
    "Unicode NFC, whitespace runs collapsed to one space, ends stripped; nothing else is removed or rewritten "
    "(KsponSpeech's ETRI tag stripping does not apply). NFC, not NFKC: NFKC turns compatibility jamo such as ㅋ into "
    "conjoining jamo that Whisper never writes."
)


def plain_transcript(text: str | None) -> str:
    """The `plain` normalisation of another corpus's transcript (see PLAIN_TEXT_NORMALIZATION)."""
    return " ".join(unicodedata.normalize("NFC", text or "").split())


@dataclass(frozen=True)
class SpeechSet:
    """One dataset split to read, named as the ecosystem's --dataset_name ... flags name it."""

    name: str  # Hub id or local path (an audiofolder or a folder of Parquet files)
    config: str | None
    split: str
    text_column: str
    audio_column: str

    @property
    def local(self) -> bool:
        return Path(self.name).exists()

    @property
    def label(self) -> str:
        """Its name in log lines, metrics.json, predictions_<label>.jsonl and the card: fleurs-ko_kr-test."""
        base = Path(self.name).name if self.local else self.name.split("/")[-1]
        return re.sub(r"[^\w.-]+", "_", "-".join(part for part in (base, self.config, self.split) if part))

    @property
    def card_name(self) -> str:
        """A Hub id as it is; a local folder by its name alone (a card carries no local paths)."""
        return Path(self.name).name if self.local else self.name


def speech_sets(
    names: str | None,
    configs: str | None,
    splits: str,
    text_columns: str,
    audio_columns: str,
    *,
    options: tuple[str, str, str, str, str],
) -> list[SpeechSet]:
    """The sets of "+"-joined option values; `options` names the five options, for the errors."""
    if not names:
        return []
    values = [names, configs or "", splits, text_columns, audio_columns]
    parts = [value.split("+") for value in values]
    count = len(parts[0])
    for option, part in zip(options[1:], parts[1:], strict=True):
        if len(part) not in (1, count):
            raise ValueError(
                f"{option} has {len(part)} '+'-joined values for the {count} sets of {options[0]} {names}: give one "
                "value for all of them, or one per set."
            )
    columns = [part * count if len(part) == 1 else part for part in parts]
    sets = [
        SpeechSet(name, config or None, split, text, audio)
        for name, config, split, text, audio in zip(*columns, strict=True)
    ]
    labels = [s.label for s in sets]
    for s in sets:
        if not all((s.name, s.split, s.text_column, s.audio_column)):
            raise ValueError(f"{options[0]} {names}: an empty value in the '+'-joined options of {s.name or 'a set'}.")
        if labels.count(s.label) > 1:
            raise ValueError(f"{options[0]}: {s.name} is named twice ({s.label}); give each set once.")
    return sets


class SpeechRows(torch.utils.data.Dataset):
    """A loaded set as the batcher reads it: `{"id", "audio" (float32, 16 kHz mono), "text"}` per row, or
    `{"id", "skip": reason}` for a row without text or whose audio cannot be decoded, so that the pass counts it.

    Ids are `<label>/<row>`, zero-padded, so sorting the predictions by id keeps the dataset's order.
    """

    def __init__(self, spec: SpeechSet, dataset: datasets.Dataset):
        self.spec, self.dataset = spec, dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        uid = f"{self.spec.label}/{index:07d}"
        row = self.dataset[index]
        text = plain_transcript(row[self.spec.text_column])
        if not text:
            return {"id": uid, "skip": "empty_text"}
        try:
            samples = np.asarray(row[self.spec.audio_column]["array"], dtype=np.float32)
        except (RuntimeError, ValueError, OSError) as err:  # what the decoders raise on a broken file
            logger.warning(f"Skipping {uid} of {self.spec.name}: {err}")
            return {"id": uid, "skip": "unreadable"}
        if samples.ndim == 2:  # datasets >= 4 keeps a file's channels as (channels, samples)
            samples = samples.mean(axis=0)
        return {"id": uid, "audio": samples, "text": text}


def load_speech_set(spec: SpeechSet, option: str) -> Split:
    """The set's split, checked and cast to 16 kHz audio; `option` (--eval_datasets, --dataset_name) names it."""
    where = f"{option} {spec.name}" + (f" (config {spec.config})" if spec.config else "")
    try:
        dataset = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except (FileNotFoundError, ValueError) as err:  # no such dataset, config or split: datasets says which exist
        raise ValueError(f"{where}, split {spec.split}, cannot be loaded: {err}") from err
    features = dataset.features
    available = ", ".join(f"{name} ({type(feature).__name__})" for name, feature in features.items())
    for kind, column in (("text", spec.text_column), ("audio", spec.audio_column)):
        if column not in features:
            raise ValueError(
                f"{where} has no {kind} column {column!r}; its columns are {available}. Name the right one with the "
                f"{kind} column option."
            )
    holds_audio = isinstance(features[spec.audio_column], datasets.Audio)  # a Parquet struct of bytes is not enough
    if not holds_audio:
        raise ValueError(
            f"{where}: column {spec.audio_column!r} is {features[spec.audio_column]}, not audio; its columns are "
            f"{available}. Name the audio column with the audio column option."
        )
    text = features[spec.text_column]
    holds_text = isinstance(text, datasets.Value) and text.dtype in ("string", "large_string")
    if not holds_text:
        raise ValueError(f"{where}: column {spec.text_column!r} is {text}, not text; its columns are {available}.")
    dataset = dataset.select_columns([spec.audio_column, spec.text_column])
    dataset = dataset.cast_column(spec.audio_column, datasets.Audio(sampling_rate=SAMPLE_RATE))
    return Split(SpeechRows(spec, dataset), Counter(seen=len(dataset)), PLAIN)


def load_speech_sets(sets: list[SpeechSet], option: str) -> dict[str, Split]:
    """label -> Split, in the order given."""
    return {spec.label: load_speech_set(spec, option) for spec in sets}
