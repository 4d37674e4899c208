"""The model card: metadata the Hub parses (model-index), a body that documents the run, and the published results
it is set beside. Everything is local: the card is written and read back from files.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.utils import filter_repo_objects

from kspon_whisper.metrics import METRICS as REGISTRY
from kspon_whisper.model_card import write_model_card

REPO_ID = "me/whisper-small-kspon"

# As kspon_whisper.metrics.score returns them: fractions, plus counts that are not metrics.
METRICS = {
    "test": {
        "cer": 0.0785,
        "wer": 0.2231,
        "swer": 0.1391,
        "cer_nospace": 0.0612,
        "num_samples": 3000,
        "num_scored": 2998,
    },
    "eval_clean": {"cer": 0.0911, "wer": 0.2547, "swer": 0.1533, "cer_nospace": 0.0733, "num_samples": 3000},
    "eval_other": {"cer": 0.1002, "wer": 0.2894, "swer": 0.1702, "cer_nospace": 0.0821, "num_samples": 3000},
}
METRIC_KEYS = tuple(metric.name for metric in REGISTRY)


def _write_card(output_dir: Path, metrics=METRICS, **overrides) -> Path:
    kwargs = {
        "hub_model_id": REPO_ID,
        "base_model": "openai/whisper-small",
        "metrics": metrics,
        "hyperparameters": {
            "learning_rate": 1e-5,
            "train_batch_size": 16,
            "max_new_tokens": 225,
            "data_dir": "/home/me/secret-datasets/KsponSpeech",  # local paths never reach a public README
            "output_dir": "/home/me/runs/ko",
        },
        "scoring_normalization": "NFKC; punctuation removed; runs of spaces collapsed",
        **overrides,
    }
    return write_model_card(output_dir, **kwargs)


def test_model_card_metadata_round_trips(tmp_path):
    path = _write_card(tmp_path)
    assert path == tmp_path / "README.md"

    card = ModelCard.load(path)
    assert card.data.language == "ko"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "openai/whisper-small"
    assert card.data.pipeline_tag == "automatic-speech-recognition"
    assert {"automatic-speech-recognition", "whisper", "korean", "kspon-speech"} <= set(card.data.tags)
    assert card.data.model_name == "whisper-small-kspon"
    results = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
    assert set(results) == {(split, metric) for split in METRICS for metric in METRIC_KEYS}
    for (split, metric), result in results.items():
        assert result.task_type == "automatic-speech-recognition"
        assert (result.dataset_type, result.dataset_name, result.dataset_config) == (
            "kspon_speech",
            "KsponSpeech",
            "spelling",
        )
        assert result.metric_value == pytest.approx(100 * METRICS[split][metric], abs=0.005)  # percent
    assert results[("test", "cer")].metric_value == 7.85

    metadata = metadata_load(path)
    assert metadata["model-index"][0]["results"][0]["dataset"]["split"] == "test"


def test_model_card_body_documents_the_run(tmp_path):
    text = _write_card(tmp_path, dataset_config="phonetic").read_text(encoding="utf-8")
    assert "| test | 7.85 | 22.31 | 13.91 | 6.12 |" in text
    assert "NFKC; punctuation removed; runs of spaces collapsed" in text
    assert 'pipeline("automatic-speech-recognition", model="me/whisper-small-kspon")' in text
    assert '"language": "ko"' in text
    assert "pronunciation (phonetic) side" in text
    assert "| learning_rate | 1e-05 |" in text
    assert "| max_new_tokens | 225 |" in text
    assert "/home/me" not in text and "data_dir" not in text
    assert "| huggingface_hub |" in text
    assert "Applied Sciences" in text and "6936" in text and "2212.04356" in text
    assert "AI Hub" in text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "7.8", None])
def test_model_card_rejects_non_finite_metrics(tmp_path, bad):
    metrics = {"test": {"cer": 0.08}, "eval_other": {"cer": 0.1, "wer": bad}}
    with pytest.raises(ValueError, match=r"metrics\['eval_other'\]\['wer'\]"):
        _write_card(tmp_path, metrics=metrics)
    assert not (tmp_path / "README.md").exists()


def test_model_card_rejects_unknown_metrics_and_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'loss'"):
        _write_card(tmp_path, metrics={"test": {"loss": 0.3}})
    with pytest.raises(ValueError, match="spelling, phonetic"):
        _write_card(tmp_path, dataset_config="orthographic")


def test_model_card_takes_score_output_as_is(tmp_path):
    score = pytest.importorskip("kspon_whisper.metrics").score
    metrics = {"eval_clean": score(["안녕 하세요", "감사 합니다"], ["안녕하세요", "감사 합니다"])}
    card = ModelCard.load(_write_card(tmp_path, metrics=metrics))
    assert {r.metric_type for r in card.data.eval_results} == set(METRIC_KEYS)


# --- the card places the model among published results ----------------------------------------------------------

OURS_ROW = "| **whisper-small-kspon (this model)** | 9.11 / 10.02 | 25.47 / 28.94 | 15.33 / 17.02 |"
ESPNET_ROW = "| ESPnet1 Conformer-large + LM | 7.4 / 8.5 | 20.8 / 25.5 | 13.2 / 15.4 |"
NOT_COMPARABLE = "These held-out numbers are not comparable with the literature"


def test_card_sets_official_eval_results_beside_published_rows(tmp_path):
    text = _write_card(tmp_path, split_scheme="official").read_text(encoding="utf-8")
    assert OURS_ROW in text
    assert ESPNET_ROW in text
    assert "| SpeechBrain Conformer + Transformer LM | 7.33 / 7.99 | 20.47 / 25.18 | – |" in text
    assert "| icefall Zipformer | 10.35 / 11.35 | – | – |" in text
    assert "Oh, Kim & Park (2023), Table 4" in text and "speechbrain/tree/develop/recipes/KsponSpeech" in text
    assert text.index("### Beside published results") > text.index("| eval_other | 10.02 |")
    assert NOT_COMPARABLE not in text and "Not the full official sets" not in text
    card = ModelCard.load(tmp_path / "README.md")
    splits = {r.dataset_split for r in card.data.eval_results}
    assert {"eval_clean", "eval_other"} <= splits
    assert {(r.dataset_split, r.metric_value) for r in card.data.eval_results if r.metric_type == "swer"} >= {
        ("eval_clean", 15.33),
        ("eval_other", 17.02),
    }


def test_card_says_a_random_split_is_not_comparable(tmp_path):
    text = _write_card(tmp_path).read_text(encoding="utf-8")  # split_scheme defaults to the random 8:1:1 split
    assert NOT_COMPARABLE in text and "random 8:1:1 split of the training archives by recording folder" in text
    assert OURS_ROW in text  # eval_clean / eval_other are the official sets in every scheme
    only_held_out = {"test": METRICS["test"]}
    text = _write_card(tmp_path, metrics=only_held_out).read_text(encoding="utf-8")
    assert NOT_COMPARABLE in text and "Beside published results" not in text and ESPNET_ROW not in text


def test_card_flags_partial_eval_sets_and_the_phonetic_side(tmp_path):
    partial = METRICS | {"eval_clean": METRICS["eval_clean"] | {"num_scored": 15}}
    text = _write_card(tmp_path, metrics=partial).read_text(encoding="utf-8")
    assert "Not the full official sets:** `eval_clean` (15 utterances scored; the official set has 3,000)" in text
    text = _write_card(tmp_path, dataset_config="phonetic").read_text(encoding="utf-8")
    assert "**not comparable** with them" in text and ESPNET_ROW not in text
    with pytest.raises(ValueError, match="random, random_utterance, official"):
        _write_card(tmp_path, split_scheme="8:1:1")


def test_card_of_a_local_base_model_has_no_hub_link(tmp_path):
    base = tmp_path / "models" / "whisper-base"
    base.mkdir(parents=True)
    path = _write_card(tmp_path / "run", base_model=str(base))
    text = path.read_text(encoding="utf-8")
    assert "a local Whisper (`whisper-base`)" in text
    assert "huggingface.co/" + str(base) not in text and str(tmp_path) not in text
    assert ModelCard.load(path).data.base_model is None  # the Hub rejects a base_model that is not a repo id


def test_card_shows_faster_whisper_usage_for_an_exported_folder(tmp_path):
    assert "faster_whisper" not in _write_card(tmp_path).read_text(encoding="utf-8")
    (tmp_path / "ct2-int8_float16").mkdir()
    (tmp_path / "ct2-int8_float16" / "model.bin").write_bytes(b"ct2")
    text = _write_card(tmp_path).read_text(encoding="utf-8")
    assert f'snapshot_download("{REPO_ID}", allow_patterns="ct2-int8_float16/*")' in text
    assert 'WhisperModel(path, device="cuda", compute_type="int8_float16")' in text
    repo_files = ["model.safetensors", "config.json", "ct2-int8_float16/model.bin", "ct2-int8_float16/config.json"]
    assert list(filter_repo_objects(repo_files, allow_patterns="ct2-int8_float16/*")) == repo_files[2:]


def test_card_says_how_lora_weights_were_made(tmp_path):
    hyperparameters = {"learning_rate": 1e-4, "lora_rank": 16, "lora_alpha": 32, "lora_mlp": False}
    text = _write_card(tmp_path, hyperparameters=hyperparameters).read_text(encoding="utf-8")
    assert "Fine-tuned with LoRA (rank 16, alpha 32) on the attention projections" in text
    assert "LoRA" not in _write_card(tmp_path, hyperparameters={"lora_rank": 0}).read_text(encoding="utf-8")


@pytest.mark.parametrize("share", [0.5, 0.0])
def test_card_says_the_model_reads_both_front_ends(tmp_path, share):
    hyperparameters = {"learning_rate": 1e-5, "feature_padding_probability": share}
    text = _write_card(tmp_path, hyperparameters=hyperparameters).read_text(encoding="utf-8")
    assert ("50% of the training examples were given the second form" in text) == bool(share)
