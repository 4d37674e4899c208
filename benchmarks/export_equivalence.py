"""Does the faster-whisper export transcribe like the Transformers model it came from, and how fast is it?

python benchmarks/export_equivalence.py --write_results          # Whisper base, 21 clips, ~10 min on 2 cores
python benchmarks/export_equivalence.py --model_dir runs/ko-large-v3 --splits eval_clean --data_dir /data/Kspon
"""

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from faster_whisper import WhisperModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/export_equivalence.py`

from benchmarks.harness import REPO, arguments, markdown_table, publish, section_head
from kspon_dataset.corpus import SAMPLE_RATE as SAMPLING_RATE
from kspon_whisper.audio import read_audio, to_dtype
from kspon_whisper.export import QUANTIZATIONS, export_ct2
from kspon_whisper.inference import LANGUAGE, MAX_NEW_TOKENS, TASK
from kspon_whisper.metrics import loop_reason, score
from tools.offline_whisper import DEFAULT_OUTPUT_DIR
from tools.sample_audio import SAMPLE, sample_clips

SECTION = "## faster-whisper export: equivalence and speed"
WAV_CLIPS = {  # tests/data, espeak-ng (see its README)
    "ko_greeting": "안녕하세요 반갑습니다",
    "ko_weather": "오늘 날씨가 정말 좋네요",
    "ko_meeting": "내일 회의는 세 시에 시작합니다",
}


@dataclass
class Decoded:
    texts: list[str]
    tokens: list[list[int]]  # generated ids, without prompt or end token
    seconds: float


def features(processor: WhisperProcessor, audio: np.ndarray) -> np.ndarray:
    return processor.feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="np").input_features


def hf_decode(model_dir: Path, processor: WhisperProcessor, clips: list) -> Decoded:
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt, eot = processor.tokenizer.prefix_tokens, processor.tokenizer.eos_token_id
    settings = {"language": LANGUAGE, "task": TASK, "num_beams": 1, "do_sample": False}
    tokens, start = [], time.perf_counter()
    for audio, _ in clips:
        with torch.inference_mode():
            log_mel = torch.from_numpy(features(processor, audio))
            out = model.generate(log_mel, max_new_tokens=MAX_NEW_TOKENS, **settings)[0].tolist()
        out = out[len(prompt) :] if out[: len(prompt)] == prompt else out  # versions differ on echoing the prompt
        tokens.append([token for token in out if token != eot])
    return Decoded(_texts(processor, tokens), tokens, time.perf_counter() - start)


def ct2_decode(export_dir: Path, processor, clips: list, threads: int, compute_type="default") -> Decoded:
    """`ctranslate2.models.Whisper` on Transformers' log-mel and prompt: any difference is the model's."""
    model = ctranslate2.models.Whisper(str(export_dir), device="cpu", compute_type=compute_type, intra_threads=threads)
    prompt, tokens, start = processor.tokenizer.prefix_tokens, [], time.perf_counter()
    for audio, _ in clips:
        # suppress_blank: Transformers' begin_suppress_tokens; [-1]: config.json's suppress_ids, its suppress_tokens
        options = {"beam_size": 1, "max_length": len(prompt) + MAX_NEW_TOKENS, "suppress_blank": True}
        view = ctranslate2.StorageView.from_array(features(processor, audio))
        (result,) = model.generate(view, [prompt], suppress_tokens=[-1], **options)
        tokens.append(result.sequences_ids[0])
    return Decoded(_texts(processor, tokens), tokens, time.perf_counter() - start)


def faster_whisper_decode(export_dir: Path, clips: list, threads: int, pad: bool = True) -> Decoded:
    """faster-whisper as a user calls it, without the thresholds that re-decode or drop a segment. `pad`: to 30 s,
    so that the log-mel equals Transformers' (to 3e-5); unpadded, faster-whisper zero-pads the log-mel."""
    model = WhisperModel(str(export_dir), device="cpu", compute_type="default", cpu_threads=threads)
    options = {"compression_ratio_threshold": None, "log_prob_threshold": None, "no_speech_threshold": None}
    options |= {"beam_size": 1, "temperature": 0.0, "without_timestamps": True, "max_new_tokens": MAX_NEW_TOKENS}
    options |= {"language": LANGUAGE, "task": TASK, "condition_on_previous_text": False}
    texts, tokens, start = [], [], time.perf_counter()
    for audio, _ in clips:
        audio = np.pad(audio, (0, 30 * SAMPLING_RATE - len(audio))) if pad else audio
        segments, _ = model.transcribe(audio, **options)
        segments = list(segments)  # a generator: decoding happens here
        texts.append("".join(segment.text for segment in segments).strip())
        tokens.append([token for segment in segments for token in segment.tokens])
    return Decoded(texts, tokens, time.perf_counter() - start)


def _texts(processor: WhisperProcessor, tokens: list[list[int]]) -> list[str]:
    return [processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in tokens]


def summary(decoded: Decoded, clips: list) -> list:  # CER against the references, loops, tokens
    references, texts = [reference for _, reference in clips], decoded.texts
    loops = sum(loop_reason(ref, hyp) is not None for ref, hyp in zip(references, texts, strict=True))
    return [f"{score(references, texts)['cer']:.3f}", loops, sum(map(len, decoded.tokens))]


def run(model_dir: Path, clips: list, threads: int, workdir: Path) -> tuple:
    torch.set_num_threads(threads)
    processor = WhisperProcessor.from_pretrained(model_dir)
    processor.tokenizer.set_prefix_tokens(language=LANGUAGE, task=TASK, predict_timestamps=False)  # the prompt
    hf, rows = hf_decode(model_dir, processor, clips), []
    for quantization in QUANTIZATIONS:
        start = time.perf_counter()
        export_dir = export_ct2(model_dir, workdir / f"ct2-{quantization}", quantization, overwrite=True)
        export_s, mib = time.perf_counter() - start, sum(path.stat().st_size for path in export_dir.iterdir()) / 2**20
        decoders = {
            "ctranslate2, HF log-mel": ct2_decode(export_dir, processor, clips, threads),
            "faster-whisper, audio padded to 30 s": faster_whisper_decode(export_dir, clips, threads),
            "faster-whisper, audio as is": faster_whisper_decode(export_dir, clips, threads, pad=False),
        }
        if quantization == "float32":  # int8 from the converter, or float32 weights quantized when loaded?
            at_load = ct2_decode(export_dir, processor, clips, threads, compute_type="int8")
            decoders["ctranslate2, HF log-mel, loaded with compute_type int8"] = at_load
        compute_type = ctranslate2.models.Whisper(str(export_dir), device="cpu").compute_type
        for name, decoded in decoders.items():
            same = sum(a == b for a, b in zip(hf.texts, decoded.texts, strict=True))
            rows.append([quantization, f"{mib:.0f}", f"{export_s:.1f}", compute_type, name, f"{same}/{len(clips)}"])
            rows[-1] += [f"{score(hf.texts, decoded.texts)['cer']:.4f}", *summary(decoded, clips)]
            rows[-1] += [f"{decoded.seconds:.1f}", f"{hf.seconds / decoded.seconds:.1f}x"]
    return hf, rows


def format_section(hf: Decoded, rows: list, clips: list, args, argv: list[str] | None) -> str:
    header = ["export", "folder MiB", "export s", "CPU compute type", "decoder", "identical to HF", "CER vs HF"]
    header += ["CER vs refs", "loops", "tokens", "decode s", "speed vs HF"]
    wavs, (cer, loops, tokens) = len(WAV_CLIPS), summary(hf, clips)
    return (
        section_head(SECTION, __file__, argv, "ctranslate2", "faster-whisper")
        + f"- Model: `{args.model_dir.name}`; {len(clips)} clips ({wavs} from tests/data, {len(clips) - wavs} from "
        f"the corpus), {sum(len(audio) for audio, _ in clips) / SAMPLING_RATE:.0f} s of speech. Greedy, Korean, no "
        f"timestamps, at most {MAX_NEW_TOKENS} new tokens, one clip at a time, {args.threads} threads per decoder.\n"
        f"- Transformers float32 (the reference decoder): CER {cer} against the references, {loops} loops, {tokens} "
        f"tokens in {hf.seconds:.1f} s.\n\n" + markdown_table(header, rows) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--model_dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="default: the offline base")
    parser.add_argument("--data_dir", type=Path, default=SAMPLE)
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    wavs = [(read_audio(REPO / "tests" / "data" / f"{name}.wav"), text) for name, text in WAV_CLIPS.items()]
    corpus = sample_clips(args.splits, data_dir=args.data_dir).values()
    clips = wavs + [(to_dtype(pcm, "float32"), text) for text, pcm in corpus]  # (float32 audio, reference)
    with tempfile.TemporaryDirectory(prefix="export_equivalence-") as workdir:
        hf, rows = run(args.model_dir, clips, args.threads, Path(workdir))
    publish(format_section(hf, rows, clips, args, argv), args.write_results)


if __name__ == "__main__":
    main()
