"""Small pieces of the loop: reading audio bytes, the out-of-memory advice."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from kspon_dataset.corpus import pcm_to_wav
from kspon_whisper.data import wav_samples
from train_accelerate import TrainConfig, explain_out_of_memory


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
