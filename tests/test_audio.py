"""The one audio reader: every format gives the samples the trainer reads, and bad files say what is wrong."""

import math
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from kspon_dataset.corpus import pcm_samples, pcm_to_wav
from kspon_whisper import audio
from kspon_whisper.audio import read_audio, wav_samples
from tests.media import FORMATS, encode, encode_as

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


def aligned_correlation(decoded: np.ndarray, source: np.ndarray, max_lag: int = 1_600) -> float:
    """Largest normalised cross-correlation over lags up to 0.1 s: a codec may delay the audio (AAC by its 1,024
    samples of priming), which is not what is checked."""
    size = len(decoded) + len(source)
    spectrum = np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(source, size))
    correlation = np.fft.irfft(spectrum, size)
    best = max(correlation[: max_lag + 1].max(), correlation[-max_lag:].max())
    return float(best / np.sqrt(np.dot(decoded, decoded) * np.dot(source, source)))


@pytest.mark.parametrize("name", FORMATS)
def test_compressed_audio_and_video_give_the_clip_at_16k_mono(name, samples, tmp_path):
    # mp3 and m4a at 44.1 kHz stereo, ogg and webm Opus at 48 kHz stereo, an mp4 video's AAC, 8 kHz mu-law WAV.
    source = samples / 32768
    decoded = read_audio(encode_as(tmp_path / name, source, 16_000))
    assert decoded.dtype == np.float32 and abs(len(decoded) - len(source)) < 0.04 * 16_000  # codec delay, padding
    assert aligned_correlation(decoded, source) > 0.95
    assert np.array_equal(read_audio(tmp_path / name, dtype="int16"), audio.to_dtype(decoded, "int16"))


def test_what_libsndfile_cannot_read_ffmpeg_reads_to_the_same_samples(tmp_path):
    # A 44.1 kHz stereo FLAC written to a pipe (no length in its header) and a phone's m4a voice memo named .wav:
    # libsndfile gives up, FFmpeg decodes them; lossless, FFmpeg's samples are libsndfile's exactly, mixed down and
    # resampled the same way.
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "talk.flac", 0.1 * rng.standard_normal((3 * 44_100 + 123, 2)), 44_100, subtype="PCM_16")
    flac = bytearray((tmp_path / "talk.flac").read_bytes())
    flac[8 + 13] &= 0xF0  # STREAMINFO's 36-bit total sample count set to 0, "unknown", as a stream writer leaves it
    flac[8 + 14 : 8 + 18] = bytes(4)
    (tmp_path / "piped.flac").write_bytes(flac)
    assert sf.info(tmp_path / "piped.flac").frames == 2**63 - 1  # libsndfile cannot tell where it ends
    from_libsndfile = read_audio(tmp_path / "talk.flac")
    assert len(from_libsndfile) == math.ceil((3 * 44_100 + 123) * 16_000 / 44_100)
    assert np.array_equal(read_audio(tmp_path / "piped.flac"), from_libsndfile)
    encode_as(tmp_path / "talk.m4a", 0.1 * rng.standard_normal(16_000), 16_000)
    (tmp_path / "voice_memo.wav").write_bytes((tmp_path / "talk.m4a").read_bytes())
    with pytest.raises(sf.LibsndfileError, match="Format not recognised"):
        sf.info(tmp_path / "voice_memo.wav")
    assert np.array_equal(read_audio(tmp_path / "voice_memo.wav"), read_audio(tmp_path / "talk.m4a"))


