"""Scoring: normalisation, hand-counted CER/WER/sWER on Korean, space-free CER, empty references, loop detection,
and the one registry of metrics that the log lines, eval_whisper.py and the card read."""

import math
import random
import sys
import unicodedata

import pytest
from huggingface_hub import ModelCard

import eval_whisper
from kspon_whisper import metrics
from kspon_whisper.metrics import (
    Metric,
    format_scores,
    loop_reason,
    normalize_for_scoring,
    score,
    space_normalized_hypothesis,
)
from kspon_whisper.model_card import write_model_card


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("안녕하세요, 반갑습니다!", "안녕하세요 반갑습니다"),
        ("너 뭐 강남 자주 가?", "너 뭐 강남 자주 가"),
        ('그래서 "진짜"라고... 했어.', "그래서 진짜라고 했어"),
        ("「그렇죠」。 네・네", "그렇죠 네네"),  # CJK brackets, full stop and middle dot are punctuation too
        ("  아니   그게\t아니라\n ", "아니 그게 아니라"),
        ("(70%) 확률이라니", "70 확률이라니"),  # "%" goes too, as ESPnet's [[:punct:]] takes it
        ("ktx 말고 Srt 탈래", "KTX 말고 SRT 탈래"),  # Latin case is not scored
        ("iPhone 샀어", "IPHONE 샀어"),
        ("I'm 파인 땡큐", "IM 파인 땡큐"),
        ("50+50=100 & 3<4", "5050100 34"),  # symbols (S*) go as well
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


# sWER: ESPnet's get_space_normalized_hyps.py, then WER.


@pytest.mark.parametrize(
    ("reference", "hypothesis", "respaced", "swer"),
    [
        # Spacing alone: every character matches, so the hypothesis takes the reference's spaces.
        ("나는 학교에 간다", "나는학교에 간 다", "나는 학교에 간다", 0.0),
        ("학교에 간다", "학 교 에 간 다", "학교에 간다", 0.0),
        # A real substitution still counts (its character keeps its own space), the spacing around it is forgiven.
        ("나는 학교에 간다", "나는학교에 갔다", "나는 학교에 갔다", 1 / 3),
        ("나는 학교에 간다", "너는학교에갔다", "너는 학교에갔다", 1.0),  # 너는, 학교에갔다 for 3 words: 2 sub + 1 del
        # Insertions and deletions at either end.
        ("학교에 간다", "어 학교에간다", "어 학교에 간다", 1 / 2),
        ("네 알겠습니다", "네알겠습니다 감사", "네 알겠습니다 감사", 1 / 2),
        ("학교에 간다 진짜", "학교에간다", "학교에 간다", 1 / 3),
        ("아 그래 맞아", "그래맞아", "그래 맞아", 1 / 3),
        ("아 그래 맞아", "", "", 1.0),
    ],
)
def test_swer_on_hand_worked_pairs(reference, hypothesis, respaced, swer):
    assert space_normalized_hypothesis(reference, hypothesis) == respaced
    result = score([reference], [hypothesis])
    assert result["swer"] == pytest.approx(swer)


def test_swer_forgives_spacing_that_wer_counts():
    result = score(["그래서 어제 뭐 했어?"], ["그래서어제 뭐했어"])
    assert result["swer"] == 0.0 and result["cer_nospace"] == 0.0
    assert result["wer"] == pytest.approx(1.0)  # 그래서어제 / 뭐했어 against four words: 2 substitutions + 2 deletions


def _espnet_tokens(text: str) -> list[str]:
    # The definition: the text with its spaces turned into "▁", then one token per character, "▁" glued to the next.
    marked = "▁" + text.replace(" ", "▁")
    tokens: list[str] = []
    for char in marked:
        if tokens and tokens[-1] == "▁":
            tokens[-1] += char
        else:
            tokens.append(char)
    return tokens


def _respaced_by_definition(reference: str, hypothesis: str) -> str:
    ref, hyp = _espnet_tokens(reference) if reference else [], _espnet_tokens(hypothesis) if hypothesis else []

    def sub(a: str, b: str) -> int:
        return int(a.replace("▁", "") != b.replace("▁", ""))

    table = {(0, r): r for r in range(len(ref) + 1)}
    for h in range(1, len(hyp) + 1):
        table[h, 0] = h
        for r in range(1, len(ref) + 1):
            table[h, r] = min(
                table[h - 1, r - 1] + sub(hyp[h - 1], ref[r - 1]), table[h - 1, r] + 1, table[h, r - 1] + 1
            )
    h, r, kept = len(hyp), len(ref), []
    while (h, r) != (0, 0):
        options = {"pair": math.inf, "ins": math.inf, "del": math.inf}
        if h and r:
            options["pair"] = table[h - 1, r - 1] + sub(hyp[h - 1], ref[r - 1])
        if h:
            options["ins"] = table[h - 1, r] + 1
        if r:
            options["del"] = table[h, r - 1] + 1
        if options["pair"] <= min(options["ins"], options["del"]):
            kept.append(ref[r - 1] if not sub(hyp[h - 1], ref[r - 1]) else hyp[h - 1])
            h, r = h - 1, r - 1
        elif options["ins"] < options["del"]:
            kept.append(hyp[h - 1])
            h -= 1
        else:
            r -= 1
    return "".join(reversed(kept)).replace("▁", " ").strip()


