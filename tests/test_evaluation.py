"""Evaluation end to end on the real Whisper base: loader, log-mel, generate, decode and score, as the trainer runs it.

The clips (tests/evaluate_clips.py) have known transcripts. Measured on them (greedy, 2-core CPU, torch 2.13): CER
0.357 (15 edits over 42 reference characters), identical hypotheses in batches of 3 and 4, in one process and in two
(test_eval_whisper.py holds the two-process test). The band is that value give or take about 6 characters, room for
a few tokens to flip on another CPU or library version. Every broken decode tried lands far outside it: references
scored against themselves give 0, special tokens left in the text give well above 1, and a forced wrong language
shares no characters with Hangul, so CER >= 1.
"""

import pytest
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from evaluate_clips import CLIPS, clip_trainer
from transformers import WhisperForConditionalGeneration

from kspon_whisper import evaluation

CER_BAND = (0.22, 0.50)


@pytest.fixture(scope="module")
def trainer(offline_whisper_dir, tmp_path_factory):
    yield clip_trainer(offline_whisper_dir, tmp_path_factory.mktemp("eval_run"), Accelerator())
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate's singletons must not leak into other tests
    GradientState._reset_state()


@pytest.fixture(scope="module")
def one_process(trainer) -> dict:
    return trainer.evaluate_and_log("validation")


def in_band(cer: float) -> bool:
    return CER_BAND[0] <= cer <= CER_BAND[1]


@pytest.mark.slow
def test_cer_on_known_clips_is_in_the_measured_band(one_process):
    assert sorted(r["id"] for r in one_process["records"]) == sorted(CLIPS)
    assert all(r["hypothesis"] and r["reference"] for r in one_process["records"])
    assert in_band(one_process["cer"]), f"CER {one_process['cer']:.4f} outside {CER_BAND}: {one_process['records']}"


def _score_references_against_themselves(monkeypatch, trainer):
    real = evaluation.score
    monkeypatch.setattr(evaluation, "score", lambda references, hypotheses: real(references, references))


def _keep_special_tokens(monkeypatch, trainer):
    real = trainer.processor.batch_decode
    monkeypatch.setattr(trainer.processor, "batch_decode", lambda ids, **kwargs: real(ids, skip_special_tokens=False))


def _force_language(language: str):
    def mutate(monkeypatch, trainer):
        real = WhisperForConditionalGeneration.generate
        monkeypatch.setattr(
            WhisperForConditionalGeneration,
            "generate",
            lambda self, *args, **kwargs: real(self, *args, **(kwargs | {"language": language})),
        )

    return mutate


@pytest.mark.slow
@pytest.mark.parametrize(
    "mutate",
    [_score_references_against_themselves, _keep_special_tokens, _force_language("en"), _force_language("ja")],
    ids=["references-as-hypotheses", "special-tokens-kept", "language-en", "language-ja"],
)
def test_a_broken_decode_falls_outside_the_band(mutate, trainer, monkeypatch):
    mutate(monkeypatch, trainer)
    metrics = trainer.evaluate_and_log("validation")
    assert not in_band(metrics["cer"]), f"a broken decode scored CER {metrics['cer']:.4f}, inside {CER_BAND}"
