"""CER, WER and space-free CER scored the way the KsponSpeech literature does.

Both sides are normalised the same way before scoring:
- Unicode NFC, so decomposed Hangul jamo (U+1100 block, as macOS file systems and some editors write it) compare
  equal to precomposed syllables.
- Only letters, digits and combining marks (Unicode categories L*, N*, M*; Hangul syllables and jamo are letters),
  whitespace, and "%" are kept. Punctuation (P*: . , ? ! " … 「」) is deleted as the ESPnet and KoSpeech
  KsponSpeech recipes do: it is not spoken, and Whisper's punctuation style would otherwise dominate the error.
  Symbols (S*) and format characters (Cf: zero-width space, BOM) are deleted too; that also removes KsponSpeech's
  annotation marks (+ * /) should any survive transcript cleaning.
- "%" is the exception: KsponSpeech's numeric transcripts write "70%" for "칠십 퍼센트", so it stands for a spoken
  word and deleting it would hide a model that drops that word. (Unicode files it under punctuation, Po.)
- Whitespace runs collapse to one space and the ends are stripped.

`cer_nospace` deletes every space before the character edit distance. Korean spacing (띄어쓰기) is inconsistent
even in the reference transcripts, so this is the headline number in the Korean ASR literature.

`evaluate.load("cer")` is deliberately not used: it fetches the metric script from the Hub and fails offline.
"""

import math
import unicodedata

import jiwer

SCORING_NORMALIZATION = (
    "Both reference and hypothesis: Unicode NFC; punctuation and symbols removed (letters, digits and % kept); "
    "whitespace collapsed. CER and WER are corpus-level (jiwer); space-free CER also deletes every space."
)

_KEPT_CATEGORY_PREFIXES = ("L", "N", "M")  # letters, numbers, combining marks
_SPOKEN_PUNCTUATION = frozenset("%")


def normalize_for_scoring(text: str) -> str:
    """NFC, keep letters, digits, spaces and "%", collapse whitespace; see the module docstring for why."""
    text = unicodedata.normalize("NFC", text)
    return " ".join("".join(char for char in text if _is_scored(char)).split())


def _is_scored(char: str) -> bool:
    return (
        char.isspace() or char in _SPOKEN_PUNCTUATION or unicodedata.category(char).startswith(_KEPT_CATEGORY_PREFIXES)
    )


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
        return {"cer": math.nan, "wer": math.nan, "cer_nospace": math.nan, **counts}
    refs = [ref for ref, _ in scored]
    hyps = [hyp for _, hyp in scored]
    return {
        "cer": jiwer.cer(reference=refs, hypothesis=hyps),
        "wer": jiwer.wer(reference=refs, hypothesis=hyps),
        "cer_nospace": jiwer.cer(reference=_without_spaces(refs), hypothesis=_without_spaces(hyps)),
        **counts,
    }


def _without_spaces(texts: list[str]) -> list[str]:
    return [text.replace(" ", "") for text in texts]
