"""Scoring: normalisation, hand-counted CER/WER on Korean, space-free CER, empty references."""

import math
import unicodedata

import pytest

from kspon_whisper.metrics import normalize_for_scoring, score


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("안녕하세요, 반갑습니다!", "안녕하세요 반갑습니다"),
        ("너 뭐 강남 자주 가?", "너 뭐 강남 자주 가"),
        ('그래서 "진짜"라고... 했어.', "그래서 진짜라고 했어"),
        ("「그렇죠」。 네・네", "그렇죠 네네"),  # CJK brackets, full stop and middle dot are punctuation too
        ("  아니   그게\t아니라\n ", "아니 그게 아니라"),
        ("(70%) 확률이라니", "70% 확률이라니"),  # "%" is read aloud ("퍼센트"), so it stays
        ("아/ 모+ 몬 소리야*", "아 모 몬 소리야"),  # KsponSpeech annotation marks that escaped cleaning
        ("₩5,000~6,000", "50006000"),
        ("제로\u200b폭 공백\ufeff", "제로폭 공백"),  # zero-width space and BOM are format characters
        ("GPU 3개 샀어", "GPU 3개 샀어"),
        ("?!...", ""),
    ],
)
def test_normalize_for_scoring(raw, expected):
    assert normalize_for_scoring(raw) == expected


def test_normalize_composes_decomposed_hangul_jamo():
    decomposed = unicodedata.normalize("NFD", "한국어 음성")
    assert len(decomposed) > len("한국어 음성")  # conjoining jamo from U+1100, e.g. as macOS writes file names
    assert normalize_for_scoring(decomposed) == "한국어 음성"
    assert score(["한국어 음성"], [decomposed])["cer"] == 0.0


def test_one_substitution_in_ten_characters():
    # 10 syllables, no spaces; the 5th differs: 1 edit / 10 characters.
    result = score(["가나다라마바사아자차"], ["가나다라무바사아자차"])
    assert result["cer"] == pytest.approx(0.1)
    assert result["cer_nospace"] == pytest.approx(0.1)
    assert result["wer"] == pytest.approx(1.0)  # the one word is wrong


def test_one_wrong_syllable_in_a_sentence():
    # Reference "나는 학교에 간다" has 9 characters counting 2 spaces and 3 words; 간 -> 갔 is 1 substitution.
    result = score(["나는 학교에 간다."], ["나는 학교에 갔다"])
    assert result["cer"] == pytest.approx(1 / 9)
    assert result["wer"] == pytest.approx(1 / 3)
    assert result["cer_nospace"] == pytest.approx(1 / 7)  # 7 syllables once spaces are gone


def test_spacing_only_errors_vanish_in_space_free_cer():
    # "학교에 간다" (6 characters, 2 words) vs "학교에간다": 1 deleted space for CER; for WER one substitution
    # (학교에 -> 학교에간다) plus one deletion (간다) over 2 words.
    result = score(["학교에 간다"], ["학교에간다"])
    assert result["cer"] == pytest.approx(1 / 6)
    assert result["wer"] == pytest.approx(1.0)
    assert result["cer_nospace"] == 0.0


def test_rates_are_corpus_level_not_averaged_per_utterance():
    # Utterance 1: 1 edit / 2 characters; utterance 2: 0 / 8. Pooled: 1 / 10, not the mean 0.25.
    result = score(["안녕", "가나다라마바사아"], ["안냥", "가나다라마바사아"])
    assert result["cer"] == pytest.approx(0.1)


def test_punctuation_differences_are_not_errors():
    result = score(["네, 맞아요."], ["네 맞아요?"])
    assert (result["cer"], result["wer"], result["cer_nospace"]) == (0.0, 0.0, 0.0)
    assert (result["num_samples"], result["num_scored"], result["num_empty_refs"]) == (1, 1, 0)


def test_empty_references_are_dropped_and_counted():
    # The first two references normalise to "", so only the last pair (a perfect match) is scored.
    result = score(["", "...", "그렇구나"], ["음", "", "그렇구나"])
    assert result["num_samples"] == 3
    assert result["num_scored"] == 1
    assert result["num_empty_refs"] == 2
    assert result["cer"] == result["wer"] == result["cer_nospace"] == 0.0


def test_empty_hypothesis_counts_every_reference_character_as_deleted():
    result = score(["가나다"], [""])
    assert result["cer"] == pytest.approx(1.0)
    assert result["wer"] == pytest.approx(1.0)


def test_all_empty_references_give_nan_not_zero():
    result = score(["", " . "], ["뭐", ""])
    assert math.isnan(result["cer"]) and math.isnan(result["wer"]) and math.isnan(result["cer_nospace"])
    assert (result["num_scored"], result["num_empty_refs"]) == (0, 2)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["가", "나"], ["가"])
