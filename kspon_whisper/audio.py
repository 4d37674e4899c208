"""The one audio reader: KsponSpeech .pcm, any audio or video file, and the loading script's WAV bytes, as 16 kHz mono.

Training, evaluation and `transcribe.py` all read samples here. The PCM decoding itself and the 16 kHz rate live in
`kspon_dataset.corpus` (`pcm_samples`, `SAMPLE_RATE`), because the loading script must import without this package.

    samples = read_audio("KsponSpeech_000001.pcm")             # float32 in [-1, 1), 16 kHz mono
    samples = read_audio("talk_44k_stereo.flac", dtype="int16")  # mixed down and resampled
    samples = read_audio("interview.m4a")                       # mp3, m4a, ogg/opus, webm, mp4, ...: through FFmpeg

`.wav`/`.flac` are read by libsndfile (soundfile), exactly and fast; everything else, and a WAV or FLAC libsndfile
cannot read, is decoded by FFmpeg through PyAV, its audio stream only. Either way the channels are averaged and the
rate converted by soxr block by block, so a long file never sits whole in memory at its own rate.
"""

from __future__ import annotations

import io
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
import soundfile
import soxr
import torch

from kspon_dataset.corpus import SAMPLE_RATE, pcm_samples, pcm_to_wav

SOUNDFILE_SUFFIXES = (".wav", ".flac")  # libsndfile's; .pcm is KsponSpeech's raw PCM; any other goes to FFmpeg
DTYPES = ("float32", "int16")
INT16_SCALE = 32768.0  # int16 full scale: samples map to [-1, 1) as soundfile and librosa read them
# Everything before the samples in the WAV the loading script writes: "fmt " chunk of 16 kHz s16le mono, "data".
_PLAIN_WAV_HEADER = pcm_to_wav(b"")[12:40]
_PLAIN_WAV_HEADER_BYTES = 44
# Frames of a file at another rate or channel count decoded at a time: ~1.5 s of 44.1 kHz, 0.5 MB of stereo float32.
# (FFmpeg decodes in its codec's frames instead: 1,024 samples of AAC, 1,152 of MP3, 960 of Opus.)
BLOCK_FRAMES = 1 << 16
_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count for a stream whose header never got its length
# A container's duration is an estimate (codec delay and padding, VBR headers): room for this much more is kept
# from the start, so that the 16 kHz result is not reallocated as it nears its end.
_DURATION_HEADROOM_SECONDS = 1.0


def read_audio(path: str | Path, dtype: str = "float32") -> np.ndarray:
    """16 kHz mono samples of a file, as float32 in [-1, 1) or int16.

    `.pcm` is KsponSpeech's headerless 16 kHz signed 16-bit little-endian mono (a dangling odd byte is dropped). Any
    other file may be any audio or video FFmpeg reads (`.wav`/`.flac` through libsndfile first), at any rate and
    with any number of channels: channels are averaged and the rate converted. Raises FileNotFoundError for a missing
    file and ValueError, naming the file, for one that holds no audio or cannot be decoded.
    """
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if not path.is_file():  # soundfile would say only "System error"
        raise FileNotFoundError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix == ".pcm":
        samples = pcm_samples(path.read_bytes())
    else:
        samples = _read_soundfile(path, dtype) if suffix in SOUNDFILE_SUFFIXES else None
        if samples is None:
            samples = _read_ffmpeg(path)
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


def _read_soundfile(path: Path, dtype: str) -> np.ndarray | None:
    """The samples as libsndfile reads them, or None where it cannot: FFmpeg then decodes the file."""
    try:
        with soundfile.SoundFile(path) as audio:
            if audio.frames == _UNKNOWN_LENGTH:  # written to a pipe: libsndfile cannot read it to its end, FFmpeg can
                return None
            if audio.samplerate == SAMPLE_RATE and audio.channels == 1:  # read as stored: int16 stays exact
                return audio.read(dtype=dtype)
            blocks = audio.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True)
            return _mono_16k((block.mean(axis=1) for block in blocks), audio.samplerate, audio.frames)
    except soundfile.LibsndfileError:  # e.g. an mp3 named .wav, or a WAV of a codec libsndfile lacks
        return None


def _read_ffmpeg(path: Path) -> np.ndarray:
    """The best audio stream of any file FFmpeg reads, decoded packet by packet. A packet it cannot decode refuses
    the file, saying where, rather than leaving a silent gap in the transcript (where a damaged ogg or webm makes the
    demuxer lose its way, the stream ends there, as it does for the ffmpeg command)."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise ValueError(f"{path}: not an audio or video file FFmpeg can read ({err.strerror}).") from err
    with container:
        stream = container.streams.best("audio")
        if stream is None:
            kinds = Counter(other.type for other in container.streams)
            held = ", ".join(f"{count} {kind} stream{'s' * (count > 1)}" for kind, count in kinds.items())
            raise ValueError(f"{path}: has no audio stream (it holds {held or 'no streams'}).")
        frames = _float_frames(_decoded(container, stream, path))
        first = next(frames, None)
        if first is None:
            return np.zeros(0, dtype=np.float32)
        seconds = _duration_seconds(container, stream) + _DURATION_HEADROOM_SECONDS
        estimate = math.ceil(seconds * first.sample_rate)
        blocks = (frame.to_ndarray().mean(axis=0) for frame in itertools.chain([first], frames))
        return _mono_16k(blocks, first.sample_rate, estimate)


def _duration_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    """The stream's duration as its container states it; 0 where it does not (a webm recorded in a browser)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / av.time_base


