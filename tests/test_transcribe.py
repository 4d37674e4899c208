"""transcribe.py on the real offline Whisper: every input format reads the same audio, long files are windowed."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from transformers import WhisperForConditionalGeneration, WhisperProcessor

import transcribe

CLIP = Path(__file__).parent / "data" / "ko_greeting.wav"


@pytest.fixture(scope="module")
def base(offline_whisper_dir):
    model = WhisperForConditionalGeneration.from_pretrained(offline_whisper_dir).eval()
    return model, WhisperProcessor.from_pretrained(offline_whisper_dir)


def test_wav_flac_and_pcm_read_the_same_samples(tmp_path):
    audio, rate = sf.read(CLIP, dtype="int16")
    assert rate == 16_000
    (tmp_path / "clip.pcm").write_bytes(audio.astype("<i2").tobytes() + b"\x07")  # odd byte count, as in the corpus
    sf.write(tmp_path / "clip_44k.flac", np.repeat(audio, 2)[: len(audio) * 2], 32_000)  # any rate is resampled
    wav, pcm = transcribe.read_audio(CLIP), transcribe.read_audio(tmp_path / "clip.pcm")
    assert np.array_equal(wav, pcm)
    flac = transcribe.read_audio(tmp_path / "clip_44k.flac")
    assert abs(len(flac) - len(wav)) <= 2 and np.abs(flac[: len(wav) - 2] - wav[: len(wav) - 2]).mean() < 0.01


def test_formats_transcribe_alike_and_long_audio_is_windowed(base, tmp_path):
    model, processor = base
    audio, _ = sf.read(CLIP, dtype="int16")
    (tmp_path / "clip.pcm").write_bytes(audio.astype("<i2").tobytes())
    long = np.concatenate([audio, np.zeros(31 * 16_000 - len(audio), dtype=np.int16), audio])  # > 30 s: 2 windows
    sf.write(tmp_path / "long.wav", long, 16_000)
    paths = [CLIP, tmp_path / "clip.pcm", tmp_path / "long.wav"]
    out = dict(transcribe.transcribe(paths, model, processor, batch_size=2, num_beams=1, max_new_tokens=40))
    assert list(out) == paths
    assert out[CLIP] and out[CLIP] == out[tmp_path / "clip.pcm"]
    assert out[tmp_path / "long.wav"].startswith(out[CLIP])
    assert len(list(transcribe.windows([tmp_path / "long.wav"]))) == 2


def test_cli_prints_one_line_per_file(offline_whisper_dir, capsys):
    options = ["--num_beams", "2", "--no_repeat_ngram_size", "3"]
    transcribe.main(["--model", str(offline_whisper_dir), *options, str(CLIP)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{CLIP}\t") and len(lines[0].split("\t")[1]) > 0


def test_unsupported_and_missing_files_say_so(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type '\.mp3'"):
        transcribe.read_audio(tmp_path / "x.mp3")
    with pytest.raises(SystemExit, match="No such file"):
        transcribe.main(["--model", "unused", str(tmp_path / "missing.wav")])
