"""Timestamp labels: their exact layout, the end time, the share and its determinism, training-only, the 448 limit."""

import dataclasses
import math

import numpy as np
import pytest
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

from kspon_dataset import KsponSpeech
from kspon_whisper.data import Split, make_dataloader, set_epoch, speech_batcher
from kspon_whisper.timestamps import TimestampLabels, timestamp_labels
from train_accelerate import TrainConfig, Trainer, parse_config

TEXT = "일곱 시 반에 봐"


@pytest.fixture(scope="module")
def processor(offline_whisper_dir) -> WhisperProcessor:
    processor = WhisperProcessor.from_pretrained(offline_whisper_dir)
    processor.tokenizer.set_prefix_tokens(language="ko", task="transcribe", predict_timestamps=False)
    return processor


@pytest.fixture(scope="module")
def generation_config(offline_whisper_dir) -> GenerationConfig:
    return GenerationConfig.from_pretrained(offline_whisper_dir)


def labeller(processor, generation_config, probability: float, seed: int = 42) -> TimestampLabels:
    return timestamp_labels(processor.tokenizer, generation_config, probability=probability, seed=seed)


def token(processor, name: str) -> int:
    return processor.tokenizer.convert_tokens_to_ids(name)


def test_a_timestamped_label_is_one_segment_spanning_the_clip(processor, generation_config):
    plain = processor.tokenizer(TEXT).input_ids
    text = processor.tokenizer(TEXT, add_special_tokens=False).input_ids
    names = ["<|startoftranscript|>", "<|ko|>", "<|transcribe|>", "<|notimestamps|>", "<|0.00|>", "<|1.24|>"]
    sot, ko, transcribe, no_timestamps, zero, end = (token(processor, name) for name in names)
    eot = processor.tokenizer.eos_token_id
    assert plain == [sot, ko, transcribe, no_timestamps, *text, eot]
    assert (
        processor.tokenizer.decode(plain)
        == f"<|startoftranscript|><|ko|><|transcribe|><|notimestamps|>{TEXT}<|endoftext|>"
    )

    timestamped = labeller(processor, generation_config, 1.0)(plain, "KsponSpeech_000001", 1.2345, epoch=0)
    assert timestamped == [sot, ko, transcribe, zero, *text, end, eot]
    assert (
        processor.tokenizer.decode(timestamped, decode_with_timestamps=True)
        == f"<|startoftranscript|><|ko|><|transcribe|><|0.00|>{TEXT}<|1.24|><|endoftext|>"
    )
    assert (
        labeller(processor, generation_config, 0.5, seed=0).timestamp_ids[0]
        == generation_config.no_timestamps_token_id + 1
    )
    assert labeller(processor, generation_config, 0.0) is None  # 0 turns it off: the labels stay as they are


def test_labels_without_notimestamps_are_refused(processor, generation_config):
    with pytest.raises(ValueError, match="predict_timestamps=False"):
        labeller(processor, generation_config, 1.0).timestamped([1, 2, 3], 1.0)


@pytest.mark.parametrize(
    ("seconds", "name"),
    [(0.0, "<|0.00|>"), (2.0, "<|2.00|>"), (2.009, "<|2.00|>"), (2.011, "<|2.02|>"), (7.4321, "<|7.44|>")]
    + [(29.99, "<|30.00|>"), (30.0, "<|30.00|>"), (31.7, "<|30.00|>"), (600.0, "<|30.00|>")],
)
def test_the_end_is_the_duration_on_the_grid_capped_at_30_s(processor, generation_config, seconds, name):
    end_id = labeller(processor, generation_config, 1.0).end_id(seconds)
    assert processor.tokenizer.convert_ids_to_tokens(end_id) == name


def test_a_generation_config_that_disagrees_with_the_tokenizer_is_refused(processor, generation_config):
    shifted = GenerationConfig(no_timestamps_token_id=generation_config.no_timestamps_token_id + 1)  # large-v3's id
    with pytest.raises(ValueError, match=r"no_timestamps_token_id is 50364 .*same checkpoint"):
        labeller(processor, shifted, 0.2)


IDS = [f"KsponSpeech_{i:06d}" for i in range(1, 20_001)]


@pytest.mark.parametrize("probability", [0.05, 0.2, 0.5])
def test_the_share_is_p_and_each_epoch_draws_afresh(probability):
    labels = TimestampLabels(probability, seed=42, no_timestamps_id=0, timestamp_ids=(1,))
    chosen = {uid for uid in IDS if labels.chosen(uid, epoch=0)}
    tolerance = 4 * math.sqrt(probability * (1 - probability) / len(IDS))  # 4 sigma of a binomial share
    assert abs(len(chosen) / len(IDS) - probability) < tolerance
    assert chosen == {uid for uid in IDS if labels.chosen(uid, epoch=0)}  # the same on every call
    next_epoch = {uid for uid in IDS if labels.chosen(uid, epoch=1)}
    other_seed = {uid for uid in IDS if dataclasses.replace(labels, seed=43).chosen(uid, epoch=0)}
    for again in (next_epoch, other_seed):  # independent draws: they overlap by p^2, not p
        assert abs(len(chosen & again) / len(IDS) - probability**2) < tolerance


