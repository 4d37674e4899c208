"""From KsponSpeech to per-rank, resumable, decorrelated batches of Whisper inputs.

Every split is an ordered list of utterances decided from the archives' indexes (`KsponSpeech.selections`). Each
epoch draws one permutation of the whole split from (seed, epoch); rank r takes every world_size-th utterance of it
and DataLoader worker w every num_workers-th of those (`rank_order`). So a batch holds utterances from all over
the corpus, each rank reads only its own utterances whatever the world size, and the order is a pure function of
(seed, epoch, rank, world size, workers), which makes resuming exact.

Streaming (`UtteranceStream`) reads each utterance straight from its ZIP member at random positions; map-style
data is prepared Arrow rows indexed by `RankSampler` in the same order. Neither loader is passed to
`accelerator.prepare`, which would shard it a second time; `datasets.distributed.split_dataset_by_node` is not used
either, because it shards a streamed split by reading everything on every rank unless the shard count divides the
world size (623 folders on 8 ranks: 8 reads per kept example). Ranks whose part runs out first are handled in the
training loop (`batches_until_all_ranks_done`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import WhisperConfig, WhisperProcessor

from kspon_dataset import KsponSpeech, load_kspon
from kspon_dataset.corpus import (
    READ_REASONS,
    SAMPLE_RATE,
    SKIP_REASONS,
    Selection,
    kept_line,
    pcm_samples,
    read_utterance,
)

from .audio import wav_samples
from .collator import WhisperCollator
from .draws import drawn
from .log_mel import LogMelSpectrogram
from .timestamps import TimestampLabels

KEEP_COLUMNS = ("id", "audio", "text")
# What a pass counts as its batches go by (the index's drops are known before it), in a fixed order for one all-reduce.
COUNT_KEYS = ("kept", *READ_REASONS, "labels_too_long")


@dataclass
class Split:
    """One split for the trainer: the utterances and what was dropped before they reach a batch."""

    data: Selection | datasets.Dataset  # streamed from the archives, or prepared Arrow rows
    tally: Counter  # prepared: every drop; streamed: the index's drops (reading drops are counted per pass)
    form: str  # transcript form, "spelling" or "phonetic"

    def __len__(self) -> int:
        return len(self.data)


def load_splits(data_dir: str, *, form: str, split_scheme: str, streaming: bool) -> dict[str, Split]:
    """Every split the download provides (eval_* only when the eval ZIP is there)."""
    if streaming:
        builder = KsponSpeech(config_name=form, data_dir=data_dir, split_scheme=split_scheme)
        return {name: Split(s, s.tally, form) for name, s in builder.selections().items()}
    prepared, tallies = load_kspon(data_dir, form, split_scheme=split_scheme, with_counts=True)
    return {name: Split(_raw_audio(split), tallies[name], form) for name, split in prepared.items()}


def _raw_audio(split: datasets.Dataset) -> datasets.Dataset:
    """id, audio as WAV bytes, text. The batcher reads int16 samples from the bytes itself: decoding through
    datasets makes float64 arrays (4x the bytes; measured 1.6x slower) and needs torchcodec/FFmpeg on datasets >= 4.
    """
    split = split.select_columns(list(KEEP_COLUMNS))
    if isinstance(split.features["audio"], datasets.Audio):  # else already the plain {bytes, path} column
        split = split.cast_column("audio", datasets.Audio(sampling_rate=SAMPLE_RATE, decode=False))
    return split


def rank_order(n: int, *, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool) -> np.ndarray:
    """This rank's positions in a split of n utterances for one epoch: disjoint across ranks, covering the split."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return order[rank::world_size]


class RankSampler(torch.utils.data.Sampler[int]):
    """Map-style data in `rank_order`; the stateful loader resumes it by counting what it already yielded."""

    def __init__(self, n: int, *, seed: int, rank: int, world_size: int, shuffle: bool):
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        order = rank_order(
            self.n, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size, shuffle=self.shuffle
        )
        return iter(order.tolist())


