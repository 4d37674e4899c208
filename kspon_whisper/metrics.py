"""CER, WER, sWER and space-free CER, scored the way the KsponSpeech literature scores them.

One normalisation (`normalize_for_scoring`) is applied to references and hypotheses alike, everywhere the project
scores (the trainer's evaluations, `eval_whisper.py`, the model card). It follows ESPnet's KsponSpeech recipe
(`egs/ksponspeech/asr1`, by the corpus' authors and the only published recipe that reports all of CER, WER and sWER):
- Unicode NFC, so decomposed Hangul jamo (as macOS file systems write them) compare equal to precomposed syllables.
- Latin letters upper-cased (ESPnet upper-cases its transcripts): "ktx", "Ktx" and "KTX" are the same word.
- Only letters, digits and combining marks (Unicode L*, N*, M*) and whitespace are kept. Every punctuation mark
  (P*: . , ? ! " … 「」) and symbol (S*), "%" included, is deleted, as ESPnet's `remove_punctuation.pl` deletes
  `[[:punct:]]`; format characters (zero-width space, BOM) go too. Annotation marks (+ * /) and event tags are
  already gone from references (`kspon_dataset.normalize`); ESPnet maps `u/` to `[unk]` and then filters it out of
  both sides as a non-linguistic symbol, which is the same as dropping it.
- Whitespace runs collapse to one space, ends stripped.

Where the reference toolkits differ, the headline follows ESPnet. SpeechBrain's recipe deletes only `+ * / . ? ! ,`
and keeps case and "%": on KsponSpeech references the two agree except on lines with "%" or lower-case Latin (a
few in a thousand). ESPnet's scoring also keeps the apostrophe; here it goes with the rest of the punctuation, since
in KsponSpeech it only appears in the odd English contraction while Whisper writes it as a Korean quotation mark.

Metrics: `METRICS`, the one registry of them. Each entry is a key (in `score`'s output, metrics.json, the log lines
and the card's model-index), a display name (tables, the card), how it is computed and the sentence the card explains
it with; every consumer iterates it, so a metric added there reaches all of them. All are corpus-level: edits summed
over the split, over reference units summed over the split. `cer_nospace` keeps its name everywhere, the log lines
included: it is the key stored in every metrics.json and model-index already written.

The `evaluate` package is not a dependency: `evaluate.load("cer")` fetches the metric script from the Hub at run
time, which a training run must not depend on, and its CER and WER are jiwer's, which this module calls directly.
"""

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import jiwer

SCORING_NORMALIZATION = (
    "Both reference and hypothesis: Unicode NFC; Latin letters upper-cased; every punctuation mark and symbol "
    "removed (% included), so only letters, digits and spaces remain; whitespace collapsed (ESPnet's KsponSpeech "
    "scoring). CER, WER and sWER are corpus-level; sWER copies the reference's spacing onto every hypothesis span "
    "that matches it once spaces are ignored (ESPnet's get_space_normalized_hyps.py), then scores WER; space-free "
    "CER deletes every space."
)

_KEPT_CATEGORY_PREFIXES = ("L", "N", "M")  # letters, numbers, combining marks
# Whisper's runaway decodes repeat a unit of a syllable to a few words over and over ("감사합니다" x 40). Five runs
# of the same 1-10 characters, spaces ignored: speech does say "네 네 네 네" (four), rarely five.
_REPEATED_RUN = re.compile(r"(.{1,10}?)\1{4,}")
LOOP_LENGTH_RATIO = 2.0  # a hypothesis over twice its reference's length (spaces ignored) is suspect


def normalize_for_scoring(text: str) -> str:
    """NFC, upper case, keep letters, digits and spaces, collapse whitespace; see the module docstring for why."""
    text = unicodedata.normalize("NFC", text).upper()
    return " ".join("".join(char for char in text if _is_scored(char)).split())