def test_a_stream_that_changes_format_midway_is_converted_to_its_first_rate():
    # A spliced broadcast: 0.5 s of 8 kHz mono int16, 0.5 s of 16 kHz stereo float, 0.5 s of 8 kHz stereo float.
    # Every frame comes out as planar float at 8 kHz, int16 as int16 / 32768, and no sample is lost at a change.
    parts = [
        (np.full((1, 4_000), 16_384, dtype=np.int16), "s16", "mono", 8_000),
        (np.full((2, 8_000), 0.25, dtype=np.float32), "fltp", "stereo", 16_000),
        (np.full((2, 4_000), 0.25, dtype=np.float32), "fltp", "stereo", 8_000),
    ]
    frames = []
    for array, sample_format, layout, rate in parts:
        frames.append(av.AudioFrame.from_ndarray(array, format=sample_format, layout=layout))
        frames[-1].sample_rate = rate
    converted = list(audio._float_frames(frames))
    assert {(frame.format.name, frame.sample_rate) for frame in converted} == {("fltp", 8_000)}
    assert converted[0].to_ndarray()[0, 0] == 0.5 and converted[-1].to_ndarray()[1, -1] == 0.25
    assert sum(frame.samples for frame in converted) == 12_000


@pytest.mark.parametrize(
    ("name", "live", "most"),
    [
        ("talk.mp3", False, 1.25),  # 44.1 kHz stereo; the header's duration sizes the result
        ("talk.m4a", False, 1.25),  # AAC's padding runs past the stated duration: the headroom takes it
        ("talk.webm", True, 1.6),  # recorded in a browser: no duration, so the result grows by half as it fills
    ],
)
def test_a_long_compressed_file_is_decoded_frame_by_frame_not_whole(name, live, most, tmp_path):
    # 20 s: FFmpeg hands over ~1,000 samples at a time, mixed down and resampled as they come; the whole file at its
    # own rate would be 7 MB of float32 beside the 1.3 MB result.
    noise = (0.1 * np.random.default_rng(0).standard_normal(20 * 16_000)).astype(np.float32)
    codec, codec_rate, layout, _ = FORMATS[name]
    encode(tmp_path / name, noise, 16_000, codec, codec_rate, layout, live=live)
    tracemalloc.start()
    try:
        mono = read_audio(tmp_path / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(len(mono) - len(noise)) < 0.04 * 16_000
    assert peak < most * mono.nbytes, f"peak {peak:,} bytes for {mono.nbytes:,} of output"


def test_bad_files_name_the_file_and_the_problem(samples, tmp_path):
    (tmp_path / "empty.pcm").write_bytes(b"")
    (tmp_path / "one_byte.pcm").write_bytes(b"\x01")
    (tmp_path / "noise.wav").write_bytes(b"not a wav at all" * 8)
    (tmp_path / "broken.mp3").write_bytes(np.random.default_rng(0).bytes(20_000))
    for name in ("empty.pcm", "one_byte.pcm"):
        with pytest.raises(ValueError, match=rf"{name}: holds no audio"):
            read_audio(tmp_path / name)
    for name in ("noise.wav", "broken.mp3"):
        with pytest.raises(ValueError, match=rf"{name}: not an audio or video file FFmpeg can read \(Invalid data"):
            read_audio(tmp_path / name)
    encode(tmp_path / "screen.mp4", samples / 32768, 16_000, codec=None, video="mpeg4")
    with pytest.raises(ValueError, match=r"screen\.mp4: has no audio stream \(it holds 1 video stream\)"):
        read_audio(tmp_path / "screen.mp4")
    m4a = bytearray(encode_as(tmp_path / "talk.m4a", samples / 32768, 16_000).read_bytes())
    m4a[len(m4a) // 2 : len(m4a) // 2 + 300] = np.random.default_rng(1).bytes(300)  # damaged AAC in the middle
    (tmp_path / "damaged.m4a").write_bytes(m4a)
    with pytest.raises(ValueError, match=r"damaged\.m4a: FFmpeg cannot decode it at 1\.\d\d s \(Invalid data"):
        read_audio(tmp_path / "damaged.m4a")
    with pytest.raises(FileNotFoundError, match=r"missing\.flac: no such file"):
        read_audio(tmp_path / "missing.flac")
    with pytest.raises(ValueError, match="dtype must be one of"):
        read_audio(CLIP, dtype="float64")


def test_pcm_samples_is_a_view_that_drops_a_dangling_byte():
    data = np.arange(5, dtype="<i2").tobytes() + b"\x09"
    view = pcm_samples(data)
    assert np.array_equal(view, np.arange(5)) and not view.flags.owndata