class UtteranceStream(torch.utils.data.IterableDataset):
    """This rank's utterances of a split, read from the archives in `rank_order`, split again across workers.

    Yields `{"id", "audio" (int16 samples), "text"}`, or `{"id", "skip": reason}` for an utterance that cannot be
    read, so the batcher counts it. Its state (epoch, position within this worker's list) is what the stateful
    DataLoader saves for each worker; restoring it skips without reading anything.
    """

    def __init__(self, split: Split, *, seed: int, rank: int, world_size: int, shuffle: bool):
        self.split, self.seed, self.rank, self.world_size, self.shuffle = split, seed, rank, world_size, shuffle
        self.epoch, self.position, self._resume_at = 0, 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def positions(self, worker: int, num_workers: int) -> np.ndarray:
        order = rank_order(
            len(self.split),
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=self.shuffle,
        )
        return order[worker::num_workers]

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        positions = self.positions(info.id, info.num_workers) if info else self.positions(0, 1)
        start, self._resume_at = (self._resume_at or 0), None
        for i in range(start, len(positions)):
            self.position = i + 1  # what a state saved after this row says: continue with the next one
            yield self.read(int(positions[i]))

    def read(self, position: int) -> dict:
        return read_row(self.split, position)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        # The loop sets the epoch before loading the state; a state from another epoch means "from the start".
        self._resume_at = state["position"] if state["epoch"] == self.epoch else 0


def read_row(split: Split, position: int) -> dict:
    """The batcher's row at `position` of a split: read from the archives when streamed, else the stored row."""
    if not isinstance(split.data, Selection):
        return split.data[position]  # prepared KsponSpeech rows, or another corpus (`extra_data.SpeechRows`)
    example, reason = read_utterance(split.data, position, split.form)
    if example is None:
        return {"id": split.data.utterance(position)[2], "skip": reason}
    return {"id": example["id"], "audio": pcm_samples(example["pcm"]), "text": example["text"]}


