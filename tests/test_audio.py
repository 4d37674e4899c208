"""The one audio reader: every format gives the samples the trainer reads, and bad files say what is wrong."""

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from kspon_dataset.corpus import pcm_samples, pcm_to_wav
from kspon_whisper import audio
from kspon_whisper.audio import read_audio, wav_samples

CLIP = Path(__file__).parent / "data" / "ko_greeting.wav"


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    audio, rate = sf.read(CLIP, dtype="int16")
    assert rate == 16_000 and audio.ndim == 1
    return audio


def test_pcm_wav_and_the_loading_scripts_bytes_give_the_same_int16(samples, tmp_path, monkeypatch):
    pcm = samples.astype("<i2").tobytes()
    (tmp_path / "clip.pcm").write_bytes(pcm + b"\x07")  # an odd byte count, as some corpus files have
    from_pcm = read_audio(tmp_path / "clip.pcm", dtype="int16")
    assert from_pcm.dtype == np.int16 and np.array_equal(from_pcm, samples)
    assert np.array_equal(read_audio(CLIP, dtype="int16"), samples)
    monkeypatch.setattr(sf, "read", None)  # a prepared row's plain header is read without a decoder
    assert np.array_equal(wav_samples(pcm_to_wav(pcm)), samples)


def test_float32_is_int16_over_full_scale(samples, tmp_path):
    (tmp_path / "clip.pcm").write_bytes(samples.astype("<i2").tobytes())
    for path in (CLIP, tmp_path / "clip.pcm"):
        audio = read_audio(path)
        assert audio.dtype == np.float32 and np.array_equal(audio, samples.astype(np.float32) / 32768)


def test_other_rates_and_channels_become_16k_mono(tmp_path):
    # A 440 Hz tone at 44.1 kHz, louder on the left: averaged and resampled, it is the same tone at 16 kHz.
    def tone(rate: int) -> np.ndarray:
        return 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)

    sf.write(tmp_path / "tone.flac", np.stack([1.6 * tone(44_100), 0.4 * tone(44_100)], axis=1), 44_100)
    audio = read_audio(tmp_path / "tone.flac")
    assert audio.dtype == np.float32 and len(audio) == 16_000
    middle = slice(1_000, 15_000)  # away from the edges, where the resampling filter sees the file's ends
    assert np.abs(audio[middle] - tone(16_000)[middle]).max() < 1e-3
    as_int16 = read_audio(tmp_path / "tone.flac", dtype="int16")
    assert as_int16.dtype == np.int16 and np.abs(as_int16 / 32768 - audio).max() <= 0.5 / 32768


def test_a_long_file_is_read_in_blocks_not_whole(tmp_path, monkeypatch):
    # 64 blocks of 44.1 kHz stereo: only the 16 kHz mono result may be whole in memory (a 30-minute file would
    # otherwise peak at ~1 GB of float32), and the blocks must give what resampling the whole file at once gives.
    monkeypatch.setattr(audio, "BLOCK_FRAMES", 4_096)
    rng = np.random.default_rng(0)
    source = (0.1 * rng.standard_normal((64 * 4_096 + 123, 2))).astype(np.float32)
    sf.write(tmp_path / "talk.flac", source, 44_100, subtype="PCM_16")
    tracemalloc.start()
    try:
        mono = read_audio(tmp_path / "talk.flac")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = sf.read(tmp_path / "talk.flac", dtype="float32")[0]
    whole = soxr.resample(decoded.mean(axis=1), 44_100, 16_000, quality="HQ")
    assert len(mono) == math.ceil(len(source) * 16_000 / 44_100) == len(whole)
    assert np.array_equal(mono, whole)
    assert peak < 1.5 * mono.nbytes, f"peak {peak:,} bytes for {mono.nbytes:,} of output: the file was read whole"


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "empty.pcm").write_bytes(b"")
    (tmp_path / "one_byte.pcm").write_bytes(b"\x01")
    (tmp_path / "noise.wav").write_bytes(b"not a wav at all" * 8)
    for name in ("empty.pcm", "one_byte.pcm"):
        with pytest.raises(ValueError, match=rf"{name}: holds no audio"):
            read_audio(tmp_path / name)
    with pytest.raises(ValueError, match=r"noise\.wav: cannot be decoded as \.wav"):
        read_audio(tmp_path / "noise.wav")
    sf.write(tmp_path / "piped.flac", np.zeros((44_100, 2), dtype=np.float32), 44_100)
    flac = bytearray((tmp_path / "piped.flac").read_bytes())
    flac[8 + 13] &= 0xF0  # STREAMINFO's 36-bit total sample count set to 0, "unknown", as a stream writer leaves it
    flac[8 + 14 : 8 + 18] = bytes(4)
    (tmp_path / "piped.flac").write_bytes(flac)
    with pytest.raises(ValueError, match=r"piped\.flac: its header does not say how long it is"):
        read_audio(tmp_path / "piped.flac")
    with pytest.raises(ValueError, match=r"unsupported file type '\.mp3'"):
        read_audio(tmp_path / "x.mp3")
    with pytest.raises(FileNotFoundError, match=r"missing\.flac: no such file"):
        read_audio(tmp_path / "missing.flac")
    with pytest.raises(ValueError, match="dtype must be one of"):
        read_audio(CLIP, dtype="float64")


def test_pcm_samples_is_a_view_that_drops_a_dangling_byte():
    data = np.arange(5, dtype="<i2").tobytes() + b"\x09"
    view = pcm_samples(data)
    assert np.array_equal(view, np.arange(5)) and not view.flags.owndata
