"""Other speech sets beside KsponSpeech (kspon_whisper/extra_data.py), built as users hand them over: an audiofolder
and a Parquet file from the sample's clips, one at 8 kHz.

The slow tests are the acceptance of issue 21's evaluation part: a training run with `--eval_datasets` scores each
set at every evaluation and at the end (zero-shot beside fine-tuned, one model-index entry per set), and
`eval_whisper.py --dataset_name` prints the same metrics for the trained model on the same set.
"""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kspon_whisper.data import PassCounter, make_dataloader
from kspon_whisper.extra_data import load_speech_set, plain_transcript, speech_sets
from kspon_whisper.metrics import METRICS, score
from tests.processes import run_ok
from tests.speech_sets import clips, write_audiofolder, write_parquet
from train_accelerate import parse_config

OPTIONS = ("--dataset_name", "--dataset_config_name", "--eval_split_name", "--text_column_name", "--audio_column_name")
SCORES = [metric.name for metric in METRICS]


@pytest.fixture(scope="module")
def local_sets(tmp_path_factory) -> dict[str, Path]:
    """An audiofolder (16 kHz WAV, `transcription`) and a Parquet folder (8 kHz FLAC, `sentence`), 4 clips each."""
    root = tmp_path_factory.mktemp("speech_sets")
    items = clips("eval_clean", 4)
    return {
        "audiofolder": write_audiofolder(root / "clips16k", items),
        "parquet8k": write_parquet(root / "clips8k", items, rate=8000),
        "items": items,
    }


class FakeAccelerator:
    device = "cpu"

    def reduce(self, tensor, reduction="sum"):
        return tensor


def test_plain_normalisation_keeps_the_text_and_only_tidies_it():
    decomposed = "\u1112\u1161\u11ab\u1100\u1173\u11af"  # 한글 in conjoining jamo, as macOS writes file names
    assert plain_transcript(f"  {decomposed}\t 좋아요 /  n+ ") == "한글 좋아요 / n+"  # no ETRI tag stripping
    assert plain_transcript("ㅋㅋ 웃기다") == "ㅋㅋ 웃기다"  # compatibility jamo stay as Whisper writes them
    assert plain_transcript(None) == ""


def test_plus_joined_options_give_one_value_per_set_or_one_for_all():
    sets = speech_sets(
        "google/fleurs+/data/my clips", "ko_kr+", "test", "transcription+text", "audio", options=OPTIONS
    )
    assert [(s.name, s.config, s.split, s.text_column, s.audio_column) for s in sets] == [
        ("google/fleurs", "ko_kr", "test", "transcription", "audio"),
        ("/data/my clips", None, "test", "text", "audio"),
    ]
    assert [s.label for s in sets] == ["fleurs-ko_kr-test", "my_clips-test"]
    with pytest.raises(ValueError, match=r"--text_column_name has 3 '\+'-joined values for the 2 sets"):
        speech_sets("a+b", None, "test", "x+y+z", "audio", options=OPTIONS)
    with pytest.raises(ValueError, match="named twice"):
        speech_sets("a+a", None, "test", "text", "audio", options=OPTIONS)


def test_the_trainer_refuses_a_mismatched_option_before_anything_loads(tone_corpus):
    with pytest.raises(ValueError, match=r"--eval_split_name has 3 '\+'-joined values for the 2 sets"):
        parse_config(["--data_dir", str(tone_corpus), "--eval_datasets", "a+b", "--eval_split_name", "x+y+z"])


