"""Export a fine-tuned Whisper to CTranslate2: a folder that faster-whisper loads as is, offline.

    python -m kspon_whisper.export --model_dir runs/ko-large-v3  # writes runs/ko-large-v3/ct2-float16
    python -m kspon_whisper.export --model_dir runs/ko-large-v3 --quantization float16 --output_dir ko-ct2-fp16

    from faster_whisper import WhisperModel
    model = WhisperModel("runs/ko-large-v3/ct2-float16", device="cuda", compute_type="float16")
    segments, info = model.transcribe("audio.wav", language="ko")

The output folder defaults to `<model_dir>/ct2-<quantization>`, so a training run's `--push_to_hub` uploads it with
the model (train_accelerate.py `--export_ct2 float16`). What `ct2-transformers-converter` alone gets wrong on a
fine-tuned checkpoint, and this module handles:
- tokenizer.json: faster-whisper reads it, and without it downloads openai/whisper-tiny's tokenizer from the Hub
  (which fails offline); the converter's `--copy_files tokenizer.json` fails after loading the whole model when the
  checkpoint lacks it (faster-whisper#220, #464). Checked first, then copied.
- preprocessor_config.json: faster-whisper reads the number of mel bins from it, and without it gives large-v3 80
  instead of 128. transformers 5 saves a processor's nested inside processor_config.json, where faster-whisper does
  not look, so it is written out flat.
- token ids: faster-whisper encodes prompts with tokenizer.json while CTranslate2 decodes by id, so the two must give
  every id the same token (added tokens at other ids broke both: faster-whisper#464, #567); checked after converting.
- language ids: with transformers 5 the converter finds no language tokens when the generation config has no
  `lang_to_id` (the tokenizer lost `additional_special_tokens`), and faster-whisper's language detection then fails
  with an IndexError; they are filled in from the tokenizer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

from transformers import WhisperFeatureExtractor

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("float16", "int8_float16", "int8", "float32")  # float32 decodes exactly as the Transformers model
# float16 decodes the measured clips exactly as the Transformers model does; the converter's int8 changed about half
# of them (benchmarks/RESULTS.md). faster-whisper can still run a float16 folder in int8: compute_type="int8_float16".
DEFAULT_QUANTIZATION = "float16"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
INSTALL = 'pip install ctranslate2 faster-whisper (in this repository: pip install -e ".[export]")'


def default_output_dir(model_dir: str | Path, quantization: str) -> Path:
    return Path(model_dir) / f"ct2-{quantization}"


def check_export_options(quantization: str) -> None:
    """Raise now, not after hours of training, if `quantization` is unknown or ctranslate2 is not installed."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}.")
    if importlib.util.find_spec("ctranslate2") is None:
        raise ImportError(f"Exporting to CTranslate2 needs the ctranslate2 package: {INSTALL}.")


