"""Transcript decoding and ETRI-notation normalisation on real-style KsponSpeech lines."""

import random
import unicodedata

import pytest

from kspon_dataset.normalize import TRANSCRIPT_FORMS, decode_transcript, normalize_transcript


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# (raw transcript, spelling, phonetic). Written in the style of KsponSpeech, not copied from it.
CASES = [
    (
        "b/ (70%)/(칠 십 퍼센트) 확률이라니 아/ (뭐+ 뭔)/(모+ 몬) 소리야 진짜 (100%)/(백 프로)가 왜 안돼? n/",
        "70% 확률이라니 아 뭐 뭔 소리야 진짜 100%가 왜 안돼?",
        "칠 십 퍼센트 확률이라니 아 모 몬 소리야 진짜 백 프로가 왜 안돼?",
    ),
    ("아/ 몬 소리야", "아 몬 소리야", "아 몬 소리야"),
    ("o/ 그래서 (SRT)/(에스알티) 타고 갔어", "그래서 SRT 타고 갔어", "그래서 에스알티 타고 갔어"),
    ("(내가)/(내) 할게 어/ 걱정 마", "내가 할게 어 걱정 마", "내 할게 어 걱정 마"),
    ("음/ 그+ 그게 그러니까 l/", "음 그 그게 그러니까", "음 그 그게 그러니까"),
    ("(8)(여덟) 시에 일어났는데 b/ 너무 졸려", "8 시에 일어났는데 너무 졸려", "여덟 시에 일어났는데 너무 졸려"),
    ("(GPS)(지피에스) 켜 놨어?", "GPS 켜 놨어?", "지피에스 켜 놨어?"),
    ("b/어/ 그러니까 내 말은", "어 그러니까 내 말은", "어 그러니까 내 말은"),
    ("o/l/ 그만 좀 해", "그만 좀 해", "그만 좀 해"),
    ("아/b/ 피곤해", "아 피곤해", "아 피곤해"),
    ("그래서b/ 갔어", "그래서 갔어", "그래서 갔어"),
    ("그 *사람이 누구였지?", "그 사람이 누구였지?", "그 사람이 누구였지?"),
    ("어제 * 갔었는데 n/", "어제 갔었는데", "어제 갔었는데"),
    ("똠양꿍 먹어 봤어? *맛있던데", "똠양꿍 먹어 봤어? 맛있던데", "똠양꿍 먹어 봤어? 맛있던데"),
    ("(2019년)/(이천 십 구 년)에 (LA)/(엘에이) 갔었어", "2019년에 LA 갔었어", "이천 십 구 년에 엘에이 갔었어"),
    (
        "(10km)/(십 킬로) 뛰고 (500ml)/(오백 미리) 물 마셨어",
        "10km 뛰고 500ml 물 마셨어",
        "십 킬로 뛰고 오백 미리 물 마셨어",
    ),
    (
        "아/ (KTX)/(케이티엑스)+ (SRT)/(에스알티) 타고 와",
        "아 KTX SRT 타고 와",
        "아 케이티엑스 에스알티 타고 와",
    ),
    ("(3)/(삼) 대 (1)/(일)로 이겼어!", "3 대 1로 이겼어!", "삼 대 일로 이겼어!"),
    ("(PC)/(피씨)방에서 (5)/(다섯) 시간 했어", "PC방에서 5 시간 했어", "피씨방에서 다섯 시간 했어"),
    (
        "(그+ 그거)/(그+ 그고) 말고 이거, 이거 줘",
        "그 그거 말고 이거, 이거 줘",
        "그 그고 말고 이거, 이거 줘",
    ),
    ("  음/   그냥   집에 있었어  ", "음 그냥 집에 있었어", "음 그냥 집에 있었어"),
    ("여보세요? n/ 여보세요? 들려요?", "여보세요? 여보세요? 들려요?", "여보세요? 여보세요? 들려요?"),
    ("진짜 웃기다 l/ l/", "진짜 웃기다", "진짜 웃기다"),
    ("u/ 그거 말고 u/ 저거", "그거 말고 저거", "그거 말고 저거"),
    ("(OK)/(오케이). 그럼 내일 봐.", "OK. 그럼 내일 봐.", "오케이. 그럼 내일 봐."),
    (
        "(CCTV)/(씨씨티비)에 다 찍혔대 o/ 진짜?",
        "CCTV에 다 찍혔대 진짜?",
        "씨씨티비에 다 찍혔대 진짜?",
    ),
    # A pair inside a pair: the inner one resolves first, then the outer one.
    ("((3)/(세))/(석) 달 만이야", "3 달 만이야", "석 달 만이야"),
    # A stray "/" or "+" left right after a pair.
    ("(5000원)/(오천 원)/ 정도야", "5000원 정도야", "오천 원 정도야"),
    ("(2)/(두)+ 개만 줘", "2 개만 줘", "두 개만 줘"),
    # A tag glued to a pair is still a tag; a Latin word ending in a tag letter is not ("so/" is a filler).
    ("(SRT)/(에스알티)n/ 탈 거야", "SRT 탈 거야", "에스알티 탈 거야"),
    ("so/ 그래서 뭐", "so 그래서 뭐", "so 그래서 뭐"),
    # Marks glued to the next word separate two words.
    ("어/음/ 잠깐만", "어 음 잠깐만", "어 음 잠깐만"),
    ("그+그거 뭐였지?", "그 그거 뭐였지?", "그 그거 뭐였지?"),
    ("그냥 그렇지\r\n", "그냥 그렇지", "그냥 그렇지"),
    ("음/\t그래", "음 그래", "음 그래"),
    (nfd("한국어 공부 중이야"), "한국어 공부 중이야", "한국어 공부 중이야"),
    ("(70%)/(칠십 퍼센트)? 그것밖에 안 돼?", "70%? 그것밖에 안 돼?", "칠십 퍼센트? 그것밖에 안 돼?"),
    (
        "b/ 음/ (3)/(세) 시쯤? 아니 (4)/(네) 시",
        "음 3 시쯤? 아니 4 시",
        "음 세 시쯤? 아니 네 시",
    ),
    (
        "이번 (MT)/(엠티)는 (2)/(이) 박 (3)/(삼) 일이래",
        "이번 MT는 2 박 3 일이래",
        "이번 엠티는 이 박 삼 일이래",
    ),
    ("(무엇을)/(뭘) 먹을까? 음/ 떡볶이!", "무엇을 먹을까? 음 떡볶이!", "뭘 먹을까? 음 떡볶이!"),
    ("(YouTube)/(유튜브) 보다가 l/ 잠들었어", "YouTube 보다가 잠들었어", "유튜브 보다가 잠들었어"),
    # A group without its partner keeps its words; so does an unclosed one.
    ("(그러니까) 내 말은", "그러니까 내 말은", "그러니까 내 말은"),
    ("(그러니까/(그니까) 내 말은", "그러니까 그니까 내 말은", "그러니까 그니까 내 말은"),
    ("(3) / (세) 시에 봐", "3 시에 봐", "세 시에 봐"),
    ("(A)/(에이) 학점 (100%)/(백 퍼) 받을 거야", "A 학점 100% 받을 거야", "에이 학점 백 퍼 받을 거야"),
    ("어/ (3+ 3)/(삼+ 삼) 번이요", "어 3 3 번이요", "어 삼 삼 번이요"),
    ("l/ 아/ 배 아파 l/", "아 배 아파", "아 배 아파"),
    (
        "(SNS)/(에스엔에스) 안 한 지 (1)/(일) 년 됐어",
        "SNS 안 한 지 1 년 됐어",
        "에스엔에스 안 한 지 일 년 됐어",
    ),
    ("(iPhone)/(아이폰) 새로 샀어", "iPhone 새로 샀어", "아이폰 새로 샀어"),
    ("그러니까+ (그런데)/(근데) 왜 안 왔어?", "그러니까 그런데 왜 안 왔어?", "그러니까 근데 왜 안 왔어?"),
    ("근데 어/ 막/ (10)/(열) 명 넘게 왔어", "근데 어 막 10 명 넘게 왔어", "근데 어 막 열 명 넘게 왔어"),
]
# Annotation slips that Lhotse's normaliser lets through: a tag letter without its slash or with the slash reversed,
# and a tag between a word and its punctuation, which left the mark loose.
SLIPS = [
    (
        "n 예진이가 여기 면접 보러 와 봤었거든? n/",
        "예진이가 여기 면접 보러 와 봤었거든?",
        "예진이가 여기 면접 보러 와 봤었거든?",
    ),
    ("생각하고 그러면 /u 그 상대 반대쪽은", "생각하고 그러면 그 상대 반대쪽은", "생각하고 그러면 그 상대 반대쪽은"),
    ("하면 안 돼 l/ .", "하면 안 돼.", "하면 안 돼."),
    ("안 먹을래 b/.", "안 먹을래.", "안 먹을래."),
    ("아이/ 내일 털어줬어 l/.", "아이 내일 털어줬어.", "아이 내일 털어줬어."),
    ("그래서 o 걔가 뭐래?", "그래서 걔가 뭐래?", "그래서 걔가 뭐래?"),
    ("진짜? b", "진짜?", "진짜?"),
    ("그래 /n/ 알았어", "그래 알았어", "그래 알았어"),
    ("음/ l 웃기지 마 l", "음 웃기지 마", "음 웃기지 마"),
    ("(3)/(세) 시에 보자 u/ ,", "3 시에 보자,", "세 시에 보자,"),
    ("밥 먹었어 n/ ? 아니 b/ !", "밥 먹었어? 아니!", "밥 먹었어? 아니!"),
    ("그렇지 . 그러니까 , 내 말은", "그렇지. 그러니까, 내 말은", "그렇지. 그러니까, 내 말은"),
    ("/b 어/ 그게", "어 그게", "어 그게"),
    # Where the letter can be a word, it stays: upper case, beside a Latin word, inside a pair, or not in Korean text.
    ("B 형 간염 검사 받았어", "B 형 간염 검사 받았어", "B 형 간염 검사 받았어"),
    ("플랜 plan b 있어?", "플랜 plan b 있어?", "플랜 plan b 있어?"),
    ("(o)/(오) (x)/(엑스) 퀴즈 알아?", "o x 퀴즈 알아?", "오 엑스 퀴즈 알아?"),
    ("so/ u know 그거", "so u know 그거", "so u know 그거"),
    ("plan b", "plan b", "plan b"),
    ("o !", "o!", "o!"),
]
EMPTY = ["b/ n/", "o/ u/", "u/", "l/ l/ l/", "*", "", "   ", "b/ * n/", "()/()", "b/n/", "\r\n"]


