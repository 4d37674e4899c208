"""Write a small synthetic corpus laid out exactly like KsponSpeech as AI Hub distributes it.

    python -m kspon_dataset.sample_corpus --out kspon_dataset/sample --num_utterances 150 --voice espeak --seed 0
    python -m kspon_dataset.sample_corpus --out /tmp/kspon_big --num_utterances 5000 --voice tone

Layout (all four ZIP kinds, ZIP_DEFLATED, fixed timestamps so the same seed gives the same bytes):
- `KsponSpeech_0K.zip` (K = 1..5) hold `KsponSpeech_0K/KsponSpeech_FFFF/KsponSpeech_NNNNNN.pcm`, a `.txt` beside
  each; utterance N lives in folder ceil(N / 1000), and zip K holds folders 0001-0124, 0125-0248, 0249-0372, 0373-0496,
  0497-0623. Folders 0621-0623 are the official dev set.
- `KsponSpeech_eval.zip` holds `KsponSpeech_eval/eval_clean/KsponSpeech_E00001.pcm` (E00001-E03000) and
  `.../eval_other/KsponSpeech_E03001.pcm` (E03001-E06000).
- `KsponSpeech_scripts.zip` holds `train.trn`, `dev.trn`, `eval_clean.trn`, `eval_other.trn`: UTF-8 lines
  `<path>.pcm :: <raw transcript>`. dev.trn lists a strict subset of folders 0621-0623, as the real one lists
  2,545 of 3,000.
Audio is headerless 16 kHz signed 16-bit little-endian mono PCM; `.txt` transcripts are CP949, some with CRLF.

Voices: `espeak` has espeak-ng's Korean voice read the pronunciation side of each transcript (needs `espeak-ng` and
`sox`); `tone` writes a few deterministic sine tones per utterance, fast enough for corpora of thousands.

Sentences come from a bank of real-style tagged transcripts (written for this repo, not taken from KsponSpeech).
Each is used at most once per corpus and the dev/eval sentences are drawn from a pool the training split never
touches; corpora larger than the bank join two pool sentences into one utterance.
"""

import argparse
import itertools
import math
import random
import re
import shutil
import subprocess
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .corpus import SAMPLE_RATE, pcm_samples
from .normalize import normalize_transcript

try:
    from tqdm import tqdm
except ImportError:  # the bar is a nicety; generation works without it
    tqdm = None

ZIP_DATE_TIME = (2018, 7, 1, 0, 0, 0)  # fixed, so two runs with one seed write identical archives
EVAL_ROOT = "KsponSpeech_eval"
SCRIPTS_ZIP = "KsponSpeech_scripts.zip"
# Last folder of each training zip KsponSpeech_01 .. KsponSpeech_05.
ZIP_LAST_FOLDER = (124, 248, 372, 496, 623)
TRAIN_LAST_FOLDER = 620
DEV_FOLDERS = (621, 622, 623)
EVAL_OTHER_FIRST = 3001
# Three folders per training zip (first, middle, last, so the 0124 | 0125 boundaries are exercised), ordered so
# that dealing utterances round-robin reaches all five zips first.
TRAIN_FOLDERS = (1, 125, 249, 373, 497, 62, 186, 310, 434, 558, 124, 248, 372, 496, 620)
# Utterances the loader must drop, kept out of the bank so a random draw never produces them.
EMPTY_TEXT_CASE = "b/ n/"
TOO_SHORT_CASE = "네"
TOO_SHORT_SECONDS = 0.3
MIN_SECONDS = 0.7  # every other clip is at least this long

_TRAIN_UID = re.compile(r"KsponSpeech_(\d{6})")
_EVAL_UID = re.compile(r"KsponSpeech_E(\d{5})")