def test_both_forms_decode_at_16_khz_whatever_their_rate(local_sets):
    items = local_sets["items"]
    for name, column in (("audiofolder", "transcription"), ("parquet8k", "sentence")):
        (spec,) = speech_sets(str(local_sets[name]), None, "train", column, "audio", options=OPTIONS)
        split = load_speech_set(spec, "--dataset_name")
        assert len(split) == 4 and split.tally["seen"] == 4
        for index, (_, text, samples) in enumerate(items):
            row = split.data[index]
            assert row["id"] == f"{spec.label}/{index:07d}" and row["text"] == text
            audio = row["audio"]
            assert audio.dtype == np.float32 and audio.ndim == 1
            assert abs(len(audio) - len(samples)) <= 2  # 8 kHz came back at 16 kHz: the same duration
            original = samples.astype(np.float32) / 32768
            n = min(len(audio), len(original))
            correlation = np.corrcoef(audio[:n], original[:n])[0, 1]
            assert correlation > (0.999 if name == "audiofolder" else 0.8), (name, index, correlation)


def test_columns_that_do_not_exist_or_hold_no_audio_are_refused_with_the_columns(local_sets):
    folder = str(local_sets["parquet8k"])
    (no_text,) = speech_sets(folder, None, "train", "text", "audio", options=OPTIONS)
    with pytest.raises(ValueError) as err:
        load_speech_set(no_text, "--dataset_name")
    assert f"--dataset_name {folder} has no text column 'text'" in str(err.value)
    assert "its columns are audio (Audio), sentence (Value), speaker (Value)" in str(err.value)
    (not_audio,) = speech_sets(folder, None, "train", "sentence", "speaker", options=OPTIONS)
    with pytest.raises(ValueError, match=f"--dataset_name {re.escape(folder)}: column 'speaker' is .*not audio"):
        load_speech_set(not_audio, "--dataset_name")
    (no_split,) = speech_sets(folder, None, "test", "sentence", "audio", options=OPTIONS)
    with pytest.raises(ValueError, match=f"--dataset_name {re.escape(folder)}, split test, cannot be loaded"):
        load_speech_set(no_split, "--dataset_name")


def test_an_empty_transcript_is_counted_in_the_kept_line(tmp_path, offline_whisper_dir):
    from transformers import WhisperConfig, WhisperProcessor

    from kspon_whisper.data import speech_batcher

    items = clips("eval_clean", 3)
    items[1] = (items[1][0], "   ", items[1][2])
    (spec,) = speech_sets(str(write_audiofolder(tmp_path / "set", items)), None, "train", "transcription", "audio",
                          options=OPTIONS)  # fmt: skip
    split = load_speech_set(spec, "--dataset_name")
    processor = WhisperProcessor.from_pretrained(offline_whisper_dir)
    batcher = speech_batcher(processor, WhisperConfig.from_pretrained(offline_whisper_dir), log_mel_on_device=True)
    loader = make_dataloader(split, batcher, batch_size=2, num_workers=0, rank=0, world_size=1, seed=0, shuffle=False)
    counter = PassCounter(split)
    ids = [uid for batch in counter.counted(loader) for uid in batch["id"]]
    assert ids == [f"{spec.label}/0000000", f"{spec.label}/0000002"]
    line, _ = counter.line(spec.label, FakeAccelerator())
    assert line == f"{spec.label}: kept 2 of 3 utterances (empty_text: 1)"


# ---------------------------------------------------------------------------------------------------------------
# The acceptance: the trainer and eval_whisper.py agree on a local set


