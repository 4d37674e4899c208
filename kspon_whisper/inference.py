"""Decoding Korean speech with Whisper: the one home of generation settings, precision, features and long form.

The trainer's evaluation (`evaluation.evaluate`, behind `train_accelerate.py` and `eval_whisper.py`) and
`transcribe.py` decode through here, so a clip gets the same text from both: samples from the one reader
(`kspon_whisper.audio`), log-mel on the device (`LogMelSpectrogram`, as in training), fp32 weights under autocast
(`autocast`: bf16 on CUDA, off on the CPU) and `GenerationSettings`. Clips up to 30 s are decoded in batches without
timestamps, as evaluation scores them; longer audio goes whole through transformers' sequential long-form decoding
(timestamps, temperature fallback), which returns timed segments.

    model, processor = load_model("runs/ko-large-v3", device)
    transcriber = Transcriber(model, processor, GenerationSettings(num_beams=5))
    [result] = transcriber([read_audio("lecture.flac")])   # result.text, result.segments: [Segment(start, end, text)]
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from kspon_dataset.corpus import SAMPLE_RATE

from .audio import pad_waveforms
from .log_mel import LogMelSpectrogram

LANGUAGE, TASK = "ko", "transcribe"
NUM_BEAMS = 1  # greedy unless asked: beams multiply generation time for a small gain on fine-tuned Whisper
MAX_NEW_TOKENS = 225  # about half the decoder's positions; a 30 s KsponSpeech utterance needs at most ~150 tokens
# The Whisper paper's long-form fallback: retry a window at rising temperature while its text compresses too well
# (a loop) or its tokens are too unlikely.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# <|startoftranscript|><|ko|><|transcribe|><|notimestamps|>; with timestamps (long form) the last one goes.
PROMPT_TOKENS = 4
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def set_korean_transcription(model: torch.nn.Module, processor: WhisperProcessor | None = None) -> None:
    """Korean transcription for `generate` and for the labels, whatever language or task the checkpoint was saved
    with; forced decoder ids (set in older checkpoints such as openai/whisper-large-v2) would override both."""
    if processor is not None:
        processor.tokenizer.set_prefix_tokens(language=LANGUAGE, task=TASK, predict_timestamps=False)
    model.generation_config.language = LANGUAGE
    model.generation_config.task = TASK
    model.generation_config.forced_decoder_ids = None
    model.config.forced_decoder_ids = None


@dataclass(frozen=True)
class GenerationSettings:
    """How every path of the project decodes: evaluation, `eval_whisper.py` and `transcribe.py`."""

    num_beams: int = NUM_BEAMS  # beam size (1: greedy)
    max_new_tokens: int = MAX_NEW_TOKENS  # tokens per clip, or per 30 s window in long form
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size (0: off)
    # Long form only (audio over 30 s), as in the Whisper paper and openai-whisper's defaults; None turns one off.
    temperatures: tuple[float, ...] = FALLBACK_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4  # zlib ratio of a window's tokens above which it is redone
    logprob_threshold: float | None = -1.0  # mean token log-probability below which a window is redone
    no_speech_threshold: float | None = 0.6  # <|nospeech|> probability above which an unsure window is skipped
    condition_on_prev_tokens: bool = False  # prompt each window with the previous text (can carry a loop along)

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be 0 (off) or more, got {self.no_repeat_ngram_size}.")
        if self.no_speech_threshold is not None and self.logprob_threshold is None:
            raise ValueError(
                "no_speech_threshold needs logprob_threshold: a window counts as silence only when its text is also "
                "unlikely. Set a logprob_threshold, or turn no_speech_threshold off too."
            )

    def generate_kwargs(self, config: WhisperConfig, *, long_form: bool) -> dict:
        """Keyword arguments for `WhisperForConditionalGeneration.generate`, within the decoder's positions."""
        positions = config.max_target_positions
        if self.max_new_tokens > positions - PROMPT_TOKENS:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} does not fit: the decoder has {positions} positions "
                f"(max_target_positions), {PROMPT_TOKENS} of them for the prompt; use at most "
                f"{positions - PROMPT_TOKENS}."
            )
        kwargs = {
            "language": LANGUAGE,
            "task": TASK,
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if not long_form:
            return kwargs
        if self.condition_on_prev_tokens:
            # transformers prompts with up to positions // 2 - 1 previous tokens after <|startofprev|>, and raises
            # instead of shortening the window's budget when prompt and budget overflow the positions.
            room = positions - positions // 2 - (PROMPT_TOKENS - 1)
            kwargs["max_new_tokens"] = min(self.max_new_tokens, room)
        return kwargs | {
            "return_timestamps": True,
            "return_segments": True,
            "temperature": self.temperatures,
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "logprob_threshold": self.logprob_threshold,
            "no_speech_threshold": self.no_speech_threshold,
            "condition_on_prev_tokens": self.condition_on_prev_tokens,
        }


DEFAULT_SETTINGS = GenerationSettings()  # frozen, so one instance serves as every default


def default_mixed_precision(device: torch.device | str) -> str:
    """bf16 on CUDA, as the trainer evaluates (accelerate_config.yaml), none elsewhere: CPU bf16 is slow and lossy."""
    return "bf16" if torch.device(device).type == "cuda" else "no"


def autocast(device: torch.device | str, mixed_precision: str) -> contextlib.AbstractContextManager:
    """Autocast over fp32 weights, as Accelerate's mixed precision runs the trainer: the one way this project decodes.

    Casting the weights themselves to bf16 would round them once for good and decode differently from evaluation.
    """
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"mixed_precision must be one of no, {', '.join(_AUTOCAST_DTYPES)}; got {mixed_precision!r}.")
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[mixed_precision])


