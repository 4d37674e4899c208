"""Long-form transcription on the real Whisper base: a minute of known speech, one clip across the 30 s mark.

The file is tools/sample_audio.py's (benchmarks/long_form.py measures on it too): 24 sample-corpus clips (espeak-ng
voice) 1.25 s apart, 63.7 s, with KsponSpeech_372003 (음 그건 좀 생각해 볼게) spanning 29.03-30.97 s. It goes
through transcribe.py as a user runs it.

Measured on it (2-core CPU, benchmarks/RESULTS.md "Long-form transcription"): the untouched base scores CER 0.461 with
each clip decoded alone and 0.588 in long form; the old blind 30 s windows score 0.967, because decoded without
timestamps Whisper stops after the first phrase of a window. The straddling clip's own hypothesis is found in the
long-form text with substring CER 0.33 (3 of its 9 characters differ: the base model hears it slightly differently
in context) and not at all (1.0) in the old output. The bounds below sit between the two, with room for a few
characters to flip on another CPU or library version. The long-form decode takes ~25 s (1 thread, load 7).

The base model is unsure of this voice (mean token log-probability below -1), so the test turns the log-probability
rule off, and the no-speech rule that applies only under it: with them, windows are resampled at rising temperatures
(3.4x the time, for the same CER) and two of the three are skipped as silence (CER 0.988; RESULTS.md).
"""

import json
import time

import numpy as np
import pytest
import soundfile as sf

import transcribe
from kspon_whisper.inference import Transcriber, load_model
from kspon_whisper.metrics import score
from tools.sample_audio import LONG_CLIPS, STRADDLER, build_long_audio, sample_clips, substring_cer

LONG_FORM_CER_MAX = 0.70  # measured 0.588; blind windows 0.967
STRADDLER_FOUND_MAX = 0.50  # substring CER of its own hypothesis; measured 0.33; blind windows 1.0
TEST_OPTIONS = ["--logprob_threshold", "off", "--no_speech_threshold", "off"]  # see the module docstring


@pytest.fixture(scope="module")
def clips():
    return sample_clips(ids=LONG_CLIPS)


@pytest.fixture(scope="module")
def long_audio(clips):
    return build_long_audio(clips)


@pytest.fixture(scope="module")
def transcribed(offline_whisper_dir, long_audio, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("long_form")
    sf.write(folder / "talk.wav", long_audio.samples, 16_000)
    start = time.perf_counter()
    command = ["--model", str(offline_whisper_dir), "--format", "json", "--output_dir", str(folder), *TEST_OPTIONS]
    assert transcribe.main([*command, str(folder / "talk.wav")]) == 0
    print(f"long form: {long_audio.duration:.1f} s of audio in {time.perf_counter() - start:.1f} s")
    return json.loads((folder / "talk.json").read_text())


@pytest.mark.slow
def test_segments_are_ordered_inside_the_audio_and_cover_every_clip(transcribed, long_audio):
    segments = transcribed["segments"]
    assert len(segments) > 3 and all(segment["text"] for segment in segments)
    times = [t for segment in segments for t in (segment["start"], segment["end"])]
    assert times == sorted(times), f"segments overlap or go back in time: {segments}"
    assert 0 <= times[0] and times[-1] <= long_audio.duration
    for clip in long_audio.clips:
        assert any(s["start"] < clip.end and clip.start < s["end"] for s in segments), f"{clip} is in no segment"
    assert transcribed["text"] == " ".join(segment["text"] for segment in segments)


@pytest.mark.slow
def test_long_form_text_is_close_to_decoding_each_clip_alone(transcribed, long_audio):
    cer = score([long_audio.reference], [transcribed["text"]])["cer"]
    assert cer <= LONG_FORM_CER_MAX, f"CER {cer:.3f} > {LONG_FORM_CER_MAX}: {transcribed['text']}"


@pytest.mark.slow
def test_the_clip_across_30_s_is_not_cut(transcribed, clips, offline_whisper_dir):
    model, processor = load_model(str(offline_whisper_dir), "cpu")
    [alone] = Transcriber(model, processor)([clips[STRADDLER][1]])
    found = substring_cer(alone.text, transcribed["text"])
    assert found <= STRADDLER_FOUND_MAX, f"{alone.text!r} is not in the long-form text: {transcribed['text']}"


def test_substring_cer_finds_a_phrase_anywhere_and_counts_its_edits():
    assert substring_cer("그건 좀", "음 그건 좀 생각해 볼게") == 0.0
    assert substring_cer("그건 좀!", "음, 그건좀 생각해") == 0.0  # normalised as scoring normalises, spaces dropped
    assert substring_cer("그건 점", "음 그건 좀 생각해") == pytest.approx(1 / 3)
    assert substring_cer("가나다", "") == 1.0


def test_the_long_file_straddles_30_s_and_lasts_over_a_minute(long_audio):
    straddler = long_audio.straddler()
    assert straddler.start < 30.0 < straddler.end and long_audio.duration > 60.0
    assert all(a.end < b.start for a, b in zip(long_audio.clips, long_audio.clips[1:], strict=False))
    spans = [long_audio.samples[int(c.start * 16_000) : int(c.end * 16_000)] for c in long_audio.clips]
    assert all(np.abs(span).max() > 1000 for span in spans)  # every span holds its clip