SENTENCE_BANK = tuple(
    line.strip()
    for line in """
그래서 나는 그냥 집에 있었어
오늘 날씨 진짜 좋다
너 밥 먹었어?
아직 안 먹었어
내일 뭐 할 거야?
그거 완전 대박이다
나도 그렇게 생각해
요즘 너무 바빠서 정신이 없어
주말에 영화 보러 갈래?
그 영화 벌써 봤어
엄마가 전화하라고 하셨어
지하철 타고 가면 금방이야
버스가 너무 안 와
거기 사람 엄청 많더라
그냥 편하게 입고 와
시험 언제 끝나?
다음 주 금요일에 끝나
배고파 죽겠다
치킨 시켜 먹을까?
좋아 나 양념 반 후라이드 반
커피 한 잔 할래?
나 오늘 좀 피곤해
어제 잠을 못 잤거든
그럼 일찍 자
알바 끝나고 갈게
그 사람 진짜 웃기더라
우리 동네에 새로 생겼어
생각보다 맛있었어
가격이 좀 비싸긴 해
나는 별로였어
비 온다고 했는데 안 오네
우산 챙겨 가
강아지 산책 시켜야 돼
고양이가 너무 귀여워
방학 때 여행 가고 싶다
제주도 가 봤어?
한 번도 안 가 봤어
그럼 이번에 같이 가자
운동 시작했다며?
헬스장 등록만 했어
살이 좀 빠졌네
요즘 뭐 재밌는 거 없어?
그 드라마 봐 봐
끝까지 다 봤어
결말이 좀 허무했어
동생이 군대 갔어
면회 한 번 가야지
회사 일은 괜찮아?
팀장님이 좀 까다로워
그래도 월급은 잘 나와
이사 언제 가?
짐 싸는 게 일이야
도와줄 사람 있어?
친구들이 와 주기로 했어
그거 어디서 샀어?
인터넷으로 샀는데 싸더라
배송이 좀 늦었어
전화 왜 안 받았어?
핸드폰을 집에 두고 왔어
그래서 연락이 안 됐구나
떡볶이 먹으러 가자
매운 거 잘 먹어?
나 매운 거 못 먹어
진짜 오랜만이다
잘 지냈지?
그럭저럭 지냈어
학교 앞에 새로 생긴 카페
분위기 괜찮더라
노래방 갈 사람?
나 목 아파서 못 가
감기 걸렸어?
약 먹고 푹 쉬어
수업 몇 시에 끝나?
과제가 너무 많아
교수님이 깐깐하셔
그 얘기 들었어?
아니 처음 듣는데
완전 소름 돋았어
똠양꿍 먹어 본 적 있어?
짝짝짝 박수 쳐 줘
기차 시간 다 됐어
표는 예매했어?
응 어제 미리 했어
그럼 역에서 보자
나 지금 출발해
차가 좀 막히네
주차할 데가 없어
점심 뭐 먹지?
아무거나 괜찮아
그게 제일 어려워
어/ 그게 좀 애매해
음/ 잘 모르겠어
아/ 진짜?
그/ 뭐냐 그거 있잖아
어/ 나도 가고 싶은데
음/ 그건 좀 생각해 볼게
아/ 그래서 그랬구나
뭐/ 그냥 그렇지
어/ 음/ 잠깐만
아/ 맞다 그거
그래서 어/ 결국 못 갔어
이제/ 그 다음에 뭐 해?
막/ 정신없이 뛰어갔어
어/ 그니까 내 말은
음/ 나쁘지 않았어
아/ 배불러
저/ 혹시 시간 있으세요?
에/ 그게 아니라
오/ 대박
음/ 글쎄
아/ 몰라 몰라
어/ 왜 그래?
그냥 음/ 집에 있었어
아니 어/ 그런 게 아니고
근데 음/ 좀 늦을 것 같아
어/ 어디야?
아/ 깜짝이야
흠/ 이상하다
어/ 그거 내 거야
응 음/ 괜찮아
그+ 그거 말이야
나+ 나도 몰라
내가+ 내가 할게
진짜+ 진짜 맛있어
그래서+ 그래서 어떻게 됐어?
아니+ 아니 그게
이거+ 이거 봐 봐
우리+ 우리 언제 만나?
어/ 그+ 그러니까
잠+ 잠깐만 기다려
왜+ 왜 그랬어?
너+ 너 지금 어디야?
아까+ 아까 말한 거
좀+ 좀 도와줘
다+ 다 먹었어
그게+ 그게 뭐였지?
학+ 학교 가야 돼
빨+ 빨리 와
어떻+ 어떻게 해
지금+ 지금 갈게
(70%)/(칠십 퍼센트) 확률이래
(3)/(세) 시에 만나자
(10)/(열) 분만 기다려
(SRT)/(에스알티) 타고 가
(KTX)/(케이티엑스) 예매했어
(2)/(두) 명이요
(5000원)/(오천 원)이야 그거
(100%)/(백 프로) 확실해
오늘 (2)/(이) 교시 휴강이래
(1)/(한) 시간 걸려
(PC)/(피씨)방 갈래?
(TV)/(티비) 틀어 봐
(3)/(삼) 층으로 와
(30)/(서른) 살 넘었어
(5)/(다섯) 개만 주세요
(2019년)/(이천십구 년)에 갔어
(1)/(일) 학년 때 친구야
(CCTV)/(씨씨티비)에 찍혔대
(SNS)/(에스엔에스) 안 해
(MT)/(엠티) 가?
(10km)/(십 킬로) 뛰었어
(500ml)/(오백 미리) 한 병
(3kg)/(삼 킬로) 빠졌어
(50%)/(오십 퍼센트) 세일이래
(2)/(이) 번 출구 앞이야
(1)/(한) 번만 봐 줘
(OT)/(오티) 언제야?
(LA)/(엘에이) 가 봤어?
생일이 (12월)/(십이 월)이야
(7)/(일곱) 시 반에 봐
(4)/(사) 호선 타면 돼
(20)/(스무) 살 때 만났어
(A)/(에이) 학점 받았어
(PPT)/(피피티) 다 만들었어?
(1)/(일) 등 했대
(3)/(삼) 대 (1)/(일)로 이겼어
(9)/(아홉) 시까지 와
음/ (2)/(두) 개 정도?
아/ (OK)/(오케이) 알았어
(6)/(육) 개월 됐어
(8)(여덟) 시에 일어나
(15)(십오) 분 남았어
(GPS)(지피에스) 켜 봐
(1)(한) 잔만 더
그거 (3)(삼) 만 원이야
(USB)(유에스비) 있어?
(내가)/(내) 할게
(그런데)/(근데) 왜?
(뭐라고)/(머라고)? 다시 말해
(그러니까)/(그니까) 내 말은
(이렇게)/(이르케) 하면 돼
(무엇을)/(뭘) 먹을까?
(안 돼)/(안 대)
(했어요)/(했어여) 그거
(뭐+ 뭔)/(모+ 몬) 소리야
(그+ 그거)/(그+ 그고) 말고
아/ (2+ 2)/(이+ 이) 층이야
(10+ 10%)/(십+ 십 프로) 할인
어/ (3+ 3)/(삼+ 삼) 번이요
b/ 그래서 어떻게 됐어?
진짜 웃기다 l/
o/ 응 알겠어
잠깐만 n/ 다시 말해 봐
u/ 그거 말고
b/ 아/ 피곤해
l/ 너 진짜 웃겨
그냥 b/ 집에 갈래
n/ 뭐라고? 안 들려
아/ 그거 o/ 맞아
몰라 u/ 됐어
b/어/ 그러니까
l/ 아/ 배 아파 l/
나 갈게 o/ n/
b/ (3)/(세) 시쯤?
n/ 여보세요? 들려요?
좀 조용히 해 봐 n/
l/ 그게 말이 돼?
o/ 어 나도
u/ u/ 그래 알았어
b/ 음/ 글쎄다
아니야 l/ 괜찮아
o/l/ 그만해 좀
여보세요 n/ 들려?
그 *사람이 누구야?
어제 * 갔었어
* 그거 맞아?
나 *홍대 가는 중
그래서 걔가 *
아/ *진짜 짜증나
*어디 간다고?
그 가게 *이름이 뭐였지?
(YouTube)/(유튜브) 보고 있었어
(iPhone)/(아이폰) 새로 샀어
(OK)/(오케이) 그럼 내일 봐
그거 (Netflix)/(넷플릭스)에 있어
이번 (MT)/(엠티) b/ 재밌었어
(PC)/(피씨) 켜 놨어
""".strip().splitlines()
)


