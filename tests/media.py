"""Audio and video files as users bring them, encoded with PyAV (FFmpeg's own encoders; no ffmpeg command needed)."""

import io
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# name: (audio codec, its sample rate, channel layout, video codec or None), as phones, browsers and editors write them
FORMATS = {
    "talk.mp3": ("libmp3lame", 44_100, "stereo", None),
    "talk.m4a": ("aac", 44_100, "stereo", None),
    "talk.ogg": ("libopus", 48_000, "stereo", None),
    "talk.webm": ("libopus", 48_000, "stereo", None),
    "talk.mp4": ("aac", 48_000, "stereo", "mpeg4"),  # a video with its sound
    "talk_8k.wav": ("pcm_mulaw", 8_000, "mono", None),  # telephone: 8 kHz G.711 mu-law
}


def encode(
    path: Path,
    samples: np.ndarray,
    rate: int,
    codec: str | None,
    codec_rate: int = 0,
    layout: str = "mono",
    video: str | None = None,
    live: bool = False,
) -> Path:
    """Write mono `samples` at `rate` into `path` (its suffix picks the container) as `codec` at `codec_rate`, in
    every channel of `layout`; `video` adds 64x64 frames at 10 fps for as long; codec None writes the video only.
    `live` writes it as to a pipe, the way a browser's MediaRecorder writes webm: the header never gets a duration."""
    output = _Pipe(path) if live else str(path)
    with av.open(output, "w", format=path.suffix[1:] if live else None) as container:
        # every stream is added before the first packet writes the header
        sound = container.add_stream(codec, rate=codec_rate or rate, layout=layout) if codec else None
        picture = container.add_stream(video, rate=10) if video else None
        if picture is not None:
            picture.width = picture.height = 64
            picture.pix_fmt = "yuv420p"
        if sound is not None:
            # Each channel a copy of the samples (FFmpeg's own upmix would lower them by 3 dB), starting at time 0:
            # given a start, the encoder's delay (AAC's 1,024 samples of priming) is written as an edit list, as
            # ffmpeg writes it, and the decoder drops it. PyAV resamples the frame and cuts it to the encoder's size.
            channels = np.tile(samples.astype(np.float32), (sound.layout.nb_channels, 1))
            frame = av.AudioFrame.from_ndarray(channels, format="fltp", layout=sound.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            _mux(container, sound, frame)
            _mux(container, sound, None)
        if picture is not None:
            for i in range(math.ceil(len(samples) * 10 / rate)):
                image = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i % 256, dtype=np.uint8), format="rgb24")
                image.pts = i
                _mux(container, picture, image)
            _mux(container, picture, None)
    if live:
        output.close()
    return path


def encode_as(path: Path, samples: np.ndarray, rate: int) -> Path:
    """`path` in the format FORMATS gives its name."""
    codec, codec_rate, layout, video = FORMATS[path.name]
    return encode(path, samples, rate, codec, codec_rate, layout, video)


class _Pipe(io.RawIOBase):
    """A file FFmpeg can only append to, as to a pipe: a muxer cannot go back to write the length."""

    def __init__(self, path: Path):
        self.file = path.open("wb")

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


def _mux(container: av.container.OutputContainer, stream: av.stream.Stream, frame: av.frame.Frame | None) -> None:
    for packet in stream.encode(frame):
        container.mux(packet)
