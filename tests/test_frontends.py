"""Faster-whisper's front-end in training: the form itself, on the host and the device, and the trainer's share of it.

faster-whisper (and openai-whisper's `transcribe`) zero-pad a short clip's normalised log-mel to 3,000 frames, where
Transformers pads the waveform to 30 s; a model fine-tuned on one form alone loses accuracy in the other
(benchmarks/RESULTS.md), so `--feature_padding_probability` gives a share of the training examples the second form.
"""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from faster_whisper.audio import pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor
from transformers import WhisperFeatureExtractor

from kspon_whisper.collator import WhisperCollator
from kspon_whisper.data import DeviceInputs, set_epoch
from kspon_whisper.draws import drawn
from kspon_whisper.log_mel import LogMelSpectrogram
from train_accelerate import TrainConfig, Trainer, parse_config

LENGTHS = (8_000, 48_037, 464_159, 480_000, 496_000)  # 0.5 s, odd, just under, exactly and over 30 s


def clip(samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(samples) * 3000).astype(np.int16)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_feature_padded_is_faster_whispers_front_end(n_mels):
    log_mel = LogMelSpectrogram(WhisperFeatureExtractor(feature_size=n_mels))
    theirs = FeatureExtractor(feature_size=n_mels)
    for samples in LENGTHS:
        audio = clip(samples)
        expected = pad_or_trim(theirs(audio.astype(np.float32) / 32768))
        ours = log_mel.feature_padded(torch.from_numpy(audio))
        np.testing.assert_allclose(ours.numpy(), expected, atol=2e-5, err_msg=f"{samples} samples")
        if samples < 480_000:  # and it is not the Transformers form: there the padding sits at the floor, not at 0
            waveform_padded = log_mel(torch.from_numpy(audio)[None])[0]
            assert (waveform_padded[:, -1] < 0).all() and (ours[:, -1] == 0).all()


def test_host_features_pad_the_chosen_rows_as_the_device_does():
    """`--log_mel_on_device false` computes the features in the workers: the same two forms, row by row."""
    extractor = WhisperFeatureExtractor(feature_size=80)
    examples = [
        {"audio": clip(n, seed), "labels": [50258, 7, 8], "feature_padded": padded}
        for seed, (n, padded) in enumerate([(16_000, True), (40_000, False), (8_000, True)])
    ]
    host = WhisperCollator(extractor, decoder_start_token_id=50258, audio_mode="features")(examples)
    waveforms = WhisperCollator(extractor, decoder_start_token_id=50258, audio_mode="waveform")(examples)
    assert waveforms["feature_padded"].tolist() == [True, False, True]
    device = DeviceInputs(type("Processor", (), {"feature_extractor": extractor}), torch.device("cpu"))(waveforms)
    torch.testing.assert_close(host["input_features"], device["input_features"], atol=2e-5, rtol=0)
    assert (device["input_features"][[0, 2], :, -1] == 0).all() and (device["input_features"][1, :, -1] < 0).all()


@pytest.fixture
def fresh_accelerate():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.slow
def test_the_trainer_feature_pads_its_share_of_training_examples(
    tiny_whisper_dir, tone_corpus, tmp_path, fresh_accelerate
):
    """By default a hashed half of the training examples, the same in every worker and after a resume, new each
    epoch; never a held-out one. Switching the share off by default fails here."""
    args = ["--data_dir", str(tone_corpus), "--model_name_or_path", str(tiny_whisper_dir), "--max_steps", "1"]
    cfg = parse_config([*args, "--output_dir", str(tmp_path), "--report_to", "none", "--num_workers", "2"])
    assert cfg.feature_padding_probability == TrainConfig.feature_padding_probability > 0
    trainer = Trainer(cfg, Accelerator(cpu=True))
    chosen = {}
    for epoch in (0, 1):
        set_epoch(trainer.train_loader, epoch)
        for batch in trainer.train_loader:
            features = trainer.device_inputs(batch)["input_features"]
            padded = batch.get("feature_padded", torch.zeros(len(batch["id"]), dtype=torch.bool))
            for row, uid in enumerate(batch["id"]):
                assert padded[row] == drawn(cfg.feature_padding_probability, "feature_padding", cfg.seed, epoch, uid)
                assert bool((features[row, :, -1] == 0).all()) == bool(padded[row]), uid  # what the model is fed
                chosen[epoch, uid] = bool(padded[row])
    for epoch in (0, 1):
        share = np.mean([padded for (e, _), padded in chosen.items() if e == epoch])
        assert 0.25 < share < 0.75, f"epoch {epoch}: {share:.2f} of the training examples feature-padded"
    assert [v for (e, _), v in sorted(chosen.items()) if e == 0] != [v for (e, _), v in sorted(chosen.items()) if e]
    for split in ("validation", "test"):
        for batch in trainer.loader(split):
            assert "feature_padded" not in batch
            assert (trainer.device_inputs(batch)["input_features"][:, :, -1] < 0).all()  # the Transformers form