def _decoded(container: av.container.InputContainer, stream: av.AudioStream, path: Path) -> Iterator[av.AudioFrame]:
    seconds = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                seconds = float(packet.pts * packet.time_base)
            yield from packet.decode()
    except av.FFmpegError as err:  # demuxing or decoding; a ValueError for the caller, who names the file and goes on
        raise ValueError(f"{path}: FFmpeg cannot decode it at {seconds:.2f} s ({err.strerror}).") from err


def _float_frames(frames: Iterable[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """Decoded frames as planar float32 (int16 / 32768, as soundfile reads it) at the first frame's rate: FFmpeg
    converts each frame's sample format, and the rate of any part of a stream that changes it (a spliced broadcast)."""
    convert, source, rate = None, None, None
    for frame in frames:
        if (frame.format.name, frame.layout.name, frame.sample_rate) != source:
            if convert is not None:
                yield from convert.resample(None)
            rate = rate or frame.sample_rate
            convert = av.AudioResampler(format="fltp", rate=rate)
            source = (frame.format.name, frame.layout.name, frame.sample_rate)
        yield from convert.resample(frame)
    if convert is not None:
        yield from convert.resample(None)


def _mono_16k(blocks: Iterable[np.ndarray], rate: int, frames: int) -> np.ndarray:
    """Mono float32 blocks at `rate`, resampled as they come, so that only the 16 kHz result is ever whole in memory:
    a 30-minute 44.1 kHz stereo file is 115 MB of it, not the 635 MB of float32 it decodes to. soxr's stream gives
    exactly what its one-shot `soxr.resample` (librosa's default) gives, trimmed or zero-padded to
    ceil(frames x 16000 / rate) samples as librosa does. `frames` sizes the result: exact from libsndfile, an
    estimate from FFmpeg; a stream that runs longer grows it, one that ends sooner shrinks it in place."""
    mono = np.zeros(math.ceil(frames * SAMPLE_RATE / rate), dtype=np.float32)
    resample = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ").resample_chunk
    filled = read = 0
    for block in itertools.chain(blocks, [None]):  # None: flush the resampler
        chunk = block if block is not None else np.zeros(0, dtype=np.float32)
        read += len(chunk)
        if rate != SAMPLE_RATE:
            chunk = resample(chunk, last=block is None)
        if filled + len(chunk) > len(mono):  # no view of `mono` is alive: resizing in place is safe
            mono.resize(max(filled + len(chunk), len(mono) * 3 // 2), refcheck=False)
        mono[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    mono.resize(math.ceil(read * SAMPLE_RATE / rate), refcheck=False)  # zero-padded where the filter left it short
    return mono


def to_dtype(samples: np.ndarray, dtype: str) -> np.ndarray:
    """int16 or floating-point samples as `dtype` ("float32" or "int16"): float in [-1, 1) is int16 / 32768, as
    soundfile reads PCM. The project's one int16 <-> float conversion (`LogMelSpectrogram` scales torch tensors by the
    same INT16_SCALE)."""
    if samples.dtype == dtype:
        return samples
    if samples.dtype != np.int16 and not np.issubdtype(samples.dtype, np.floating):
        raise TypeError(f"audio dtype must be int16 or floating point, got {samples.dtype}; convert PCM to int16.")
    if dtype == "float32":
        return samples.astype(np.float32) / INT16_SCALE if samples.dtype == np.int16 else samples.astype(np.float32)
    return np.clip(np.round(samples * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def pad_waveforms(arrays: list[np.ndarray], num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips zero-padded (or cut) to `num_samples`, by default the longest, as one (batch, samples) tensor, and their
    lengths. int16 stays int16 when every clip is int16 (half the bytes to move to the device); else float32."""
    num_samples = max(len(audio) for audio in arrays) if num_samples is None else num_samples
    dtype = "int16" if all(audio.dtype == np.int16 for audio in arrays) else "float32"
    padded = np.zeros((len(arrays), num_samples), dtype=dtype)
    lengths = np.zeros(len(arrays), dtype=np.int64)
    for i, audio in enumerate(arrays):
        clip = to_dtype(audio[:num_samples], dtype)
        padded[i, : len(clip)] = clip
        lengths[i] = len(clip)
    return torch.from_numpy(padded), torch.from_numpy(lengths)