def check_model_dir(model_dir: Path) -> str:
    """A Whisper checkpoint with what faster-whisper needs, or an error naming the missing path and the fix.

    Returns the feature extractor's settings as preprocessor_config.json, flat: transformers 5 saves a processor's
    in processor_config.json, nested under "feature_extractor", where faster-whisper does not look.
    """
    resave = (
        "Save the processor of the checkpoint you fine-tuned into it (fine-tuning leaves it unchanged): python -c "
        f"\"from transformers import WhisperProcessor; WhisperProcessor.from_pretrained('openai/whisper-large-v3')"
        f".save_pretrained('{model_dir}')\", with your base model's id in place of openai/whisper-large-v3."
    )
    if not (model_dir / "config.json").is_file() or not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{model_dir} holds no Transformers Whisper model (config.json and {' or '.join(WEIGHT_FILES[:3])}). "
            "Pass the folder a training run wrote (its --output_dir) or one written by model.save_pretrained()."
        )
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'tokenizer.json'} is missing; faster-whisper reads it. {resave}")
    if not any((model_dir / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise FileNotFoundError(
            f"{model_dir / 'preprocessor_config.json'} (or processor_config.json) is missing; faster-whisper reads "
            f"the number of mel bins from it. {resave}"
        )
    feature_extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    num_mel_bins = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["num_mel_bins"]
    if feature_extractor.feature_size != num_mel_bins:
        raise ValueError(
            f"The feature extractor in {model_dir} makes {feature_extractor.feature_size} mel bins but the model "
            f"takes {num_mel_bins} (large-v3 takes 128, earlier sizes 80): it belongs to another Whisper. {resave}"
        )
    return feature_extractor.to_json_string()


def export_ct2(
    model_dir: str | Path,
    output_dir: str | Path | None = None,
    quantization: str = DEFAULT_QUANTIZATION,
    *,
    overwrite: bool = False,
) -> Path:
    """Convert the Whisper in `model_dir` to CTranslate2 in `output_dir` (default `<model_dir>/ct2-<quantization>`).

    The folder appears complete or not at all: it is built beside its destination under a hidden name (which a Hub
    push skips), checked, then renamed. An existing `output_dir` is replaced only with `overwrite`.
    """
    check_export_options(quantization)
    model_dir = Path(model_dir)
    preprocessor_config = check_model_dir(model_dir)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(model_dir, quantization)
    if model_dir.resolve().is_relative_to(output_dir.resolve()):
        raise ValueError(f"output_dir {output_dir} holds the model itself; choose a folder of its own.")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--force) to replace it.")
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "model.bin").is_file():
        raise FileExistsError(f"{output_dir} holds something other than a CTranslate2 model; it is not replaced.")

    import ctranslate2  # optional dependency, checked above

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        logger.info("Converting %s to CTranslate2 (%s)", model_dir, quantization)
        converter = ctranslate2.converters.TransformersConverter(str(model_dir))
        converter.convert(str(staging), quantization=quantization, force=True)  # force: staging exists, empty
        shutil.copyfile(model_dir / "tokenizer.json", staging / "tokenizer.json")
        (staging / "preprocessor_config.json").write_text(preprocessor_config, encoding="utf-8")
        vocab_size = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"]
        check_token_ids(staging, vocab_size)
        fill_language_ids(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("faster-whisper model written to %s", output_dir)
    return output_dir


def _tokenizer_ids(folder: Path) -> dict[str, int]:
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return tokenizer["model"]["vocab"] | {token["content"]: token["id"] for token in tokenizer["added_tokens"]}


def check_token_ids(folder: Path, vocab_size: int) -> None:
    """CTranslate2's vocabulary (built from the Transformers tokenizer, then padded with timestamps) and
    tokenizer.json (what faster-whisper encodes and decodes with) must agree on every id."""
    vocabulary = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
    ids = _tokenizer_ids(folder)
    wrong = sorted((i, token) for token, i in ids.items() if i >= len(vocabulary) or vocabulary[i] != token)
    if len(vocabulary) != vocab_size or wrong:
        first = ", ".join(
            f"{token!r} is id {i} in tokenizer.json but {vocabulary[i] if i < len(vocabulary) else None!r} in "
            "the model"
            for i, token in wrong[:3]
        )
        raise ValueError(
            f"The tokenizer does not fit the model: {len(ids)} tokens for {vocab_size} output ids, "
            f"{len(vocabulary)} in the converted vocabulary, {len(wrong)} at different ids ({first or 'none'}). "
            "If you added tokens, call model.resize_token_embeddings(len(tokenizer)) before saving; otherwise save "
            "the tokenizer of the model you fine-tuned."
        )


def fill_language_ids(folder: Path) -> None:
    """Give CTranslate2 the language token ids when the converter found none: in Whisper's vocabulary they are the
    tokens between <|startoftranscript|> and <|translate|> (99 of them; 100 in large-v3, with <|yue|>)."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("lang_ids"):
        return
    ids = _tokenizer_ids(folder)
    config["lang_ids"] = list(range(ids["<|startoftranscript|>"] + 1, ids["<|translate|>"]))
    config_path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a Transformers Whisper folder, e.g. a run's output_dir")
    parser.add_argument("--quantization", default=DEFAULT_QUANTIZATION, choices=QUANTIZATIONS)
    parser.add_argument("--output_dir", help="default: <model_dir>/ct2-<quantization>")
    parser.add_argument("--force", action="store_true", help="replace output_dir if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    print(export_ct2(args.model_dir, args.output_dir, args.quantization, overwrite=args.force))


if __name__ == "__main__":
    main()