def _word_edits(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j - 1] + (ref_word != hyp_word), previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1]


def test_swer_matches_a_second_implementation_on_random_pairs():
    rng = random.Random(0)
    # Few distinct syllables, so equal-cost alignments (where the tie-breaking decides the spacing) are common.
    syllables = "가나다라"

    def sentence() -> str:
        chars = [rng.choice(syllables) for _ in range(rng.randint(0, 12))]
        return " ".join("".join(chars[i : i + k]) for i, k in _chunks(len(chars), rng)).strip()

    references, hypotheses, edits, words = [], [], 0, 0
    for _ in range(400):
        reference, hypothesis = sentence() or "가", sentence()
        expected = _respaced_by_definition(reference, hypothesis)
        assert space_normalized_hypothesis(reference, hypothesis) == expected, (reference, hypothesis)
        references.append(reference)
        hypotheses.append(hypothesis)
        edits += _word_edits(reference.split(), expected.split())
        words += len(reference.split())
    assert score(references, hypotheses)["swer"] == pytest.approx(edits / words)


def _chunks(n: int, rng: random.Random):
    i = 0
    while i < n:
        k = rng.randint(1, 4)
        yield i, k
        i += k


# Hallucination and repetition loops


@pytest.mark.parametrize(
    ("reference", "hypothesis", "flagged"),
    [
        ("아 진짜", "아 진짜 아 진짜 그래서 그래서 어떻게 됐냐면", True),  # over twice the length
        ("감사합니다 여러분", "감사합니다 감사합니다 감사합니다 감사합니다 감사합니다", True),
        ("그게 뭐였더라 기억이 안 나", "그 그 그 그 그 그게 뭐였더라 기억이 안 나", True),  # a run, not too long
        ("네 네 알겠어요", "네 네 네 네 알겠어요", False),  # four in a row is speech, even where the reference has two
        ("하하하하하 웃겨 진짜", "하하하하하 웃겨 진짜", False),  # the reference has the same run
        ("나는 학교에 간다", "나는 학교에 갔다", False),
        ("나는 학교에 간다", "", False),
    ],
)
def test_loop_reason(reference, hypothesis, flagged):
    assert (loop_reason(reference, hypothesis) is not None) == flagged


LENGTH_RATIO = Metric(
    "length_ratio",
    "Length ratio",
    lambda refs, hyps: sum(map(len, hyps)) / sum(map(len, refs)),
    "hypothesis characters over reference characters, a metric that only this test adds.",
)


@pytest.fixture
def registry_with_an_extra_metric(monkeypatch) -> Metric:
    """LENGTH_RATIO added to `metrics.METRICS` alone, as seen by every loaded module that imported the registry."""
    registry = metrics.METRICS
    for module in list(sys.modules.values()):
        if getattr(module, "__dict__", {}).get("METRICS") is registry:
            monkeypatch.setattr(module, "METRICS", (*registry, LENGTH_RATIO))
    return LENGTH_RATIO


def test_a_metric_in_the_registry_alone_reaches_the_log_lines_eval_whisper_and_the_card(
    registry_with_an_extra_metric, tmp_path
):
    extra = registry_with_an_extra_metric
    values = score(["안녕 하세요", "감사 합니다"], ["안녕하세요", "감사합니다 네요"])
    assert values[extra.name] == pytest.approx(13 / 12)  # in score(), so in metrics.json of both scripts
    # The scores of the trainer's `eval <split> @ step N | ...` line and eval_whisper.py's `eval <split> | ...`.
    assert format_scores(values).endswith(f"| cer_nospace {values['cer_nospace']:.4f} | length_ratio 1.0833")
    loops = {"num_loops": 0, "num_hypotheses": 2, "examples": []}
    assert "| length_ratio 1.0833 |" in eval_whisper._split_summary("eval_clean", values, 1.0, loops, None)
    table = eval_whisper.results_table({"eval_clean": values | {"loops": loops}}).splitlines()
    assert table[0].endswith("| space-free CER (%) | Length ratio (%) | Loops |")
    assert table[2].endswith("| 108.33 | 0 |")
    card = write_model_card(
        tmp_path,
        hub_model_id=None,
        base_model="openai/whisper-small",
        metrics={"eval_clean": values},
        hyperparameters={},
        scoring_normalization="ESPnet's",
    )
    text = card.read_text(encoding="utf-8")
    assert "| Split | CER (%) | WER (%) | sWER (%) | space-free CER (%) | Length ratio (%) |" in text
    assert f"- **Length ratio** (`length_ratio`): {extra.description}" in text
    results = {r.metric_type: r for r in ModelCard.load(card).data.eval_results}
    assert list(results) == ["cer", "wer", "swer", "cer_nospace", "length_ratio"]
    assert (results["length_ratio"].metric_name, results["length_ratio"].metric_value) == ("Length ratio", 108.33)