@pytest.mark.parametrize(("raw", "spelling", "phonetic"), CASES)
def test_normalize_real_style_lines(raw: str, spelling: str, phonetic: str) -> None:
    assert normalize_transcript(raw) == spelling
    assert normalize_transcript(raw, "spelling") == spelling
    assert normalize_transcript(raw, "phonetic") == phonetic


@pytest.mark.parametrize(("raw", "spelling", "phonetic"), SLIPS)
def test_annotation_slips_are_repaired(raw: str, spelling: str, phonetic: str) -> None:
    assert normalize_transcript(raw, "spelling") == spelling
    assert normalize_transcript(raw, "phonetic") == phonetic


def test_case_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({raw for raw, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("raw", EMPTY)
@pytest.mark.parametrize("form", TRANSCRIPT_FORMS)
def test_only_tags_give_empty_text(raw: str, form: str) -> None:
    assert normalize_transcript(raw, form) == ""


def _fuzzed_lines(count: int) -> list[str]:
    tokens = ["어/", "음/", "b/", "l/", "o/", "n/", "u/", "*", "+", "/", "(", ")", "(3)/(삼)", "(SRT)(에스알티)",
              "그+", "그거", "진짜", "SRT", "70%", "?", ".", "  ", "\r\n", "\t", nfd("한국")]  # fmt: skip
    rng = random.Random(0)
    return ["".join(rng.choices(tokens, k=rng.randint(1, 12))) for _ in range(count)]


@pytest.mark.parametrize("form", TRANSCRIPT_FORMS)
def test_output_invariants(form: str) -> None:
    lines = [raw for raw, _, _ in CASES] + EMPTY + _fuzzed_lines(2000)
    for raw in lines:
        text = normalize_transcript(raw, form)
        assert not set(text) & set("/+*()"), (raw, text)
        assert text == unicodedata.normalize("NFC", text), raw
        assert "  " not in text and text == text.strip(), (raw, text)
        assert "\r" not in text and "\n" not in text and "\t" not in text, raw


def test_latin_words_and_digits_survive() -> None:
    assert normalize_transcript("(SRT)/(에스알티) 말고 KTX b/ 2 번") == "SRT 말고 KTX 2 번"


def test_invalid_mode_lists_valid_modes() -> None:
    with pytest.raises(ValueError, match="'pronunciation'.*spelling, phonetic"):
        normalize_transcript("아/ 네", "pronunciation")


# Decoding


def test_decode_cp949_including_a_syllable_euc_kr_lacks() -> None:
    text = "똠양꿍 먹어 봤어?"
    # EUC-KR has no two-byte code for 똠 (Python's codec spells it as an 8-byte jamo sequence), CP949 has one.
    assert "똠".encode("cp949") == b"\x8cc" and len("똠".encode("euc-kr")) == 8
    data = text.encode("cp949")
    with pytest.raises(UnicodeDecodeError):
        data.decode("euc-kr")
    assert decode_transcript(data) == text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("아/ 몬 소리야".encode(), "아/ 몬 소리야"),
        (b"\xef\xbb\xbf" + "(SRT)/(에스알티) 타고 가".encode(), "(SRT)/(에스알티) 타고 가"),
        ("어/ 그래서\r\n".encode("cp949"), "어/ 그래서"),
        ("어/ 그래서\r\n".encode(), "어/ 그래서"),
        ("음/ 네\n".encode("cp949"), "음/ 네"),
        ("첫 줄\r\n둘째 줄\r\n".encode("cp949"), "첫 줄 둘째 줄"),
        (b"b/ n/\r\n", "b/ n/"),
        (b"", ""),
    ],
)
def test_decode_utf8_cp949_bom_crlf(data: bytes, expected: str) -> None:
    assert decode_transcript(data) == expected


def test_cp949_that_is_also_valid_utf8_decodes_as_cp949() -> None:
    data = "짝짝짝".encode("cp949")
    assert data.decode("utf-8") == "¦¦¦"  # what a UTF-8-first decoder would wrongly return
    assert decode_transcript(data) == "짝짝짝"


def test_utf8_with_latin1_letters_and_hangul_stays_utf8() -> None:
    assert decode_transcript("카페 café 가자".encode()) == "카페 café 가자"


@pytest.mark.parametrize("data", [b"\xff\xfe\xfa\xff", b"\x80\x80\xff", b"\x00\x00\x00\x00", "네".encode("utf-16")])
def test_undecodable_bytes_give_none(data: bytes) -> None:
    assert decode_transcript(data) is None