def test_p_0_timestamps_nothing_and_p_1_everything():
    never = TimestampLabels(0.0, seed=42, no_timestamps_id=0, timestamp_ids=(1,))
    always = dataclasses.replace(never, probability=1.0)
    assert not any(never.chosen(uid, epoch) for uid in IDS for epoch in (0, 1))
    assert all(always.chosen(uid, epoch) for uid in IDS for epoch in (0, 1))


@pytest.mark.parametrize("probability", [-0.1, 1.5, float("nan")])
def test_the_probability_is_validated(probability):
    with pytest.raises(ValueError, match=rf"--timestamp_probability must be in \[0, 1\].*got {probability}"):
        TrainConfig(data_dir="/d", max_steps=1, timestamp_probability=probability)
    with pytest.raises(ValueError, match=rf"got {probability}"):
        TimestampLabels(probability, seed=0, no_timestamps_id=0, timestamp_ids=(1,))
    assert TrainConfig(data_dir="/d", max_steps=1).timestamp_probability == 0.2
    assert (
        parse_config(["--data_dir", "/d", "--max_steps", "1", "--timestamp_probability", "0"]).timestamp_probability
        == 0
    )


def test_the_label_limit_counts_the_timestamp_tokens(processor, generation_config):
    """A label that fits only without its two timestamp tokens is dropped as too long when it gets them."""
    rows = [{"id": "KsponSpeech_000001", "audio": np.zeros(16_000, np.int16), "text": TEXT}]
    plain_length = len(processor.tokenizer(TEXT).input_ids)

    def batcher(max_target_positions: int, probability: float):
        start = token(processor, "<|startoftranscript|>")
        config = WhisperConfig(decoder_start_token_id=start, max_target_positions=max_target_positions)
        plain = speech_batcher(processor, config, log_mel_on_device=True)
        return dataclasses.replace(plain, timestamps=labeller(processor, generation_config, probability))

    assert batcher(plain_length, 0.0)(rows)["id"] == ["KsponSpeech_000001"]
    timestamped = batcher(plain_length, 1.0)
    assert timestamped(rows)["num_labels_too_long"] == 1 and timestamped(rows)["id"] == []
    assert batcher(plain_length + 1, 1.0)(rows)["id"] == ["KsponSpeech_000001"]  # one more: <|0.00|> took a place


def timestamped_ids(loader, zero: int) -> dict[str, bool]:
    batches = list(loader)
    return {uid: bool((row == zero).any()) for b in batches for uid, row in zip(b["id"], b["labels"], strict=True)}


def test_workers_follow_the_epoch_and_agree_with_the_hash(
    processor, generation_config, tone_corpus, offline_whisper_dir
):
    """The choice made in DataLoader workers is `chosen(id, epoch)` of the epoch set in the main process."""
    selections = KsponSpeech(config_name="spelling", data_dir=str(tone_corpus)).selections()
    train = Split(selections["train"], selections["train"].tally, "spelling")
    labels = labeller(processor, generation_config, 0.5)
    batcher = dataclasses.replace(
        speech_batcher(processor, WhisperConfig.from_pretrained(offline_whisper_dir), log_mel_on_device=True),
        timestamps=labels,
    )
    loader = make_dataloader(train, batcher, batch_size=8, num_workers=2, rank=0, world_size=1, seed=0, shuffle=True)
    passes = {}
    for epoch in (0, 1, 1):
        set_epoch(loader, epoch)
        passes.setdefault(epoch, []).append(timestamped_ids(loader, labels.timestamp_ids[0]))
    assert passes[1][0] == passes[1][1]  # the same choice on every pass of an epoch
    for epoch, (marked, *_) in passes.items():
        assert marked == {uid: labels.chosen(uid, epoch) for uid in marked}
    assert passes[0][0] != passes[1][0] and 0 < sum(passes[0][0].values()) < len(passes[0][0])


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps its state in process-wide singletons; leave none behind for the next test."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_only_the_training_loader_carries_timestamps(tiny_whisper_dir, tone_corpus, tmp_path, fresh_accelerate):
    args = ["--data_dir", str(tone_corpus), "--model_name_or_path", str(tiny_whisper_dir), "--max_steps", "1"]
    args += ["--output_dir", str(tmp_path), "--report_to", "none", "--num_workers", "0"]
    trainer = Trainer(parse_config([*args, "--timestamp_probability", "1"]), Accelerator(cpu=True))
    zero = trainer.train_batcher.timestamps.timestamp_ids[0]
    no_timestamps = trainer.train_batcher.timestamps.no_timestamps_id
    set_epoch(trainer.train_loader, 0)
    train = next(iter(trainer.train_loader))["labels"]
    assert (train[:, 2] == zero).all() and not (train == no_timestamps).any()
    for split in ("validation", "test"):
        held_out = next(iter(trainer.loader(split)))["labels"]
        assert (held_out[:, 2] == no_timestamps).all() and not (held_out >= zero).any()