@dataclass(frozen=True)
class Utterance:
    """One clip and its transcript, as written into the archives."""

    uid: str  # KsponSpeech_000001 (training / dev) or KsponSpeech_E00001 (eval)
    raw_text: str  # tagged transcript, as in the .txt and .trn files
    pcm: bytes  # headerless 16 kHz s16le mono
    txt: bytes | None = None  # exact .txt bytes (a bad encoding, say); None writes raw_text as CP949
    crlf: bool = False  # end the .txt with CRLF, as many AI Hub files do
    omit_txt: bool = False  # write the .pcm without its .txt

    def txt_bytes(self) -> bytes:
        if self.txt is not None:
            return self.txt
        return self.raw_text.encode("cp949") + (b"\r\n" if self.crlf else b"")


@dataclass
class CorpusSummary:
    """What `write_corpus` wrote; the counts are utterances (one .pcm each)."""

    out_dir: Path
    layout: str
    voice: str
    per_zip: dict[str, int]  # KsponSpeech_01.zip .. KsponSpeech_eval.zip (in dir layout: the extracted archive)
    per_split: dict[str, int]  # train (0001-0620), dev (0621-0623), dev_trn (listed in dev.trn), eval_clean/other
    must_skip: dict[str, str] = field(default_factory=dict)  # uid -> why the loader has to drop it
    audio_seconds: float = 0.0
    total_bytes: int = 0

    def format(self) -> str:
        lines = [f"wrote {sum(self.per_zip.values())} utterances ({self.audio_seconds:.1f} s of audio, "]
        lines[0] += f"{self.total_bytes / 1e6:.2f} MB) to {self.out_dir} [layout={self.layout}, voice={self.voice}]"
        lines.append("  per zip:   " + ", ".join(f"{name} {count}" for name, count in self.per_zip.items()))
        lines.append("  per split: " + ", ".join(f"{name} {count}" for name, count in self.per_split.items()))
        lines += [f"  must skip: {uid} ({reason})" for uid, reason in self.must_skip.items()]
        return "\n".join(lines)


