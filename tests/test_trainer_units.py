"""Small pieces of the loop: reading audio bytes, the out-of-memory advice."""

import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from kspon_dataset.corpus import pcm_to_wav
from kspon_whisper.data import wav_samples
from train_accelerate import (
    TrainConfig,
    Trainer,
    check_full_model,
    explain_out_of_memory,
    parse_config,
    save_final_model,
)


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


def test_the_final_save_is_all_or_nothing_and_push_only_checks_the_processor(tiny_whisper_dir, tmp_path, monkeypatch):
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)
    out = tmp_path / "run"
    out.mkdir()
    save_final_model(model, None, processor, out)
    check_full_model(str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(folder, **kwargs):
        (Path(folder) / "tokenizer.json").write_text('{"trunc')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(processor, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="Saving the final model into .* failed .* are free there"):
        save_final_model(model, None, processor, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no staging folder left

    (out / "tokenizer.json").write_text('{"trunc')  # what a full disk did to a save made in place
    with pytest.raises(ValueError, match="holds no loadable processor"):
        check_full_model(str(out))


@pytest.mark.slow
def test_a_log_line_starts_its_own_line_when_stdout_and_stderr_share_a_pipe():
    # `accelerate launch … 2>&1 | tee log`: the bar is on stderr (unbuffered), the line on stdout (block-buffered
    # in a pipe). Unflushed, "step 1" lands after the bar's redraw, glued to it, and `grep ^step` misses it.
    script = (
        "from tqdm import tqdm\n"
        "from kspon_whisper.evaluation import print_line\n"
        "bar = tqdm(total=2, desc='train')\n"
        "bar.update(1)\n"
        "print_line('step 1 | loss 1.0')\n"
        "bar.update(1)\n"
        "bar.close()\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        timeout=60,
        check=True,
    )
    pieces = result.stdout.decode().splitlines()  # at "\r" too, as a terminal shows it
    assert "step 1 | loss 1.0" in pieces, pieces
    assert pieces.index("step 1 | loss 1.0") < next(i for i, p in enumerate(pieces) if "2/2" in p), pieces