@pytest.fixture(scope="module")
def trained(tiny_whisper_dir, tone_corpus, local_sets, tmp_path_factory) -> dict:
    """2 steps on the tone corpus with both local sets as --eval_datasets, scored before, at step 1 and at the end."""
    out = tmp_path_factory.mktemp("extra_eval") / "out"
    command = [
        sys.executable, "train_accelerate.py", "--model_name_or_path", str(tiny_whisper_dir),
        "--data_dir", str(tone_corpus), "--output_dir", str(out), "--max_steps", "2", "--per_device_batch_size", "4",
        "--num_workers", "0", "--warmup_steps", "1", "--log_every", "1", "--eval_every", "1", "--save_every", "0",
        "--max_eval_samples", "2", "--generation_max_new_tokens", "4", "--final_eval_splits", "test",
        "--eval_before_training", "--report_to", "none",
        "--eval_datasets", f"{local_sets['audiofolder']}+{local_sets['parquet8k']}",
        "--eval_split_name", "train", "--eval_text_column_name", "transcription+sentence",
    ]  # fmt: skip
    result = run_ok(command, timeout_s=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return {"out": out, "stdout": result.stdout}


SETS = ("clips16k-train", "clips8k-train")


@pytest.mark.slow
def test_each_set_is_scored_at_every_evaluation_with_its_own_row(trained):
    stdout, out = trained["stdout"], trained["out"]
    for name in ("validation", *SETS):
        for step in (0, 1):  # before training, and the periodic evaluation
            assert re.search(
                rf"^eval {name} @ step {step} \| cer [\d.]+ \| wer .* \| 2 utterances$", stdout, re.MULTILINE
            )
        assert re.search(rf"^eval {name} @ step 2 \| cer .* utterances$", stdout, re.MULTILINE)
    for name in SETS:
        assert f"{name}: kept 4 of 4 utterances (none skipped)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"validation", "test", *SETS} <= set(metrics)
    for name in SETS:
        assert metrics[name]["num_scored"] == 4 and metrics["before_training"][name]["num_scored"] == 2
        rows = [json.loads(line) for line in (out / f"predictions_{name}.jsonl").read_text().splitlines()]
        rescored = score([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
        assert {k: metrics[name][k] for k in SCORES} == {k: rescored[k] for k in SCORES}


@pytest.mark.slow
def test_the_card_has_one_model_index_entry_per_set_and_zero_shot_beside_fine_tuned(trained):
    card = (trained["out"] / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    entries = metadata["model-index"][0]["results"]
    by_name = {entry["dataset"]["name"]: entry for entry in entries if entry["dataset"]["type"] != "kspon_speech"}
    assert len(entries) == 4 and len(by_name) == 2  # KsponSpeech validation and test, and one entry per set
    for name, card_name in zip(SETS, ("clips16k", "clips8k"), strict=True):
        assert by_name[name]["dataset"] == {"name": name, "type": card_name, "split": "train"}  # no local path
        assert sorted(metric["type"] for metric in by_name[name]["metrics"]) == sorted(SCORES)
    assert "Their transcripts were first normalised by the `plain` rule:\nUnicode NFC" in card
    assert "What fine-tuning changed, before (the base model, zero-shot) -> after" in card
    assert "| eval_datasets | clips16k+clips8k |" in card and "speech_sets" not in card  # no local paths
    for name in SETS:
        assert re.search(rf"^\| {name} \| 2 -> 4 \| [\d.]+ -> [\d.]+ \|", card, re.MULTILINE), name


@pytest.mark.slow
def test_eval_whisper_prints_the_trainers_metrics_for_the_same_set(trained, local_sets, tmp_path):
    out = trained["out"]
    command = [
        sys.executable, "eval_whisper.py", "--model", str(out), "--output_dir", str(tmp_path),
        "--dataset_name", str(local_sets["audiofolder"]), "--eval_split_name", "train",
        "--text_column_name", "transcription", "--max_new_tokens", "4", "--per_device_batch_size", "4",
        "--num_workers", "0",
    ]  # fmt: skip
    stdout = run_ok(command, timeout_s=300, env=dict(os.environ, OMP_NUM_THREADS="1")).stdout
    name = SETS[0]
    trainer = json.loads((out / "metrics.json").read_text())[name]
    printed = re.search(rf"^eval {name} \| (cer .*) \| 4 utterances \| [\d.]+ utterances/s$", stdout, re.MULTILINE)
    assert printed, stdout
    assert printed.group(1) == " | ".join(f"{key} {trainer[key]:.4f}" for key in SCORES)
    evaluated = json.loads((tmp_path / "metrics.json").read_text())[name]
    assert {k: evaluated[k] for k in SCORES} == {k: trainer[k] for k in SCORES}
    assert (tmp_path / f"predictions_{name}.jsonl").read_text() == (out / f"predictions_{name}.jsonl").read_text()
    assert f"{name}: kept 4 of 4 utterances (none skipped)" in stdout