def train_uid(number: int) -> str:
    return f"KsponSpeech_{number:06d}"


def eval_uid(number: int) -> str:
    return f"KsponSpeech_E{number:05d}"


def folder_of(number: int) -> int:
    """Folder KsponSpeech_FFFF of training utterance N: ceil(N / 1000)."""
    return math.ceil(number / 1000)


def zip_index_of_folder(folder: int) -> int:
    """Which KsponSpeech_0K.zip holds a folder: 1 for 0001-0124, ..., 5 for 0497-0623."""
    if not 1 <= folder <= ZIP_LAST_FOLDER[-1]:
        raise ValueError(f"folder {folder} is outside KsponSpeech's 0001-{ZIP_LAST_FOLDER[-1]:04d}")
    return next(index for index, last in enumerate(ZIP_LAST_FOLDER, start=1) if folder <= last)


def member_path(uid: str, eval_root: str = EVAL_ROOT) -> str:
    """Archive path of an utterance without extension, e.g. KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001."""
    if match := _TRAIN_UID.fullmatch(uid):
        folder = folder_of(int(match.group(1)))
        return f"KsponSpeech_{zip_index_of_folder(folder):02d}/KsponSpeech_{folder:04d}/{uid}"
    if match := _EVAL_UID.fullmatch(uid):
        subset = "eval_clean" if int(match.group(1)) < EVAL_OTHER_FIRST else "eval_other"
        return f"{eval_root}/{subset}/{uid}"
    raise ValueError(f"utterance id {uid!r} is neither KsponSpeech_NNNNNN nor KsponSpeech_ENNNNN")


def zip_name(uid: str, eval_root: str = EVAL_ROOT) -> str:
    """The AI Hub archive an utterance ships in: KsponSpeech_01.zip .. KsponSpeech_05.zip, KsponSpeech_eval.zip."""
    top = member_path(uid, eval_root).split("/", 1)[0]
    return "KsponSpeech_eval.zip" if top == eval_root else f"{top}.zip"


def trn_line(uid: str, raw_text: str, eval_root: str = EVAL_ROOT) -> str:
    return f"{member_path(uid, eval_root)}.pcm :: {raw_text}\n"


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """Write members in the given order, deflated, with a fixed timestamp; names ending in "/" become folders."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            is_dir = name.endswith("/")
            info.external_attr = ((0o40755 if is_dir else 0o644) << 16) | (0x10 if is_dir else 0)
            info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)


def write_members(out_dir: Path, archive: str, members: dict[str, bytes], layout: str) -> None:
    """Write one archive's members as `out_dir/archive` (zip) or extracted under `out_dir` (dir)."""
    if layout == "zip":
        write_zip(out_dir / archive, members)
        return
    if layout != "dir":
        raise ValueError(f"layout={layout!r} is not a corpus layout; use 'zip' or 'dir'")
    for name, data in members.items():
        target = out_dir / name
        if name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def utterance_members(utterances: Iterable[Utterance], eval_root: str = EVAL_ROOT) -> dict[str, dict[str, bytes]]:
    """Archive name -> {member path: bytes}, folders first as zip tools write them, utterances sorted by id."""
    archives: dict[str, dict[str, bytes]] = {}
    for utt in sorted(utterances, key=lambda utt: utt.uid):
        members = archives.setdefault(zip_name(utt.uid, eval_root), {})
        path = member_path(utt.uid, eval_root)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            members.setdefault("/".join(parts[:depth]) + "/", b"")
        members[f"{path}.pcm"] = utt.pcm
        if not utt.omit_txt:
            members[f"{path}.txt"] = utt.txt_bytes()
    return archives


