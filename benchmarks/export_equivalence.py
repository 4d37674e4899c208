"""Does the faster-whisper export transcribe like the Transformers model it came from, and how fast is it?

    python benchmarks/export_equivalence.py --write_results          # Whisper base, 21 clips, ~10 min on 2 cores
    python benchmarks/export_equivalence.py --int8_variants --write_results  # which int8 weights change the text
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
import contextlib
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
from kspon_dataset.corpus import SAMPLE_RATE as SAMPLING_RATE  # noqa: E402
from kspon_dataset.corpus import read_utterance  # noqa: E402
from kspon_whisper.data import load_splits  # noqa: E402
from kspon_whisper.export import QUANTIZATIONS, export_ct2  # noqa: E402
from kspon_whisper.inference import LANGUAGE, MAX_NEW_TOKENS, TASK  # noqa: E402
from kspon_whisper.metrics import loop_reason, score  # noqa: E402
from tools.offline_whisper import DEFAULT_OUTPUT_DIR  # noqa: E402

SAMPLE = REPO / "kspon_dataset" / "sample"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## faster-whisper export: equivalence and speed"
INT8_SECTION = "## faster-whisper export: which int8 weights change the transcripts"
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
    tokens: list[list[int]]  # generated ids, without prompt or end token
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
    compute_type: str = "default",
) -> Decoded:
    """`ctranslate2.models.Whisper` on Transformers' log-mel and prompt: any difference is the model's."""
    model = ctranslate2.models.Whisper(str(export_dir), device="cpu", compute_type=compute_type, intra_threads=threads)
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
    texts, tokens, start = [], [], time.perf_counter()
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
        segments = list(segments)  # a generator: decoding happens here
        texts.append("".join(segment.text for segment in segments).strip())
        tokens.append([token for segment in segments for token in segment.tokens])
    return Decoded(texts, tokens, time.perf_counter() - start)


def _texts(processor: WhisperProcessor, tokens: list[list[int]]) -> list[str]:
    return [processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in tokens]


def compare(reference: Decoded, other: Decoded, clips: list[Clip]) -> dict:
    return {
        "identical": sum(a == b for a, b in zip(reference.texts, other.texts, strict=True)),
        "cer_vs_hf": score(reference.texts, other.texts)["cer"],
        **summary(other, clips),
    }


def summary(decoded: Decoded, clips: list[Clip]) -> dict:
    references = [clip.reference for clip in clips]
    return {
        "cer_vs_references": score(references, decoded.texts)["cer"],
        "loops": sum(loop_reason(ref, hyp) is not None for ref, hyp in zip(references, decoded.texts, strict=True)),
        "tokens": sum(map(len, decoded.tokens)),
        "seconds": decoded.seconds,
    }


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir()) / 2**20


def run(model_dir: Path, clips: list[Clip], quantizations: list[str], threads: int, workdir: Path) -> dict:
    torch.set_num_threads(threads)
    processor = WhisperProcessor.from_pretrained(model_dir)
    hf = hf_decode(model_dir, clips)
    results = {"hf": summary(hf, clips)}
    for quantization in quantizations:
        start = time.perf_counter()
        export_dir = export_ct2(model_dir, workdir / f"ct2-{quantization}", quantization, overwrite=True)
        export_s = time.perf_counter() - start
        decoders = {
            "ct2": ct2_decode(export_dir, processor, clips, threads),
            "faster_whisper": faster_whisper_decode(export_dir, clips, threads),
            "faster_whisper_raw": faster_whisper_decode(export_dir, clips, threads, pad=False),
        }
        if quantization == "float32":  # int8 from the converter, or float32 weights quantized when loaded?
            decoders["ct2_int8_at_load"] = ct2_decode(export_dir, processor, clips, threads, compute_type="int8")
        results[quantization] = {
            "export_s": export_s,
            "mib": folder_mib(export_dir),
            "compute_type": ctranslate2.models.Whisper(str(export_dir), device="cpu").compute_type,
            "decoders": {name: compare(hf, decoded, clips) for name, decoded in decoders.items()},
        }
    return results


DECODERS = {
    "ct2": "ctranslate2, HF log-mel",
    "faster_whisper": "faster-whisper, audio padded to 30 s",
    "faster_whisper_raw": "faster-whisper, audio as is",
    "ct2_int8_at_load": "ctranslate2, HF log-mel, loaded with compute_type int8",
}
HEADER = (
    "| export | folder MiB | export s | CPU compute type | decoder | identical to HF | CER vs HF | CER vs refs "
    "| loops | tokens | decode s | speed vs HF |"
)


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
            f"other test runs (times are indicative); Python {platform.python_version()}, torch {torch.__version__}, "
            f"{versions}."
        ),
        (
            f"- Model: `{model_dir.name}`; {len(clips)} clips ({', '.join(_clip_sources(clips))}), "
            f"{sum(len(c.audio) for c in clips) / SAMPLING_RATE:.0f} s of espeak-ng speech. Greedy, Korean, no "
            f"timestamps, at most {MAX_NEW_TOKENS} new tokens, one clip at a time."
        ),
        (
            f"- Transformers float32 (the reference decoder): CER {hf['cer_vs_references']:.3f} against the "
            f"references, {hf['loops']} loops, {hf['tokens']} tokens in {hf['seconds']:.1f} s. The base model is "
            "not fine-tuned and the voice is robotic: what matters here is agreement, not accuracy."
        ),
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
    ]
    for quantization in QUANTIZATIONS:
        if quantization not in results:
            continue
        r = results[quantization]
        for decoder, d in r["decoders"].items():
            lines.append(
                f"| {quantization} | {r['mib']:.0f} | {r['export_s']:.1f} | {r['compute_type']} | {DECODERS[decoder]} "
                f"| {d['identical']}/{len(clips)} | {d['cer_vs_hf']:.4f} | {d['cer_vs_references']:.3f} "
                f"| {d['loops']} | {d['tokens']} | {d['seconds']:.1f} | {hf['seconds'] / d['seconds']:.1f}x |"
            )
    lines += [
        "",
        (
            "CER vs HF scores each transcript against Transformers' float32 one (both normalised as the project "
            "scores); identical counts exact string matches; loops counts hypotheses that "
            "`kspon_whisper.metrics.loop_reason` flags (over twice the reference's length, or a unit repeated 5 "
            "times). faster-whisper given the audio padded to 30 s computes the same log-mel as Transformers (to "
            "3e-5), so those rows differ from HF only through the model; given the audio as is, it pads the log-mel "
            "as openai/whisper does (zeros after the speech, where Transformers has the log-mel of silence), a "
            "different input to the same model. On a CPU CTranslate2 computes float16 weights in float32 and "
            "int8_float16 in int8 (the compute type column), so the float16 rows measure the fp16 rounding of the "
            "weights only; on a GPU they run in float16."
        ),
    ]
    return "\n".join(lines) + "\n"


def _clip_sources(clips: list[Clip]) -> list[str]:
    wavs = sum(clip.id in WAV_CLIPS for clip in clips)
    return ([f"{wavs} from tests/data"] if wavs else []) + (
        [f"{len(clips) - wavs} from the sample corpus"] if len(clips) > wavs else []
    )


@contextlib.contextmanager
def int8_except(*kept: str):
    """Exports made inside quantize every weight but those whose name holds one of `kept`, which stay in float32
    (through the filter of ctranslate2's private `LayerSpec._quantize`, so only for this measurement)."""
    from ctranslate2.specs import model_spec

    quantize = model_spec.LayerSpec._quantize

    def quantize_except(self, quantization, variable_filter=None):
        return quantize(self, quantization, variable_filter=lambda name: not any(k in name for k in kept))

    model_spec.LayerSpec._quantize = quantize_except
    try:
        yield
    finally:
        model_spec.LayerSpec._quantize = quantize


INT8_VARIANTS = {  # name: (quantization, weights kept in float32, compute type when loaded)
    "float32 export": ("float32", (), "default"),
    "float16 export, quantized to int8 when loaded": ("float16", (), "int8"),
    "int8 export (what `--quantization int8` writes)": ("int8", (), "default"),
    "int8 export, conv1/conv2 kept float32": ("int8", ("conv",), "default"),
    "int8 export, conv1/conv2 and token embeddings kept float32": ("int8", ("conv", "embeddings"), "default"),
}


def run_int8_variants(model_dir: Path, clips: list[Clip], threads: int, workdir: Path) -> dict:
    torch.set_num_threads(threads)
    processor = WhisperProcessor.from_pretrained(model_dir)
    hf = hf_decode(model_dir, clips)
    results = {"hf": summary(hf, clips)}
    for i, (name, (quantization, kept, compute_type)) in enumerate(INT8_VARIANTS.items()):
        with int8_except(*kept):
            export_dir = export_ct2(model_dir, workdir / f"variant-{i}", quantization)
        decoded = ct2_decode(export_dir, processor, clips, threads, compute_type=compute_type)
        results[name] = {"mib": (export_dir / "model.bin").stat().st_size / 2**20, **compare(hf, decoded, clips)}
    return results


def format_int8_section(results: dict, clips: list[Clip], model_dir: Path, command: str) -> str:
    hf = results["hf"]
    header = "| weights | model.bin MiB | identical to HF | CER vs HF | CER vs refs | loops | tokens |"
    lines = [INT8_SECTION, "", f"- Command: `{command}`"]
    lines.append(
        f"- Model `{model_dir.name}`, the same {len(clips)} clips and decoding as the section above, decoded by "
        "`ctranslate2.models.Whisper` on Transformers' log-mel; Transformers float32: CER "
        f"{hf['cer_vs_references']:.3f} against the references, {hf['loops']} loops, {hf['tokens']} tokens."
    )
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for name in INT8_VARIANTS:
        r = results[name]
        lines.append(
            f"| {name} | {r['mib']:.0f} | {r['identical']}/{len(clips)} | {r['cer_vs_hf']:.4f} "
            f"| {r['cer_vs_references']:.3f} | {r['loops']} | {r['tokens']} |"
        )
    lines += ["", INT8_NOTE]
    return "\n".join(lines) + "\n"


INT8_NOTE = (
    "Whisper base is unsure of this robotic voice (its float32 transcripts are poor), so small weight changes "
    "flip its tokens: these rows show where the int8 export's differences come from on this model (mostly the "
    "int8 convolutions of the encoder's input, then the int8 token embeddings, which are also the output "
    "projection), not what int8 costs a fine-tuned model on real speech. The export writes what CTranslate2's "
    "converter writes; measure a trained model with `--model_dir`."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model_dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="default: the offline base")
    parser.add_argument("--data_dir", type=Path, default=SAMPLE)
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS), choices=QUANTIZATIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8_variants", action="store_true", help=f"measure '{INT8_SECTION}' instead")
    parser.add_argument("--write_results", action="store_true", help="update this measurement's section")
    parser.add_argument("--results_file", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    clips = wav_clips() + corpus_clips(args.data_dir, args.splits)
    command = (
        "python benchmarks/export_equivalence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ).strip()
    with tempfile.TemporaryDirectory(prefix="export_equivalence-") as workdir:
        if args.int8_variants:
            results = run_int8_variants(args.model_dir, clips, args.threads, Path(workdir))
            section = format_int8_section(results, clips, args.model_dir, command)
        else:
            results = run(args.model_dir, clips, args.quantizations, args.threads, Path(workdir))
            section = format_section(results, clips, args.model_dir, command, args.threads)
    print(section)
    if args.write_results:
        write_section(args.results_file, section)


if __name__ == "__main__":
    main()