class MixedSplit:
    """KsponSpeech's training split with other corpora drawn in by weight (`--train_datasets`).

    A pass reads every KsponSpeech utterance once, as without other data, and draws the other sets' rows in
    proportion: with KsponSpeech's n utterances at weight w0, a set at weight w gets round(n * w / w0) rows, each
    pass a fresh permutation of the set (repeated only when it holds fewer rows than that). Code c in [0, len)
    names one draw: KsponSpeech position c below n, then each set's draws in turn. `UtteranceStream` permutes the
    codes by (seed, epoch) and shards them over ranks and workers as it does KsponSpeech's positions, so every rank
    reads its own draws once, the sources are interleaved by their weights throughout a pass, and a resume is exact.
    """

    def __init__(self, primary: Split, others: dict[str, Split], weights: list[float], seed: int):
        self.primary, self.others, self.seed = primary, others, seed
        self.other_splits = list(others.values())  # by source number, for `read`
        primary_weight = 1 - sum(weights)
        self.draws = [round(len(primary) * weight / primary_weight) for weight in weights]
        self.starts = np.cumsum([len(primary), *self.draws])  # first code after each source
        self.form = primary.form
        self.tally = primary.tally + Counter(seen=sum(self.draws))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def sources(self) -> dict[str, int]:
        """name -> draws per pass; KsponSpeech's are its utterances the index keeps."""
        return {"KsponSpeech": len(self.primary)} | dict(zip(self.others, self.draws, strict=True))

    def epoch_rows(self, epoch: int) -> list[np.ndarray]:
        """Each other set's rows drawn in this epoch, in code order: a function of (seed, epoch) alone."""
        rows = []
        for index, (split, wanted) in enumerate(zip(self.other_splits, self.draws, strict=True)):
            rng = np.random.default_rng([self.seed, epoch, index + 1])
            rows.append(np.concatenate([rng.permutation(len(split)) for _ in range(-(-wanted // len(split)))]))
        return [drawn[:wanted] for drawn, wanted in zip(rows, self.draws, strict=True)]

    def read(self, code: int, epoch_rows: list[np.ndarray]) -> dict:
        source = int(np.searchsorted(self.starts, code, side="right"))
        if source == 0:
            return read_row(self.primary, code)
        row = epoch_rows[source - 1][code - self.starts[source - 1]]
        return read_row(self.other_splits[source - 1], int(row))


def source_of(uid: str) -> str:
    """The source of a trained id: another corpus's ids are `<set>/<row>` (`extra_data.SpeechRows`)."""
    return uid.split("/")[0] if "/" in uid else "KsponSpeech"


class MixedStream(UtteranceStream):
    """A `MixedSplit` in `rank_order`: the codes of its draws, sharded and resumed as KsponSpeech's positions are."""

    _rows: tuple[int, list[np.ndarray]] | None = None  # (epoch, its MixedSplit.epoch_rows), made once per worker

    def read(self, position: int) -> dict:
        if self._rows is None or self._rows[0] != self.epoch:
            self._rows = (self.epoch, self.split.epoch_rows(self.epoch))
        return self.split.read(position, self._rows[1])


@dataclass
class SpeechBatcher:
    """DataLoader `collate_fn`: tokenize the text (timestamping a share of the labels when training), drop rows whose
    labels exceed the decoder's positions, then collate (padding a share of the rows as faster-whisper does when
    training)."""

    processor: WhisperProcessor
    collator: WhisperCollator
    timestamps: TimestampLabels | None = None  # training only: evaluation labels never carry timestamps
    feature_padding: float = 0.0  # training only: share of rows padded as faster-whisper pads them (log_mel.py)
    seed: int = 0  # the run's seed: another seed pads other rows
    epoch: int = (
        0  # set by `set_epoch`; which labels carry timestamps, and which rows are feature-padded, change with it
    )

    def __call__(self, rows: list[dict]) -> dict:
        kept, labels_too_long, skipped, dropped = [], 0, Counter(), []
        for row in rows:
            if "skip" in row:
                skipped[row["skip"]] += 1
                dropped.append((row["id"], row["skip"]))
                continue
            audio = row["audio"]
            samples = wav_samples(audio["bytes"]) if isinstance(audio, dict) else audio
            labels = self.processor.tokenizer(row["text"]).input_ids
            if self.timestamps is not None:
                labels = self.timestamps(labels, row["id"], len(samples) / SAMPLE_RATE, self.epoch)
            if len(labels) > self.collator.max_label_length:  # timestamp tokens included: they take positions too
                labels_too_long += 1
                dropped.append((row["id"], "labels_too_long"))
                continue
            padded = drawn(self.feature_padding, "feature_padding", self.seed, self.epoch, row["id"])
            kept.append(
                {"audio": samples, "labels": labels, "id": row["id"], "text": row["text"], "feature_padded": padded}
            )
        batch = self.collator(kept) if kept else {"id": []}
        batch["text"] = [row["text"] for row in kept]
        batch["num_labels_too_long"] = labels_too_long
        batch["skipped"] = skipped
        batch["dropped"] = dropped  # (id, reason): what the per-source counts of a MixedSplit need
        return batch


def speech_batcher(
    processor: WhisperProcessor,
    config: WhisperConfig,
    *,
    log_mel_on_device: bool,
    label_bucket: int | None = None,
) -> SpeechBatcher:
    """The loaders' batcher: int16 waveforms that `DeviceInputs` turns into log-mels on the device, or host features.
    The model's config gives the decoder's start token and its positions, the longest label kept."""
    collator = WhisperCollator(
        processor.feature_extractor,
        decoder_start_token_id=config.decoder_start_token_id,
        max_label_length=config.max_target_positions,
        audio_mode="waveform" if log_mel_on_device else "features",
        label_bucket=label_bucket,
    )
    return SpeechBatcher(processor, collator)


class DeviceInputs:
    """Called on a batch: its model arguments on `device`, log-mels computed there from its waveforms (or its host
    features), and its labels."""

    def __init__(self, processor: WhisperProcessor, device: torch.device):
        self.device = device
        self.log_mel = LogMelSpectrogram(processor.feature_extractor).to(device)

    def __call__(self, batch: dict) -> dict:
        if "input_audio" in batch:
            features = self.log_mel_of(batch)
        else:
            features = batch["input_features"].to(self.device, non_blocking=True)
        return {"input_features": features, "labels": batch["labels"].to(self.device, non_blocking=True)}

    def log_mel_of(self, batch: dict) -> torch.Tensor:
        """The waveform-padded rows in one batched call; the feature-padded ones row by row, each over its clip only
        (so they cost less than the 30 s of the others)."""
        audio, padded = batch["input_audio"], batch.get("feature_padded")
        if padded is None:
            return self.log_mel(audio.to(self.device, non_blocking=True))
        frames = self.log_mel.n_samples // self.log_mel.hop_length
        features = torch.empty(len(audio), self.log_mel.n_mels, frames, device=self.device)
        if not padded.all():
            features[~padded.to(self.device)] = self.log_mel(audio[~padded].to(self.device, non_blocking=True))
        for row in padded.nonzero().flatten().tolist():
            clip = audio[row, : batch["audio_lengths"][row]].to(self.device, non_blocking=True)
            features[row] = self.log_mel.feature_padded(clip)
        return features


def make_dataloader(
    split: Split,
    batcher: SpeechBatcher,
    *,
    batch_size: int,
    num_workers: int,
    rank: int,
    world_size: int,
    seed: int,
    shuffle: bool,
) -> StatefulDataLoader:
    """A resumable loader over this rank's part of `split`, in `rank_order`."""
    order = {"seed": seed, "rank": rank, "world_size": world_size, "shuffle": shuffle}
    if isinstance(split, MixedSplit):
        dataset, sampler = MixedStream(split, **order), None
        num_workers = min(num_workers, max(1, len(split) // world_size))
    elif isinstance(split.data, Selection):
        dataset, sampler = UtteranceStream(split, **order), None
        num_workers = min(num_workers, max(1, len(split) // world_size))  # a worker with nothing to read is waste
    else:
        dataset, sampler = split.data, RankSampler(len(split), **order)
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=batcher,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        # Not persistent: a new epoch's order must reach the workers, and forked workers share the parent's
        # memory-mapped index, so starting them costs milliseconds.
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def batches_per_pass(loader: StatefulDataLoader) -> int:
    """Batches one pass of `loader` yields on this rank, known before reading anything: the index counts the
    utterances the size-based filters keep, and each streaming worker batches its own share (`rank_order`).
    A batch whose every row is dropped for its content (an empty transcript, labels too long) is not trained on,
    so a pass can be shorter, never longer."""
    if not isinstance(loader.dataset, UtteranceStream):
        return len(loader)
    stream, workers = loader.dataset, max(loader.num_workers, 1)
    rows = len(range(stream.rank, len(stream.split), stream.world_size))
    return sum(math.ceil(len(range(worker, rows, workers)) / loader.batch_size) for worker in range(workers))


def set_epoch(loader: StatefulDataLoader, epoch: int) -> None:
    """Reseed the epoch's order; the loop calls this before every epoch, and before loading a saved state."""
    (loader.dataset if isinstance(loader.dataset, UtteranceStream) else loader.sampler).set_epoch(epoch)
    if isinstance(loader.collate_fn, SpeechBatcher):  # workers are started per epoch, with a copy of it
        loader.collate_fn.epoch = epoch


class PassCounter:
    """Counts one pass over a split as its batches go by, and says "kept N of M (reasons)" for all ranks together."""

    def __init__(self, split: Split, counts: Counter | None = None):
        # `counts` may be another's: the trainer's loop state holds its pass's, so that a checkpoint saves them.
        self.split, self.counts = split, Counter() if counts is None else counts

    def add(self, batch: dict) -> None:
        self.counts.update(kept=len(batch["id"]), labels_too_long=batch["num_labels_too_long"])
        self.counts.update(batch["skipped"])
        if isinstance(self.split, MixedSplit):  # per source too, as "<source>/<reason>"
            self.counts.update(f"{source_of(uid)}/kept" for uid in batch["id"])
            self.counts.update(f"{source_of(uid)}/{reason}" for uid, reason in batch["dropped"])

    def counted(self, batches: Iterable[dict]) -> Iterator[dict]:
        for batch in batches:
            self.add(batch)
            yield batch

    def total(self, accelerator) -> Counter:
        """The whole split's counts, summed over ranks (every rank must call this); resets for the next pass.
        A MixedSplit's also hold "<source>/<reason>" counts, each source's draws as its "<source>/seen"."""
        keys = list(COUNT_KEYS)
        if isinstance(self.split, MixedSplit):
            keys += [f"{source}/{key}" for source in self.split.sources() for key in COUNT_KEYS]
        local = torch.tensor([float(self.counts[k]) for k in keys], device=accelerator.device)
        summed = dict(zip(keys, accelerator.reduce(local, reduction="sum").long().tolist(), strict=True))
        self.counts.clear()
        index_drops = Counter({k: v for k, v in self.split.tally.items() if k in SKIP_REASONS})
        total = Counter(seen=self.split.tally["seen"]) + index_drops + Counter(summed)
        if isinstance(self.split, MixedSplit):
            primary = self.split.primary.tally
            total.update({f"KsponSpeech/{k}": v for k, v in primary.items() if k in SKIP_REASONS or k == "seen"})
            total.update(
                {f"{source}/seen": n for source, n in self.split.sources().items() if source != "KsponSpeech"}
            )
        return +total

    def line(self, name: str, accelerator) -> tuple[str, Counter]:
        total = self.total(accelerator)
        return kept_line(name, total), total

    def source_lines(self, total: Counter) -> list[str]:
        """A MixedSplit's "kept N of M" line per source, from `total`'s "<source>/<reason>" counts."""
        sources = self.split.sources() if isinstance(self.split, MixedSplit) else {}
        return [
            kept_line(
                f"  {source}", Counter({k.split("/", 1)[1]: v for k, v in total.items() if k.startswith(f"{source}/")})
            )
            for source in sources
        ]