def write_utterances(
    out_dir: Path, utterances: Iterable[Utterance], layout: str = "zip", eval_root: str = EVAL_ROOT
) -> dict[str, int]:
    """Write clips and transcripts into their AI Hub archives; returns utterances per archive."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for archive, members in utterance_members(utterances, eval_root).items():
        write_members(out_dir, archive, members, layout)
        counts[archive] = sum(name.endswith(".pcm") for name in members)
    return counts


def write_scripts(
    out_dir: Path, scripts: dict[str, list[Utterance]], layout: str = "zip", eval_root: str = EVAL_ROOT
) -> None:
    """Write `{name}.trn` per entry (train, dev, eval_clean, eval_other) into KsponSpeech_scripts.zip."""
    members = {
        f"{name}.trn": "".join(trn_line(utt.uid, utt.raw_text, eval_root) for utt in utts).encode("utf-8")
        for name, utts in scripts.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_members(out_dir, SCRIPTS_ZIP, members, layout)


def espeak_pcm(text: str) -> bytes:
    """espeak-ng's Korean voice reading `text`, as 16 kHz s16le mono with the silence around it trimmed."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"voice 'espeak' needs {' and '.join(missing)}: apt-get install -y espeak-ng sox, or use --voice tone"
        )
    # -s 190 words/min (default 175) keeps the committed sample under 5 MB and still sounds like speech.
    espeak = ["espeak-ng", "-v", "ko", "-s", "190", "--stdout"]
    wav = subprocess.run(espeak, input=text.encode(), capture_output=True, check=True)
    # -D: no dither, whose random noise would make two runs differ.
    sox = f"sox -D -V1 -t wav - -t raw -r {SAMPLE_RATE} -e signed -b 16 -c 1 -L -".split()
    raw = subprocess.run(sox, input=wav.stdout, capture_output=True, check=True).stdout
    return _trim_silence(pcm_samples(raw)).tobytes()


def tone_pcm(text: str, uid: str, seed: int = 0) -> bytes:
    """A few sine tones with a little noise, 0.4 s plus 0.07 s per character: deterministic per (uid, seed)."""
    rng = np.random.default_rng([zlib.crc32(uid.encode()), seed])
    n_chars = max(1, len(text.replace(" ", "")))
    num_samples = int((0.4 + 0.07 * n_chars) * SAMPLE_RATE)
    n_tones = max(1, n_chars // 3)
    freqs = np.repeat(rng.uniform(120.0, 400.0, n_tones), math.ceil(num_samples / n_tones))[:num_samples]
    phase = 2 * np.pi * np.cumsum(freqs) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(np.arange(num_samples), np.arange(num_samples)[::-1]) / 800)
    signal = envelope * (0.3 * np.sin(phase) + 0.02 * rng.standard_normal(num_samples))
    return (signal * 32767).astype("<i2").tobytes()


def _trim_silence(samples: np.ndarray, margin_s: float = 0.08) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    if loud.size == 0:
        return samples
    margin = int(margin_s * SAMPLE_RATE)
    return samples[max(0, loud[0] - margin) : loud[-1] + margin]


def _sentence_stream(pool: list[str], rng: random.Random) -> Iterable[str]:
    """Each pool sentence once, then distinct ordered pairs of them, so no line repeats within a corpus."""
    yield from pool
    pairs = [f"{first} {second}" for first, second in itertools.permutations(pool, 2)]
    rng.shuffle(pairs)
    yield from pairs


