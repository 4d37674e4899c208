"""Does the faster-whisper export transcribe like the Transformers model it came from, and how fast is it?

    python benchmarks/export_equivalence.py --write_results          # Whisper base, 21 clips, ~10 min on 2 cores
    python benchmarks/export_equivalence.py --model_dir runs/ko-large-v3 --splits eval_clean --data_dir /data/Kspon

Each quantization is exported with `kspon_whisper.export.export_ct2`, then every clip is decoded greedily, in Korean,
without timestamps, at most MAX_NEW_TOKENS tokens (the trainer's evaluation settings), by
1. Transformers in float32: `generate(language="ko", task="transcribe", num_beams=1)`, the reference decoder;
2. `ctranslate2.models.Whisper` on the same log-mel input with the same prompt;
3. `faster_whisper.WhisperModel.transcribe` on the raw audio (its own log-mel, its own decoding loop).
Transcripts are compared exactly and by CER against Transformers' (both normalised as the project scores). Clips
are decoded one at a time, as faster-whisper does, with the same number of threads everywhere.
tests/test_export.py runs the same functions on fewer clips and asserts what this measures.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
import soundfile
import torch
from faster_whisper import WhisperModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/export_equivalence.py`, the repo need not be installed

from benchmarks.data_pipeline import cpu_model, write_section  # noqa: E402
from kspon_dataset.corpus import read_utterance  # noqa: E402
from kspon_whisper.convert_ct2 import DEFAULT_OUTPUT_DIR  # noqa: E402
from kspon_whisper.data import load_splits  # noqa: E402
from kspon_whisper.evaluation import LANGUAGE, MAX_NEW_TOKENS, TASK  # noqa: E402
from kspon_whisper.export import QUANTIZATIONS, export_ct2  # noqa: E402
from kspon_whisper.metrics import score  # noqa: E402

SAMPLE = REPO / "kspon_dataset" / "sample"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## faster-whisper export: equivalence and speed"
SAMPLING_RATE = 16_000
WHISPER_WINDOW_S = 30
WAV_CLIPS = {  # tests/data, espeak-ng (see its README)
    "ko_greeting": "안녕하세요 반갑습니다",
    "ko_weather": "오늘 날씨가 정말 좋네요",
    "ko_meeting": "내일 회의는 세 시에 시작합니다",
}


@dataclass
class Clip:
    id: str
    audio: np.ndarray  # float32 in [-1, 1], 16 kHz
    reference: str


@dataclass
class Decoded:
    texts: list[str]
    tokens: list[list[int]] | None  # generated ids without prompt or end token (None: faster-whisper)
    seconds: float


def wav_clips(names: list[str] | tuple[str, ...] = tuple(WAV_CLIPS)) -> list[Clip]:
    clips = []
    for name in names:
        audio, rate = soundfile.read(REPO / "tests" / "data" / f"{name}.wav", dtype="float32")
        assert rate == SAMPLING_RATE, name
        clips.append(Clip(name, audio, WAV_CLIPS[name]))
    return clips


def corpus_clips(data_dir: Path, splits: list[str], ids: set[str] | None = None) -> list[Clip]:
    """The utterances of `splits` (or only `ids` among them), read as the trainer reads them."""
    clips = []
    for name, split in load_splits(str(data_dir), config="spelling", split_scheme="random", streaming=True).items():
        if name not in splits:
            continue
        for i in range(len(split.data)):
            if ids is not None and split.data.utterance(i)[2] not in ids:
                continue
            example, _ = read_utterance(split.data, i, "spelling")
            if example is not None:
                audio = np.frombuffer(example["pcm"], "<i2").astype(np.float32) / 32768.0
                clips.append(Clip(example["id"], audio, example["text"]))
    return clips


def prompt_ids(processor: WhisperProcessor) -> list[int]:
    tokens = ["<|startoftranscript|>", f"<|{LANGUAGE}|>", f"<|{TASK}|>", "<|notimestamps|>"]
    return processor.tokenizer.convert_tokens_to_ids(tokens)


def features(processor: WhisperProcessor, clip: Clip) -> np.ndarray:
    return processor.feature_extractor(clip.audio, sampling_rate=SAMPLING_RATE, return_tensors="np").input_features


def hf_decode(model_dir: Path, clips: list[Clip], max_new_tokens: int = MAX_NEW_TOKENS) -> Decoded:
    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt, eot = prompt_ids(processor), processor.tokenizer.eos_token_id
    tokens, start = [], time.perf_counter()
    for clip in clips:
        with torch.inference_mode():
            out = model.generate(
                torch.from_numpy(features(processor, clip)),
                language=LANGUAGE,
                task=TASK,
                num_beams=1,
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )[0].tolist()
        out = out[len(prompt) :] if out[: len(prompt)] == prompt else out  # versions differ on echoing the prompt
        tokens.append([token for token in out if token != eot])
    seconds = time.perf_counter() - start
    return Decoded(_texts(processor, tokens), tokens, seconds)


def ct2_decode(
    export_dir: Path,
    processor: WhisperProcessor,
    clips: list[Clip],
    threads: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> Decoded:
    """`ctranslate2.models.Whisper` on Transformers' log-mel and prompt: any difference is the model's."""
    model = ctranslate2.models.Whisper(str(export_dir), device="cpu", intra_threads=threads)
    prompt, tokens, start = prompt_ids(processor), [], time.perf_counter()
    for clip in clips:
        (result,) = model.generate(
            ctranslate2.StorageView.from_array(features(processor, clip)),
            [prompt],
            beam_size=1,
            max_length=len(prompt) + max_new_tokens,
            suppress_blank=True,  # Transformers' begin_suppress_tokens
            suppress_tokens=[-1],  # config.json's suppress_ids, Transformers' suppress_tokens
        )
        tokens.append(result.sequences_ids[0])
    seconds = time.perf_counter() - start
    return Decoded(_texts(processor, tokens), tokens, seconds)


def faster_whisper_decode(
    export_dir: Path, clips: list[Clip], threads: int, max_new_tokens: int = MAX_NEW_TOKENS, *, pad: bool = True
) -> Decoded:
    """faster-whisper as a user calls it, with the thresholds that would re-decode or drop a segment turned off.

    `pad`: give it the audio padded to Whisper's 30 s window, so that its log-mel equals Transformers' (to 3e-5).
    Unpadded, it pads the log-mel itself as openai/whisper does (zeros after the speech, where Transformers puts
    the log-mel of silence): a different input, which changes uncertain tokens.
    """
    model = WhisperModel(str(export_dir), device="cpu", compute_type="default", cpu_threads=threads)
    window = WHISPER_WINDOW_S * SAMPLING_RATE
    texts, start = [], time.perf_counter()
    for clip in clips:
        audio = np.pad(clip.audio, (0, window - len(clip.audio))) if pad else clip.audio
        segments, _ = model.transcribe(
            audio,
            language=LANGUAGE,
            task=TASK,
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            compression_ratio_threshold=None,
            log_prob_threshold=None,
            no_speech_threshold=None,
            max_new_tokens=max_new_tokens,
        )
        texts.append("".join(segment.text for segment in segments).strip())  # a generator: decoding happens here
    return Decoded(texts, None, time.perf_counter() - start)


def _texts(processor: WhisperProcessor, tokens: list[list[int]]) -> list[str]:
    return [processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in tokens]


def compare(reference: Decoded, other: Decoded, clips: list[Clip]) -> dict:
    return {
        "identical": sum(a == b for a, b in zip(reference.texts, other.texts, strict=True)),
        "cer_vs_hf": score(reference.texts, other.texts)["cer"],
        "cer_vs_references": score([clip.reference for clip in clips], other.texts)["cer"],
        "seconds": other.seconds,
    }


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir()) / 2**20


def run(model_dir: Path, clips: list[Clip], quantizations: list[str], threads: int, workdir: Path) -> dict:
    torch.set_num_threads(threads)
    processor = WhisperProcessor.from_pretrained(model_dir)
    hf = hf_decode(model_dir, clips)
    results = {"hf": hf, "hf_cer_vs_references": score([clip.reference for clip in clips], hf.texts)["cer"]}
    for quantization in quantizations:
        start = time.perf_counter()
        export_dir = export_ct2(model_dir, workdir / f"ct2-{quantization}", quantization, overwrite=True)
        export_s = time.perf_counter() - start
        compute_type = ctranslate2.models.Whisper(str(export_dir), device="cpu").compute_type
        results[quantization] = {
            "export_s": export_s,
            "mib": folder_mib(export_dir),
            "compute_type": compute_type,
            "ct2": compare(hf, ct2_decode(export_dir, processor, clips, threads), clips),
            "faster_whisper": compare(hf, faster_whisper_decode(export_dir, clips, threads), clips),
            "faster_whisper_raw": compare(hf, faster_whisper_decode(export_dir, clips, threads, pad=False), clips),
        }
    return results


def format_section(results: dict, clips: list[Clip], model_dir: Path, command: str, threads: int) -> str:
    hf = results["hf"]
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("ctranslate2", "faster-whisper", "transformers")
    )
    lines = [
        SECTION,
        "",
        f"- Command: `{command}`",
        (
            f"- Machine: {os.cpu_count()} cores ({cpu_model()}), {threads} threads for every decoder, shared with "
            f"other test runs; Python {platform.python_version()}, torch {torch.__version__}, {versions}."
        ),
        (
            f"- Model: `{model_dir.name}` ({model_dir}); {len(clips)} clips ({', '.join(_clip_sources(clips))}), "
            f"{sum(len(c.audio) for c in clips) / SAMPLING_RATE:.0f} s of espeak-ng speech. Greedy, Korean, no "
            f"timestamps, at most {MAX_NEW_TOKENS} new tokens, one clip at a time."
        ),
        (
            f"- Transformers float32: {hf.seconds:.1f} s in all, CER {results['hf_cer_vs_references']:.3f} against "
            "the references (the untouched base model on a robotic voice: the point is agreement, not accuracy)."
        ),
        "",
        (
            "| export | folder MiB | export s | CPU compute type | decoder | identical to HF | CER vs HF "
            "| CER vs refs | decode s | speed vs HF |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for quantization in QUANTIZATIONS:
        if quantization not in results:
            continue
        r = results[quantization]
        for decoder, name in DECODERS.items():
            d = r[decoder]
            lines.append(
                f"| {quantization} | {r['mib']:.0f} | {r['export_s']:.1f} | {r['compute_type']} | {name} "
                f"| {d['identical']}/{len(clips)} | {d['cer_vs_hf']:.4f} | {d['cer_vs_references']:.3f} "
                f"| {d['seconds']:.1f} | {hf.seconds / d['seconds']:.1f}x |"
            )
    lines += [
        "",
        (
            "CER vs HF scores each export's transcripts against Transformers' float32 ones (normalised as the project "
            "scores); identical counts exact string matches. faster-whisper given the audio padded to 30 s computes "
            "the same log-mel as Transformers (to 3e-5), so its rows differ from HF only through the model; given "
            "the audio as is, it pads the log-mel as openai/whisper does (zeros after the speech, where Transformers "
            "has the log-mel of silence), a different input to the same model. On a CPU CTranslate2 computes float16 "
            "weights in float32 and int8_float16 in int8 (the compute type column), so the float16 rows measure the "
            "fp16 rounding of the weights only; on a GPU they run in float16."
        ),
    ]
    return "\n".join(lines) + "\n"


DECODERS = {
    "ct2": "ctranslate2, HF log-mel",
    "faster_whisper": "faster-whisper, audio padded to 30 s",
    "faster_whisper_raw": "faster-whisper, audio as is",
}


def _clip_sources(clips: list[Clip]) -> list[str]:
    wavs = sum(clip.id in WAV_CLIPS for clip in clips)
    return ([f"{wavs} from tests/data"] if wavs else []) + (
        [f"{len(clips) - wavs} from the sample corpus"] if len(clips) > wavs else []
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model_dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="default: the offline base")
    parser.add_argument("--data_dir", type=Path, default=SAMPLE)
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS), choices=QUANTIZATIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    parser.add_argument("--results_file", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    clips = wav_clips() + corpus_clips(args.data_dir, args.splits)
    with tempfile.TemporaryDirectory(prefix="export_equivalence-") as workdir:
        results = run(args.model_dir, clips, args.quantizations, args.threads, Path(workdir))
    command = "python benchmarks/export_equivalence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = format_section(results, clips, args.model_dir, command.strip(), args.threads)
    print(section)
    if args.write_results:
        write_section(args.results_file, section)


if __name__ == "__main__":
    main()
