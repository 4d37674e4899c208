"""Small pieces of the loop: reading audio bytes, the out-of-memory advice."""

import io
import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from kspon_dataset.corpus import pcm_to_wav
from kspon_whisper.data import wav_samples
from train_accelerate import TrainConfig, Trainer, explain_out_of_memory, parse_config


def test_wav_samples_reads_the_loading_scripts_wav_without_decoding():
    samples = (np.sin(np.arange(16_000) / 7) * 9000).astype("<i2")
    read = wav_samples(pcm_to_wav(samples.tobytes()))
    assert read.dtype == np.int16 and np.array_equal(read, samples)


def test_wav_samples_falls_back_to_soundfile_for_other_wavs():
    samples = (np.arange(8_000) % 300 - 150).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16_000, subtype="PCM_24", format="WAV")  # a header this fast path does not assume
    assert np.array_equal(wav_samples(buffer.getvalue()), samples)
    stereo = io.BytesIO()
    sf.write(stereo, np.stack([samples, samples], axis=1), 8_000, format="WAV")
    with pytest.raises(ValueError, match="Expected 16 kHz mono audio, got 8000 Hz"):
        wav_samples(stereo.getvalue())


def test_out_of_memory_names_the_settings_and_the_fix():
    cfg = TrainConfig(data_dir="unused", max_steps=1, per_device_batch_size=24, gradient_checkpointing=False)
    with pytest.raises(torch.OutOfMemoryError) as err, explain_out_of_memory(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(err.value)
    assert "Tried to allocate 2.00 GiB" in message
    assert "--per_device_batch_size 24" in message and "--gradient_checkpointing False" in message
    assert "--gradient_accumulation_steps" in message


def test_a_missing_split_is_named_before_training(tone_corpus, tiny_whisper_dir, tmp_path, caplog):
    """Official scheme without KsponSpeech_05.zip: the validation folders 0621-0623 are absent."""
    partial = tmp_path / "no_05"
    shutil.copytree(tone_corpus, partial)
    (partial / "KsponSpeech_05.zip").unlink()
    args = ["--data_dir", str(partial), "--model_name_or_path", str(tiny_whisper_dir), "--max_steps", "1"]
    args += ["--split_scheme", "official", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    try:
        with pytest.raises(ValueError, match=r"no validation split .*KsponSpeech_05\.zip.*--eval_every 0"):
            Trainer(parse_config([*args, "--eval_every", "10"]), Accelerator(cpu=True))
        with caplog.at_level(logging.WARNING):
            Trainer(parse_config([*args, "--eval_every", "0", "--final_eval_splits", "test"]), Accelerator(cpu=True))
    finally:  # accelerate keeps process-wide singletons; leave none behind
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert any("test will not be scored" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_final_eval_splits_from_yaml_are_names_and_typos_are_refused(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data_dir: /d\nmax_steps: 1\nfinal_eval_splits: test\n")
    assert parse_config(["--config", str(config)]).final_eval_splits == ["test"]
    with pytest.raises(ValueError, match=r"\['eval_clena'\] are not splits of KsponSpeech"):
        TrainConfig(data_dir="/d", max_steps=1, final_eval_splits=["eval_clena"])