def _is_scored(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith(_KEPT_CATEGORY_PREFIXES)


def space_normalized_hypothesis(reference: str, hypothesis: str) -> str:
    """The hypothesis re-spaced after the reference wherever the two agree character for character.

    Both texts become sequences of characters, each carrying whether a space precedes it. A Levenshtein alignment
    in which two characters match when they are the same letter, whatever their spaces, pairs them up; every matched
    hypothesis character then takes the reference character's space. Unmatched characters keep their own. Ties are
    broken as in ESPnet's script (itself after Kaldi's align-text), tracing back from the end: a match or
    substitution when it is as cheap as anything else, else an insertion when strictly cheaper than a deletion, else
    a deletion. Both inputs must already be normalised (single spaces, no leading or trailing space).
    """
    ref, hyp = _spaced_characters(reference), _spaced_characters(hypothesis)
    # cost[h][r]: edits aligning the first h hypothesis characters with the first r reference characters.
    cost = [list(range(len(ref) + 1))]
    for h in range(1, len(hyp) + 1):
        row = [h]
        for r in range(1, len(ref) + 1):
            row.append(min(cost[h - 1][r - 1] + (hyp[h - 1][1] != ref[r - 1][1]), cost[h - 1][r] + 1, row[r - 1] + 1))
        cost.append(row)
    out: list[tuple[bool, str]] = []
    h, r = len(hyp), len(ref)
    while h > 0 or r > 0:
        if h == 0:
            r -= 1  # a reference character the hypothesis lacks
            continue
        if r > 0:
            pair = cost[h - 1][r - 1] + (hyp[h - 1][1] != ref[r - 1][1])
            insertion, deletion = cost[h - 1][r] + 1, cost[h][r - 1] + 1
            if pair <= min(insertion, deletion):
                same = hyp[h - 1][1] == ref[r - 1][1]
                out.append(ref[r - 1] if same else hyp[h - 1])
                h, r = h - 1, r - 1
                continue
            if insertion >= deletion:
                r -= 1
                continue
        out.append(hyp[h - 1])  # a hypothesis character with no reference partner
        h -= 1
    return "".join((" " if spaced else "") + char for spaced, char in reversed(out)).strip()


def _spaced_characters(text: str) -> list[tuple[bool, str]]:
    """(a space precedes it, character) for every non-space character; the first one counts as spaced."""
    return [(i == 0, char) for word in text.split() for i, char in enumerate(word)]


def loop_reason(reference: str, hypothesis: str) -> str | None:
    """Why `hypothesis` looks like a hallucination or repetition loop, or None when it does not.

    Two signs, on the normalised texts with spaces deleted: the hypothesis is over `LOOP_LENGTH_RATIO` times as long
    as the reference, or it holds a unit of 1-10 characters repeated 5 times in a row that the reference lacks.
    """
    ref = normalize_for_scoring(reference).replace(" ", "")
    hyp = normalize_for_scoring(hypothesis).replace(" ", "")
    if ref and len(hyp) > LOOP_LENGTH_RATIO * len(ref):
        return f"{len(hyp)} characters for a reference of {len(ref)}"
    run = _REPEATED_RUN.search(hyp)
    if run and run.group(0) not in ref:
        return f"{run.group(1)!r} repeated {len(run.group(0)) // len(run.group(1))} times"
    return None


@dataclass(frozen=True)
class Metric:
    """One error rate: what `score` returns under `name` and every table and log line shows."""

    name: str  # the key: score's output, metrics.json, log lines, the card's model-index type
    display_name: str  # table headers and the card
    # the rate over normalised (reference, hypothesis) pairs whose references are not empty, as a fraction
    compute: Callable[[list[str], list[str]], float]
    description: str  # the card's explanation, Markdown


def _cer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.cer(reference=refs, hypothesis=hyps)


def _wer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.wer(reference=refs, hypothesis=hyps)


def _swer(refs: list[str], hyps: list[str]) -> float:
    respaced = [space_normalized_hypothesis(ref, hyp) for ref, hyp in zip(refs, hyps, strict=True)]
    return jiwer.wer(reference=refs, hypothesis=respaced)


def _cer_nospace(refs: list[str], hyps: list[str]) -> float:
    return jiwer.cer(reference=_without_spaces(refs), hypothesis=_without_spaces(hyps))


def _without_spaces(texts: list[str]) -> list[str]:
    return [text.replace(" ", "") for text in texts]


METRICS = (  # in the order tables and log lines show them
    Metric(
        "cer",
        "CER",
        _cer,
        "character edits (substitutions + deletions + insertions) over reference characters, spaces included "
        "(ESPnet's CER on `<space>`-separated characters).",
    ),
    Metric(
        "wer",
        "WER",
        _wer,
        "word edits over reference words, words split at spaces. Korean spacing (띄어쓰기) is inconsistent even in "
        "human transcripts, so WER mostly counts spacing and is pessimistic.",
    ),
    Metric(
        "swer",
        "sWER",
        _swer,
        "space-normalised WER, the KsponSpeech paper's word metric: wherever the hypothesis matches the reference "
        "once spaces are ignored, it takes the reference's spacing (ESPnet's `get_space_normalized_hyps.py`), "
        "then WER is scored.",
    ),
    Metric(
        "cer_nospace",
        "space-free CER",
        _cer_nospace,
        "CER after deleting every space from reference and hypothesis, so spacing is not scored at all.",
    ),
)


def format_scores(values: dict[str, float]) -> str:
    """`cer 0.1234 | wer 0.2345 | ...` in registry order: the scores part of every `eval ...` log line."""
    return " | ".join(f"{metric.name} {values[metric.name]:.4f}" for metric in METRICS)


def score(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus-level error rates as fractions (0.123 = 12.3 %), plus how many pairs were scored.

    Pairs whose normalised reference is empty are dropped (an error rate over zero reference tokens is undefined)
    and counted in `num_empty_refs`; if none are left the rates are NaN rather than a misleading 0.
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"Got {len(references)} references but {len(hypotheses)} hypotheses; pass one hypothesis per reference."
        )
    pairs = [
        (normalize_for_scoring(ref), normalize_for_scoring(hyp))
        for ref, hyp in zip(references, hypotheses, strict=True)
    ]
    scored = [(ref, hyp) for ref, hyp in pairs if ref]
    counts = {
        "num_samples": len(pairs),
        "num_scored": len(scored),
        "num_empty_refs": len(pairs) - len(scored),
    }
    if not scored:
        return {metric.name: math.nan for metric in METRICS} | counts
    refs = [ref for ref, _ in scored]
    hyps = [hyp for _, hyp in scored]
    return {metric.name: metric.compute(refs, hyps) for metric in METRICS} | counts
