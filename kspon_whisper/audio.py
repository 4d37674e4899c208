"""The one audio reader: KsponSpeech .pcm, .wav and .flac files, and the loading script's WAV bytes, as 16 kHz mono.

Training, evaluation and `transcribe.py` all read samples here. The PCM decoding itself and the 16 kHz rate live in
`kspon_dataset.corpus` (`pcm_samples`, `SAMPLE_RATE`), because the loading script must import without this package.

    samples = read_audio("KsponSpeech_000001.pcm")             # float32 in [-1, 1), 16 kHz mono
    samples = read_audio("talk_44k_stereo.flac", dtype="int16")  # mixed down and resampled
"""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import soundfile
import soxr

from kspon_dataset.corpus import SAMPLE_RATE, pcm_samples, pcm_to_wav

AUDIO_SUFFIXES = (".wav", ".flac", ".pcm")
DTYPES = ("float32", "int16")
_INT16_SCALE = 32768.0  # int16 full scale: samples map to [-1, 1) as soundfile and librosa read them
# Everything before the samples in the WAV the loading script writes: "fmt " chunk of 16 kHz s16le mono, "data".
_PLAIN_WAV_HEADER = pcm_to_wav(b"")[12:40]
_PLAIN_WAV_HEADER_BYTES = 44
# Frames of a file at another rate or channel count decoded at a time: ~1.5 s of 44.1 kHz, 0.5 MB of stereo float32.
BLOCK_FRAMES = 1 << 16
_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count for a stream whose header never got its length


def read_audio(path: str | Path, dtype: str = "float32") -> np.ndarray:
    """16 kHz mono samples of a file, as float32 in [-1, 1) or int16.

    `.pcm` is KsponSpeech's headerless 16 kHz signed 16-bit little-endian mono (a dangling odd byte is dropped);
    `.wav`/`.flac` may have any rate and any number of channels: channels are averaged and the rate converted.
    Raises FileNotFoundError for a missing file and ValueError, naming the file, for one that holds no audio or
    cannot be decoded.
    """
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    suffix = path.suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(AUDIO_SUFFIXES)}.")
    if not path.is_file():  # soundfile would say only "System error"
        raise FileNotFoundError(f"{path}: no such file.")
    samples = pcm_samples(path.read_bytes()) if suffix == ".pcm" else _read_encoded(path, dtype)
    if samples.size == 0:
        raise ValueError(f"{path}: holds no audio (0 samples).")
    return to_dtype(samples, dtype)


def wav_samples(data: bytes) -> np.ndarray:
    """int16 samples of a 16 kHz mono WAV, as the loading script stores audio; its plain header is read without a
    copy or a decoder, any other WAV through soundfile."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[12:40] == _PLAIN_WAV_HEADER:
        return pcm_samples(memoryview(data)[_PLAIN_WAV_HEADER_BYTES:])
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"Expected 16 kHz mono audio, got {rate} Hz with shape {samples.shape}.")
    return samples


def _read_encoded(path: Path, dtype: str) -> np.ndarray:
    try:
        with soundfile.SoundFile(path) as audio:
            if audio.frames == _UNKNOWN_LENGTH:  # libsndfile cannot read such a stream to its end either
                raise ValueError(
                    f"{path}: its header does not say how long it is (a stream written to a pipe?); write it again "
                    f"as a file, e.g. `ffmpeg -i {path.name} fixed{path.suffix.lower()}`."
                )
            if audio.samplerate == SAMPLE_RATE and audio.channels == 1:  # read as stored: int16 stays exact
                return audio.read(dtype=dtype)
            return _mono_16k(audio)
    except soundfile.LibsndfileError as err:  # a RuntimeError; the caller reports it by name and goes on
        raise ValueError(f"{path}: cannot be decoded as {path.suffix.lower()} ({err}).") from err


def _mono_16k(audio: soundfile.SoundFile) -> np.ndarray:
    """Channels averaged and the rate converted block by block, so that only the 16 kHz mono result is ever whole in
    memory: a 30-minute 44.1 kHz stereo file is 115 MB of it, not the 635 MB of float32 it decodes to. soxr's
    stream gives exactly what its one-shot `soxr.resample` (librosa's default) gives, trimmed or zero-padded to
    ceil(frames x 16000 / rate) samples as librosa does."""
    mono = np.zeros(math.ceil(audio.frames * SAMPLE_RATE / audio.samplerate), dtype=np.float32)
    resample = soxr.ResampleStream(audio.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ").resample_chunk
    filled = 0
    blocks = audio.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True)
    for block in itertools.chain(blocks, [None]):  # None: flush the resampler
        chunk = block.mean(axis=1) if block is not None else np.zeros(0, dtype=np.float32)
        if audio.samplerate != SAMPLE_RATE:
            chunk = resample(chunk, last=block is None)
        chunk = chunk[: len(mono) - filled]
        mono[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    return mono


def to_dtype(samples: np.ndarray, dtype: str) -> np.ndarray:
    """int16 or float32 samples as `dtype`: float32 in [-1, 1) is int16 / 32768, as soundfile reads PCM."""
    if samples.dtype == dtype:
        return samples
    if dtype == "float32":  # from int16
        return samples.astype(np.float32) / _INT16_SCALE
    return np.clip(np.round(samples * _INT16_SCALE), -_INT16_SCALE, _INT16_SCALE - 1).astype(np.int16)
