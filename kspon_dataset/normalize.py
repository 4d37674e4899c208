"""Decode and normalise KsponSpeech transcripts (ETRI transcription rules).

KsponSpeech transcripts mark the events of spontaneous speech inline:

| mark                  | meaning                                                                            |
|-----------------------|------------------------------------------------------------------------------------|
| `(A)/(B)`             | dual transcription, spelling A and pronunciation B: `(70%)/(칠 십 퍼센트)`,        |
|                       | `(SRT)/(에스알티)`, `(내가)/(내)`; may hold `+` (`(뭐+ 뭔)/(모+ 몬)`), and the `/`  |
|                       | between the halves is sometimes missing: `(A)(B)`                                  |
| `w/`                  | filler word (`어/`, `음/`, `아/`)                                                  |
| `w+`                  | repeated or mis-spoken word                                                        |
| `*`                   | word that is hard to hear, or noise over the speech                                |
| `b/ l/ o/ n/ u/`      | breath, laughter, another speaker, noise, unintelligible                           |

`normalize_transcript` keeps one side of each pair, drops the event tags and marks (keeping filler and repeated
words themselves), keeps `. , ? !`, Latin letters and digits as written, applies NFC and collapses whitespace.

Two annotation slips survive the reference toolkits (Lhotse's output has them too) and are repaired here:
- a tag letter without its slash or with the slash reversed, `n 예진이가 ...` or `그러면 /u 그`: a lone lower-case
  `b l o n u` standing as a whole token in Korean text is dropped, unless a Latin word stands next to it (it may
  then be English, "plan b"); Latin that is meant to be read sits in a `(A)/(에이)` pair, which is left alone;
- a tag between a word and its punctuation, `하면 안 돼 l/ .`: `. , ? !` are attached to the word before them.

Toolkits differ on the side they keep: the transcript form. ESPnet, SpeechBrain and Lhotse keep the spelling side
(form "spelling", the default here), so error rates computed on it are comparable with theirs; kospeech keeps the
pronunciation side (form "phonetic"), which is what was actually said but turns every number into Hangul. At the
datasets boundary the form is the dataset's config name: `load_dataset("./kspon_dataset", "phonetic", ...)`,
`load_kspon(data_dir, "phonetic")`, `--dataset_config phonetic`.
"""

import re
import unicodedata

TRANSCRIPT_FORMS = ("spelling", "phonetic")

_UTF8_BOM = b"\xef\xbb\xbf"
# Two adjacent groups form a pair. `[^()]*` only matches innermost groups, so nested pairs resolve over passes.
_PAIR = re.compile(r"\(([^()]*)\)(?:\s*/\s*)?\(([^()]*)\)")
# A tag is one of the five letters right before a slash, unless it ends a Latin word ("SRTn/" is not a tag).
_EVENT_TAG = re.compile(r"(?<![A-Za-z])[blonu]/")
# A mark glued to the next word separates two words ("어/음/", "그+그거"); anywhere else it just goes.
_MARK_BEFORE_WORD = re.compile(r"[/+](?=[\w(])")
_MARK = re.compile(r"[/+*()]")
# A lone tag letter, its slash missing or on the wrong side ("n", "/u", "/n/"), then a space, a mark or the end.
_LONE_TAG = re.compile(r"(?<!\S)/?[blonu]/?(?=[\s.,?!]|$)")
_LATIN_WORD = re.compile(r"[A-Za-z]+[.,?!]*")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_LOOSE_PUNCTUATION = re.compile(r"(?<=\S) +(?=[.,?!])")


def decode_transcript(data: bytes) -> str | None:
    """Decode one transcript file to a single line; None when it is neither UTF-8 nor CP949 text."""
    data = data.removeprefix(_UTF8_BOM)
    text = _decode_or_none(data, "utf-8")
    if text is None or _looks_like_cp949_read_as_utf8(text):
        text = _decode_or_none(data, "cp949") or text
    if text is None or any(ch < " " and ch not in "\t\r\n" for ch in text):
        # Control characters mean a truncated or binary file (e.g. zero-filled), not a transcript.
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def normalize_transcript(raw: str, form: str = "spelling") -> str:
    """Turn a raw tagged transcript into plain text in `form`; "" when only tags and noise marks were left."""
    if form not in TRANSCRIPT_FORMS:
        raise ValueError(f"form={form!r} is not a transcript form; use one of {', '.join(TRANSCRIPT_FORMS)}")
    side = TRANSCRIPT_FORMS.index(form) + 1
    text = unicodedata.normalize("NFC", raw)
    # Tags go before pairs are resolved: in "(SRT)/(에스알티)n/" the tag is only a tag while ")" precedes it.
    text = _EVENT_TAG.sub(" ", text)
    text = _drop_lone_tags(text)
    text = _resolve_pairs(text, side)
    text = text.replace("*", "")
    text = _MARK_BEFORE_WORD.sub(" ", text)
    # Whatever is left (a lone "(A)" whose partner is missing, a trailing filler "/") loses only its marks.
    text = _MARK.sub("", text)
    text = _LOOSE_PUNCTUATION.sub("", " ".join(text.split()))
    return unicodedata.normalize("NFC", text)


def _drop_lone_tags(text: str) -> str:
    if not _HANGUL.search(text):
        return text

    def drop(match: re.Match) -> str:
        before = text[: match.start()].split()
        after = text[match.end() :].split()
        beside_latin = (before and _LATIN_WORD.fullmatch(before[-1])) or (after and _LATIN_WORD.fullmatch(after[0]))
        return match.group(0) if beside_latin else " "

    return _LONE_TAG.sub(drop, text)


def _resolve_pairs(text: str, side: int) -> str:
    while True:
        resolved = _PAIR.sub(lambda match: match.group(side), text)
        if resolved == text:
            return resolved
        text = resolved


def _decode_or_none(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _looks_like_cp949_read_as_utf8(text: str) -> bool:
    # Some CP949 Hangul byte pairs are also valid UTF-8 (CP949 "짝짝짝" reads as UTF-8 "¦¦¦"). Real UTF-8
    # transcripts hold Hangul; text with Latin-1-range letters and no Hangul is CP949 read the wrong way.
    has_latin1_range = any("\x80" <= ch <= "\u07ff" for ch in text)
    has_hangul = any("\uac00" <= ch <= "\ud7a3" for ch in text)
    return has_latin1_range and not has_hangul