class ModelNotFoundError(ValueError):
    """`load_model` found no checkpoint: the message says where it looked."""


def load_model(
    name_or_path: str, device: torch.device | str, attn_implementation: str | None = None
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """A Whisper checkpoint (folder or Hub id) with fp32 weights on `device`, in eval mode, set to Korean: the one
    loader of `transcribe.py` and `eval_whisper.py`. `attn_implementation` None is transformers' default (sdpa)."""
    try:
        processor = WhisperProcessor.from_pretrained(name_or_path)
        model = WhisperForConditionalGeneration.from_pretrained(
            name_or_path, dtype=torch.float32, attn_implementation=attn_implementation
        )
    except (OSError, HFValidationError) as err:
        raise ModelNotFoundError(
            f"no model at {name_or_path}: it is neither a folder holding a Whisper checkpoint and its processor (the "
            "output_dir of train_accelerate.py) nor a Hub model id that can be reached from here "
            f"({str(err).splitlines()[0]})"
        ) from err
    set_korean_transcription(model, processor)
    return model.to(device).eval(), processor


@torch.no_grad()
def decode_clips(
    model: WhisperForConditionalGeneration,
    processor: WhisperProcessor,
    input_features: torch.Tensor,
    settings: GenerationSettings,
    mixed_precision: str,
) -> list[str]:
    """The transcript of each row of (batch, n_mels, 3000) features: one `generate` call, no timestamps."""
    with autocast(input_features.device, mixed_precision):
        tokens = model.generate(input_features, **settings.generate_kwargs(model.config, long_form=False))
    return [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the file
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: list[Segment]  # a clip of 30 s or less is one segment spanning it
    duration: float  # seconds of audio


class Transcriber:
    """Transcripts of 16 kHz mono waveforms: clips of 30 s or less decoded together, longer ones in long form."""

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        processor: WhisperProcessor,
        settings: GenerationSettings = DEFAULT_SETTINGS,
        mixed_precision: str | None = None,
    ):
        self.model, self.processor, self.settings = model, processor, settings
        self.device = model.device
        self.mixed_precision = mixed_precision or default_mixed_precision(self.device)
        self.log_mel = LogMelSpectrogram(processor.feature_extractor).to(self.device)
        self.window_frames = processor.feature_extractor.nb_max_frames  # 3000: one 30 s window of the encoder

    def is_long(self, num_samples: int) -> bool:
        """Over one window of frames, where transformers switches to long form (a few ms more fit in the last one)."""
        return num_samples // self.log_mel.hop_length > self.window_frames

    def __call__(self, audios: list[np.ndarray]) -> list[Transcript]:
        """One transcript per waveform (int16 or float32), in order."""
        results: list[Transcript | None] = [None] * len(audios)
        for long_form in (False, True):
            indices = [i for i, audio in enumerate(audios) if self.is_long(len(audio)) == long_form]
            if indices:
                decode = self._long if long_form else self._short
                for i, result in zip(indices, decode([audios[i] for i in indices]), strict=True):
                    results[i] = result
        return results

    def _short(self, audios: list[np.ndarray]) -> list[Transcript]:
        features = self.log_mel(self._batch(audios))
        texts = decode_clips(self.model, self.processor, features, self.settings, self.mixed_precision)
        durations = [len(audio) / SAMPLE_RATE for audio in audios]
        return [Transcript(t, [Segment(0.0, d, t)] if t else [], d) for t, d in zip(texts, durations, strict=True)]

    @torch.no_grad()
    def _long(self, audios: list[np.ndarray]) -> list[Transcript]:
        # The whole file at once, normalised over its whole length as WhisperFeatureExtractor(truncation=False,
        # padding="longest") does; transformers then slides its 30 s window by the timestamps it decodes.
        features = self.log_mel(self._batch(audios), pad_or_trim=False)
        lengths = torch.tensor([len(audio) for audio in audios], device=self.device)
        attention_mask = self.log_mel.attention_mask(lengths, features.shape[-1])
        with autocast(self.device, self.mixed_precision):
            out = self.model.generate(
                features,
                attention_mask=attention_mask,
                **self.settings.generate_kwargs(self.model.config, long_form=True),
            )
        results = []
        for audio, segments in zip(audios, out["segments"], strict=True):
            duration = len(audio) / SAMPLE_RATE
            timed = [_segment(segment, duration, self.processor) for segment in segments]
            timed = [segment for segment in timed if segment.text]
            results.append(Transcript(" ".join(segment.text for segment in timed), timed, duration))
        return results

    def _batch(self, audios: list[np.ndarray]) -> torch.Tensor:
        """Waveforms zero-padded to the longest, on the device."""
        return pad_waveforms(audios)[0].to(self.device)


def _segment(segment: dict, duration: float, processor: WhisperProcessor) -> Segment:
    """A segment of transformers' long-form output in seconds, with its text."""
    # The last window is padded to 30 s, and Whisper may stamp an end inside that padding.
    start, end = (min(float(segment[key]), duration) for key in ("start", "end"))
    return Segment(start, end, processor.decode(segment["tokens"], skip_special_tokens=True).strip())
