"""The one decoding path: settings within the decoder's positions, precision, and evaluation == transcribe."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from evaluate_clips import CLIPS, SAMPLE_CORPUS, only
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

import transcribe
from kspon_dataset.corpus import read_utterance
from kspon_whisper.data import DeviceInputs, load_splits, make_dataloader, speech_batcher
from kspon_whisper.evaluation import evaluate
from kspon_whisper.inference import (
    MAX_NEW_TOKENS,
    GenerationSettings,
    Segment,
    Transcriber,
    _segment,
    autocast,
    default_mixed_precision,
    load_model,
)
from kspon_whisper.random_whisper import whisper_config

SHORT_KEYS = {"language", "task", "num_beams", "max_new_tokens"}


def test_clips_get_only_the_short_form_settings():
    kwargs = GenerationSettings(num_beams=3).generate_kwargs(WhisperConfig(), long_form=False)
    assert kwargs == {"language": "ko", "task": "transcribe", "num_beams": 3, "max_new_tokens": MAX_NEW_TOKENS}
    kwargs = GenerationSettings(no_repeat_ngram_size=4).generate_kwargs(WhisperConfig(), long_form=False)
    assert kwargs["no_repeat_ngram_size"] == 4 and set(kwargs) == SHORT_KEYS | {"no_repeat_ngram_size"}


def test_long_form_adds_timestamps_and_the_papers_fallback():
    kwargs = GenerationSettings().generate_kwargs(WhisperConfig(), long_form=True)
    assert kwargs == {
        "language": "ko",
        "task": "transcribe",
        "num_beams": 1,
        "max_new_tokens": MAX_NEW_TOKENS,
        "return_timestamps": True,
        "return_segments": True,
        "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        "compression_ratio_threshold": 2.4,
        "logprob_threshold": -1.0,
        "no_speech_threshold": 0.6,
        "condition_on_prev_tokens": False,
    }


@pytest.mark.parametrize("positions", [448, 100])
def test_the_token_budget_is_bounded_by_the_decoders_positions(positions):
    config = WhisperConfig(max_target_positions=positions)
    fits = GenerationSettings(max_new_tokens=positions - 4)  # the prompt: <|startoftranscript|><|ko|><|transcribe|>..
    assert fits.generate_kwargs(config, long_form=False)["max_new_tokens"] == positions - 4
    with pytest.raises(ValueError, match=rf"max_new_tokens={positions - 3} does not fit: .* at most {positions - 4}"):
        GenerationSettings(max_new_tokens=positions - 3).generate_kwargs(config, long_form=False)
    # Conditioned on the previous text, transformers' prompt grows to positions // 2 + 3 tokens; the budget shrinks.
    conditioned = GenerationSettings(max_new_tokens=positions - 4, condition_on_prev_tokens=True)
    budget = conditioned.generate_kwargs(config, long_form=True)["max_new_tokens"]
    assert budget == positions - (positions // 2 - 1) - 1 - 3


def test_settings_refuse_nonsense():
    for bad, message in [
        ({"num_beams": 0}, "num_beams must be at least 1"),
        ({"no_repeat_ngram_size": -1}, "0 \\(off"),
    ]:
        with pytest.raises(ValueError, match=message):
            GenerationSettings(**bad)


def test_autocast_is_bf16_on_cuda_only_and_leaves_weights_fp32():
    assert default_mixed_precision("cpu") == "no" and default_mixed_precision(torch.device("cuda", 1)) == "bf16"
    weight = torch.randn(4, 4)
    with autocast("cpu", "bf16"):
        assert (weight @ weight).dtype == torch.bfloat16
    with autocast("cpu", "no"):
        assert (weight @ weight).dtype == torch.float32
    assert weight.dtype == torch.float32
    with pytest.raises(ValueError, match="mixed_precision must be one of no, bf16, fp16; got 'fp8'"):
        autocast("cpu", "fp8")


def test_conditioned_long_form_never_overflows_the_decoder(offline_whisper_dir):
    """A model that always says the same syllable never stops, so every 30 s window fills its budget and the third
    is prompted with the longest previous text transformers keeps. A small decoder (64 positions) keeps it quick and
    shows the budget comes from the config: without the shrunken budget, or one token more, generate raises."""
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(whisper_config("test", max_target_positions=64)).eval()
    model.generation_config = GenerationConfig.from_pretrained(offline_whisper_dir)
    processor = WhisperProcessor.from_pretrained(offline_whisper_dir)
    syllable = processor.tokenizer.encode(" 아", add_special_tokens=False)[0]
    model.proj_out = torch.nn.Linear(model.config.d_model, model.config.vocab_size)
    torch.nn.init.zeros_(model.proj_out.weight)
    with torch.no_grad():
        model.proj_out.bias.copy_(torch.nn.functional.one_hot(torch.tensor(syllable), model.config.vocab_size) * 50.0)
    settings = GenerationSettings(max_new_tokens=60, temperatures=(0.0,), condition_on_prev_tokens=True)
    noise = np.random.default_rng(0).normal(0, 0.1, 16_000 * 65).astype(np.float32)
    [result] = Transcriber(model, processor, settings)([noise])
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    # Each window's budget: 64 positions - 31 previous tokens - <|startofprev|> - 3 prompt tokens = 29, one of them
    # the opening timestamp. The third window's prompt is the longest: 35 tokens, + 29 = 64.
    assert [s.text.split() for s in result.segments] == [["아"] * 28] * 3


def test_segments_stay_inside_the_audio(offline_whisper_dir):
    """The last window is padded to 30 s: an end Whisper stamps inside the padding is the end of the file."""
    processor = WhisperProcessor.from_pretrained(offline_whisper_dir)
    tokens = torch.tensor(processor.tokenizer.encode(" 안녕", add_special_tokens=False))
    segment = _segment({"start": torch.tensor(60.0), "end": torch.tensor(66.4), "tokens": tokens}, 63.7, processor)
    assert segment == Segment(60.0, 63.7, "안녕")


@pytest.mark.slow
def test_evaluation_and_transcribe_give_the_same_text(offline_whisper_dir, tmp_path, capsys):
    """The same clips through the trainer's evaluation (streamed from the ZIPs, batched by the loader) and through
    transcribe.py (.pcm files): the same reader, log-mel, precision and settings give the same text."""
    model, processor = load_model(str(offline_whisper_dir), "cpu")
    splits = load_splits(str(SAMPLE_CORPUS), form="spelling", split_scheme="random", streaming=True)
    clips = only(CLIPS[:3], splits["train"], splits["test"])
    batcher = speech_batcher(processor, model.config, log_mel_on_device=True)
    loader = make_dataloader(clips, batcher, batch_size=3, num_workers=0, rank=0, world_size=1, seed=0, shuffle=False)
    try:
        _, records = evaluate(Accelerator(), model, loader, processor, DeviceInputs(processor, "cpu"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    paths = []
    for i in range(len(clips)):
        example, _ = read_utterance(clips.data, i, "spelling")
        paths.append(tmp_path / f"{example['id']}.pcm")
        paths[-1].write_bytes(example["pcm"])
    assert transcribe.main(["--model", str(offline_whisper_dir), "--format", "json", *map(str, paths)]) == 0
    transcribed = {json.loads(line)["path"]: json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()}
    evaluated = {str(tmp_path / f"{r['id']}.pcm"): r["hypothesis"] for r in records}
    assert transcribed == evaluated and all(evaluated.values())