def _draw_sentences(n_train: int, n_held_out: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Training and held-out (dev + eval) sentences from disjoint halves of the shuffled bank."""
    bank = list(SENTENCE_BANK)
    rng.shuffle(bank)
    if n_train + n_held_out <= len(bank):
        n_pool = n_held_out
    else:  # pools can hold p * p lines (singles plus ordered pairs): size the held-out pool by its share
        n_pool = max(math.isqrt(n_held_out - 1) + 1, round(len(bank) * n_held_out / (n_train + n_held_out)))
    held_pool, train_pool = bank[:n_pool], bank[n_pool:]
    if len(train_pool) ** 2 < n_train:
        raise ValueError(
            f"{n_train} training utterances need more sentences than the bank can make; "
            f"use --num_utterances {len(train_pool) ** 2 + n_held_out} or fewer"
        )
    train = list(itertools.islice(_sentence_stream(train_pool, rng), n_train))
    held_out = list(itertools.islice(_sentence_stream(held_pool, rng), n_held_out))
    return train, held_out


def plan_corpus(num_utterances: int, skip_cases: bool = True, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Split name -> [(uid, raw transcript)] for train, dev (folders 0621-0623), eval_clean and eval_other."""
    n_train, n_dev, n_eval = _split_sizes(num_utterances, skip_cases)
    if n_train < len(ZIP_LAST_FOLDER):
        enough = next(n for n in itertools.count(num_utterances) if _split_sizes(n, skip_cases)[0] >= 5)
        raise ValueError(
            f"num_utterances={num_utterances} leaves {n_train} training utterances, fewer than the "
            f"{len(ZIP_LAST_FOLDER)} training zips; use --num_utterances {enough} or more"
        )
    rng = random.Random(seed)
    train_text, held_text = _draw_sentences(n_train, n_dev + 2 * n_eval, rng)
    if skip_cases:  # first in line, so they land in folders 0001 and 0125 and every demo shows them
        train_text = [EMPTY_TEXT_CASE, TOO_SHORT_CASE, *train_text]
    return {
        "train": list(zip(_spread_over_folders(len(train_text), TRAIN_FOLDERS), train_text, strict=True)),
        "dev": list(zip(_spread_over_folders(n_dev, DEV_FOLDERS), held_text[:n_dev], strict=True)),
        "eval_clean": [(eval_uid(1 + i), text) for i, text in enumerate(held_text[n_dev : n_dev + n_eval])],
        "eval_other": [(eval_uid(EVAL_OTHER_FIRST + i), text) for i, text in enumerate(held_text[n_dev + n_eval :])],
    }


def _split_sizes(num_utterances: int, skip_cases: bool) -> tuple[int, int, int]:
    """Bank sentences for train, dev and each eval subset: 10% per eval subset, 8% dev, at least one per folder."""
    n_eval = max(1, round(0.1 * num_utterances))
    n_dev = max(len(DEV_FOLDERS), round(0.08 * num_utterances))
    n_train = num_utterances - 2 * n_eval - n_dev - (2 if skip_cases else 0)
    return n_train, n_dev, n_eval


def _spread_over_folders(count: int, folders: tuple[int, ...]) -> list[str]:
    """Deal utterances round-robin over folders; each folder numbers its own from (folder - 1) * 1000 + 1."""
    if count > 1000 * len(folders):
        raise ValueError(f"{count} utterances overflow {len(folders)} folders of 1,000; use fewer utterances")
    next_in_folder = {folder: (folder - 1) * 1000 + 1 for folder in folders}
    uids = []
    for i in range(count):
        folder = folders[i % len(folders)]
        uids.append(train_uid(next_in_folder[folder]))
        next_in_folder[folder] += 1
    return uids


def make_pcm(uid: str, raw_text: str, voice: str, seed: int) -> bytes:
    """Audio for one utterance: the pronunciation side is what a speaker would have said."""
    spoken = normalize_transcript(raw_text, "phonetic")
    if raw_text == EMPTY_TEXT_CASE:
        spoken = "음"  # breath and noise: some sound, no words
    pcm = espeak_pcm(spoken) if voice == "espeak" else tone_pcm(spoken, uid, seed)
    if raw_text == TOO_SHORT_CASE:
        return pcm[: int(TOO_SHORT_SECONDS * SAMPLE_RATE) * 2]
    # Pad with silence to well above the loader's 0.5 s floor, so only the deliberate clip is too short.
    missing = max(0, int(MIN_SECONDS * SAMPLE_RATE) - len(pcm) // 2)
    return bytes(missing // 2 * 2) + pcm + bytes((missing - missing // 2) * 2)


def write_corpus(
    out_dir: Path | str,
    num_utterances: int = 150,
    voice: str = "espeak",
    seed: int = 0,
    layout: str = "zip",
    skip_cases: bool = True,
    progress: bool = False,
) -> CorpusSummary:
    """Generate a whole sample corpus (all five training zips, eval and scripts) and return what it holds."""
    if voice not in ("espeak", "tone"):
        raise ValueError(f"voice={voice!r} is not a voice; use 'espeak' or 'tone'")
    if layout not in ("zip", "dir"):
        raise ValueError(f"layout={layout!r} is not a corpus layout; use 'zip' or 'dir'")
    out_dir = Path(out_dir)
    plan = plan_corpus(num_utterances, skip_cases, seed)
    rows = [(split, uid, text) for split, split_rows in plan.items() for uid, text in split_rows]
    crlf_rng = random.Random(seed + 1)
    by_split: dict[str, list[Utterance]] = {split: [] for split in plan}
    for split, uid, text in _progress(rows, progress, f"{voice} audio"):
        utt = Utterance(uid, text, make_pcm(uid, text, voice, seed), crlf=crlf_rng.random() < 0.4)
        by_split[split].append(utt)
    for utts in by_split.values():  # .trn files list utterances in path order, as AI Hub's do
        utts.sort(key=lambda utt: utt.uid)
    per_zip = write_utterances(out_dir, [utt for utts in by_split.values() for utt in utts], layout)
    scripts = {**by_split, "dev": _dev_trn_subset(by_split["dev"], random.Random(seed + 2))}
    write_scripts(out_dir, scripts, layout)
    return _summarize(out_dir, layout, voice, per_zip, by_split, len(scripts["dev"]), skip_cases)


def _progress(rows: list, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return rows
    if tqdm is not None:
        return tqdm(rows, desc=desc, unit="utt")
    return _print_every(rows, 100, desc)


def _print_every(rows: list, every: int, desc: str) -> Iterable:
    for i, row in enumerate(rows, start=1):
        if i % every == 0 or i == len(rows):
            print(f"{desc}: {i}/{len(rows)} utterances", flush=True)
        yield row


def _dev_trn_subset(dev: list[Utterance], rng: random.Random) -> list[Utterance]:
    # The real dev.trn lists 2,545 of the 3,000 utterances in folders 0621-0623: leave out about 15%, at least one.
    n_dropped = max(1, round(0.15 * len(dev)))
    dropped = set(rng.sample(range(len(dev)), n_dropped))
    return [utt for i, utt in enumerate(dev) if i not in dropped]


def _summarize(
    out_dir: Path,
    layout: str,
    voice: str,
    per_zip: dict[str, int],
    by_split: dict[str, list[Utterance]],
    n_dev_trn: int,
    skip_cases: bool,
) -> CorpusSummary:
    per_split = {split: len(utts) for split, utts in by_split.items()} | {"dev_trn": n_dev_trn}
    must_skip = {}
    if skip_cases:
        must_skip = {
            utt.uid: ("empty_text" if utt.raw_text == EMPTY_TEXT_CASE else f"too_short ({TOO_SHORT_SECONDS} s)")
            for utt in by_split["train"]
            if utt.raw_text in (EMPTY_TEXT_CASE, TOO_SHORT_CASE)
        }
    samples = sum(len(utt.pcm) // 2 for utts in by_split.values() for utt in utts)
    total_bytes = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file())
    return CorpusSummary(out_dir, layout, voice, per_zip, per_split, must_skip, samples / SAMPLE_RATE, total_bytes)


def main(argv: list[str] | None = None) -> CorpusSummary:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the archives into")
    parser.add_argument("--num_utterances", type=int, default=150, help="total, skip cases included")
    parser.add_argument("--voice", choices=("espeak", "tone"), default="espeak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("zip", "dir"), default="zip", help="dir: the zips extracted")
    parser.add_argument("--no_skip_cases", action="store_true", help="leave out the two clips the loader drops")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = write_corpus(
        args.out, args.num_utterances, args.voice, args.seed, args.layout, not args.no_skip_cases, progress=True
    )
    print(summary.format())
    print(f"generated in {time.perf_counter() - start:.1f} s")
    return summary


if __name__ == "__main__":
    main()
