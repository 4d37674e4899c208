"""The sample-corpus generator writes KsponSpeech's AI Hub layout, encodings and scripts, deterministically."""

import math
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kspon_dataset import sample_corpus as sc
from kspon_dataset.normalize import decode_transcript, normalize_transcript

# Written out again here rather than imported, so a wrong table in the generator cannot agree with itself.
ZIP_FOLDERS = {1: (1, 124), 2: (125, 248), 3: (249, 372), 4: (373, 496), 5: (497, 623)}
TRAIN_MEMBER = re.compile(r"KsponSpeech_0(\d)/KsponSpeech_(\d{4})/KsponSpeech_(\d{6})\.(pcm|txt)")
EVAL_MEMBER = re.compile(r"KsponSpeech_eval/(eval_clean|eval_other)/KsponSpeech_E(\d{5})\.(pcm|txt)")
TRN_LINE = re.compile(r"(?P<path>\S+\.pcm) :: (?P<raw>.+)")
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "kspon_dataset" / "sample"


def read_archives(out_dir: Path) -> dict[str, dict[str, bytes]]:
    archives = {}
    for path in sorted(out_dir.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            archives[path.name] = {name: archive.read(name) for name in archive.namelist()}
    return archives


def read_trn(members: dict[str, bytes], name: str) -> list[tuple[str, str]]:
    lines = members[name].decode("utf-8").splitlines()
    matches = [TRN_LINE.fullmatch(line) for line in lines]
    assert all(matches), [line for line, match in zip(lines, matches, strict=True) if not match]
    return [(match["path"], match["raw"]) for match in matches]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[sc.CorpusSummary, dict[str, dict[str, bytes]]]:
    out_dir = tmp_path_factory.mktemp("tone_corpus")
    summary = sc.write_corpus(out_dir, num_utterances=120, voice="tone", seed=3)
    return summary, read_archives(out_dir)


def test_all_four_zip_kinds(corpus) -> None:
    _, archives = corpus
    expected = [f"KsponSpeech_0{k}.zip" for k in range(1, 6)] + ["KsponSpeech_eval.zip", "KsponSpeech_scripts.zip"]
    assert sorted(archives) == sorted(expected)
    assert sorted(archives["KsponSpeech_scripts.zip"]) == sorted(
        ["train.trn", "dev.trn", "eval_clean.trn", "eval_other.trn"]
    )


def test_members_are_deflated_with_a_fixed_date(tmp_path: Path) -> None:
    sc.write_corpus(tmp_path, num_utterances=20, voice="tone")
    for path in tmp_path.glob("*.zip"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                assert info.date_time == sc.ZIP_DATE_TIME
                assert info.is_dir() or info.compress_type == zipfile.ZIP_DEFLATED


def test_training_members_sit_in_folder_ceil_id_over_1000(corpus) -> None:
    summary, archives = corpus
    folders_per_zip: dict[int, set[int]] = {}
    for k in range(1, 6):
        members = archives[f"KsponSpeech_0{k}.zip"]
        files = [name for name in members if not name.endswith("/")]
        for name in files:
            match = TRAIN_MEMBER.fullmatch(name)
            assert match, name
            zip_k, folder, number = int(match[1]), int(match[2]), int(match[3])
            assert zip_k == k and folder == math.ceil(number / 1000), name
            assert ZIP_FOLDERS[k][0] <= folder <= ZIP_FOLDERS[k][1], name
            folders_per_zip.setdefault(k, set()).add(folder)
        pcms = {name[:-4] for name in files if name.endswith(".pcm")}
        assert pcms == {name[:-4] for name in files if name.endswith(".txt")}
        assert len(pcms) == summary.per_zip[f"KsponSpeech_0{k}.zip"]
    assert all(len(folders) >= 3 for folders in folders_per_zip.values()), folders_per_zip
    assert {621, 622, 623} <= folders_per_zip[5]
    assert {124, 125} <= folders_per_zip[1] | folders_per_zip[2]


def test_eval_members_split_at_e03000(corpus) -> None:
    _, archives = corpus
    seen = set()
    for name in archives["KsponSpeech_eval.zip"]:
        if name.endswith("/"):
            continue
        match = EVAL_MEMBER.fullmatch(name)
        assert match, name
        subset, number = match[1], int(match[2])
        assert (subset == "eval_clean") == (1 <= number <= 3000) and number <= 6000, name
        seen.add(subset)
    assert seen == {"eval_clean", "eval_other"}


def test_txt_files_are_cp949_some_with_crlf(corpus) -> None:
    _, archives = corpus
    txts = [data for members in archives.values() for name, data in members.items() if name.endswith(".txt")]
    for data in txts:
        data.decode("cp949")  # strict: raises on anything else
    hangul_only_cp949 = [data for data in txts if not _decodes(data, "utf-8")]
    assert len(hangul_only_cp949) > len(txts) // 2  # really CP949, not UTF-8 that CP949 happens to accept
    n_crlf = sum(data.endswith(b"\r\n") for data in txts)
    assert 0 < n_crlf < len(txts)


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def test_trn_lines_agree_with_txt_files(corpus) -> None:
    summary, archives = corpus
    txt = {
        name.removesuffix(".txt"): decode_transcript(data)
        for members in archives.values()
        for name, data in members.items()
        if name.endswith(".txt")
    }
    pcm_paths = {name for members in archives.values() for name in members if name.endswith(".pcm")}
    scripts = archives["KsponSpeech_scripts.zip"]
    listed = {name: read_trn(scripts, f"{name}.trn") for name in ("train", "dev", "eval_clean", "eval_other")}
    for name, rows in listed.items():
        paths = [path for path, _ in rows]
        assert paths == sorted(paths) and len(set(paths)) == len(paths), name
        for path, raw in rows:
            assert path in pcm_paths and txt[path.removesuffix(".pcm")] == raw, (name, path)

    def folder(path: str) -> int:
        return int(path.split("/")[1].removeprefix("KsponSpeech_"))

    training = {path for path in pcm_paths if path.startswith("KsponSpeech_0")}
    assert {path for path, _ in listed["train"]} == {path for path in training if folder(path) <= 620}
    dev_folders = {path for path in training if folder(path) >= 621}
    assert {path for path, _ in listed["dev"]} < dev_folders  # strict subset, as the real dev.trn
    assert len(listed["dev"]) == summary.per_split["dev_trn"] and len(dev_folders) == summary.per_split["dev"]
    for subset in ("eval_clean", "eval_other"):
        assert {path for path, _ in listed[subset]} == {path for path in pcm_paths if f"/{subset}/" in path}
        assert len(listed[subset]) == summary.per_split[subset]


def test_held_out_sentences_never_appear_in_training(corpus) -> None:
    _, archives = corpus
    scripts = archives["KsponSpeech_scripts.zip"]
    train = [raw for _, raw in read_trn(scripts, "train.trn")]
    held_out = [raw for name in ("eval_clean", "eval_other") for _, raw in read_trn(scripts, f"{name}.trn")]
    dev = [raw for path, raw in _all_dev_rows(archives)]
    assert len(set(train + held_out + dev)) == len(train + held_out + dev)


def _all_dev_rows(archives: dict[str, dict[str, bytes]]) -> list[tuple[str, str]]:
    members = archives["KsponSpeech_05.zip"]
    return [
        (name, decode_transcript(data))
        for name, data in members.items()
        if name.endswith(".txt") and int(name.split("/")[1].removeprefix("KsponSpeech_")) >= 621
    ]


def test_large_plans_keep_the_pools_apart() -> None:
    plan = sc.plan_corpus(3000, seed=1)
    bank = set(sc.SENTENCE_BANK)
    pairs = {f"{first} {second}": (first, second) for first in bank for second in bank if first != second}

    def sentences(lines: list[str]) -> set[str]:
        return {part for line in lines for part in ((line,) if line in bank else pairs[line])}

    train = [text for _, text in plan["train"] if text not in (sc.EMPTY_TEXT_CASE, sc.TOO_SHORT_CASE)]
    held_out = [text for split in ("dev", "eval_clean", "eval_other") for _, text in plan[split]]
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert not sentences(train) & sentences(held_out)


def test_skip_cases_are_there_and_nothing_else_is_skippable(corpus) -> None:
    summary, archives = corpus
    assert sorted(summary.must_skip.values()) == ["empty_text", "too_short (0.3 s)"]
    members = {name: data for zipped in archives.values() for name, data in zipped.items()}
    for path in (name for name in members if name.endswith(".pcm")):
        uid = path.split("/")[-1].removesuffix(".pcm")
        seconds = len(members[path]) / 2 / sc.SAMPLE_RATE
        text = normalize_transcript(decode_transcript(members[path.removesuffix(".pcm") + ".txt"]))
        reason = summary.must_skip.get(uid, "")
        assert (text == "") == (reason == "empty_text"), uid
        assert (seconds < 0.5) == reason.startswith("too_short"), (uid, seconds)


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path: Path) -> None:
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        sc.write_corpus(tmp_path / name, num_utterances=40, voice="tone", seed=seed)
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(path.name for path in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    train_trn = "KsponSpeech_scripts.zip"
    assert read_archives(tmp_path / "a")[train_trn] != read_archives(tmp_path / "c")[train_trn]


def test_dir_layout_is_the_zips_extracted(tmp_path: Path) -> None:
    sc.write_corpus(tmp_path / "zip", num_utterances=40, voice="tone", seed=5, layout="zip")
    sc.write_corpus(tmp_path / "dir", num_utterances=40, voice="tone", seed=5, layout="dir")
    zipped = {name: data for members in read_archives(tmp_path / "zip").values() for name, data in members.items()}
    extracted = tmp_path / "dir"
    on_disk = {path.relative_to(extracted).as_posix(): path for path in extracted.rglob("*") if path.is_file()}
    assert sorted(on_disk) == sorted(name for name in zipped if not name.endswith("/"))
    for name, path in on_disk.items():
        assert path.read_bytes() == zipped[name], name


def test_tone_voice_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = sc.write_corpus(tmp_path, num_utterances=500, voice="tone")
    assert time.perf_counter() - start < 15  # about 1 s on 2 busy cores
    assert sum(summary.per_zip.values()) == 500


def test_sentence_bank() -> None:
    bank = sc.SENTENCE_BANK
    assert len(bank) >= 220 and len(set(bank)) == len(bank)
    assert sc.EMPTY_TEXT_CASE not in bank and sc.TOO_SHORT_CASE not in bank
    for raw in bank:
        raw.encode("cp949")
        assert 2 <= len(normalize_transcript(raw).split()) <= 6, raw
        assert normalize_transcript(raw, "phonetic"), raw
    joined = "\n".join(bank)
    for mark in ("b/", "l/", "o/", "n/", "u/", "*", "+ ", ")/(", ")(", "어/", "음/", "똠"):
        assert mark in joined, mark


@pytest.mark.parametrize(
    ("uid", "path"),
    [
        ("KsponSpeech_000001", "KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001"),
        ("KsponSpeech_124000", "KsponSpeech_01/KsponSpeech_0124/KsponSpeech_124000"),
        ("KsponSpeech_124001", "KsponSpeech_02/KsponSpeech_0125/KsponSpeech_124001"),
        ("KsponSpeech_496001", "KsponSpeech_05/KsponSpeech_0497/KsponSpeech_496001"),
        ("KsponSpeech_620001", "KsponSpeech_05/KsponSpeech_0621/KsponSpeech_620001"),
        ("KsponSpeech_623000", "KsponSpeech_05/KsponSpeech_0623/KsponSpeech_623000"),
        ("KsponSpeech_E03000", "KsponSpeech_eval/eval_clean/KsponSpeech_E03000"),
        ("KsponSpeech_E03001", "KsponSpeech_eval/eval_other/KsponSpeech_E03001"),
    ],
)
def test_member_path(uid: str, path: str) -> None:
    assert sc.member_path(uid) == path


@pytest.mark.parametrize("uid", ["KsponSpeech_623001", "KsponSpeech_1", "Kspon_000001", "KsponSpeech_E1"])
def test_member_path_rejects_bad_ids(uid: str) -> None:
    with pytest.raises(ValueError):
        sc.member_path(uid)


def test_low_level_writers_make_bad_corpora(tmp_path: Path) -> None:
    pcm = bytes(16_000)
    utterances = [
        sc.Utterance("KsponSpeech_000001", "똠양꿍 먹자", pcm, crlf=True),
        sc.Utterance("KsponSpeech_000002", "안 보임", pcm, omit_txt=True),
        sc.Utterance("KsponSpeech_000003", "깨진 글자", pcm, txt=b"\xff\xfe\xfa"),
        sc.Utterance("KsponSpeech_E00001", "아/ 네 네", pcm),
    ]
    counts = sc.write_utterances(tmp_path, utterances, eval_root="KsponSpeech_eval_v2")
    assert counts == {"KsponSpeech_01.zip": 3, "KsponSpeech_eval.zip": 1}
    sc.write_scripts(tmp_path, {"train": utterances[:3]})
    archives = read_archives(tmp_path)
    members = archives["KsponSpeech_01.zip"]
    folder = "KsponSpeech_01/KsponSpeech_0001/"
    assert members[folder + "KsponSpeech_000001.txt"] == "똠양꿍 먹자".encode("cp949") + b"\r\n"
    assert folder + "KsponSpeech_000002.txt" not in members and folder + "KsponSpeech_000002.pcm" in members
    assert members[folder + "KsponSpeech_000003.txt"] == b"\xff\xfe\xfa"
    assert "KsponSpeech_eval_v2/eval_clean/KsponSpeech_E00001.pcm" in archives["KsponSpeech_eval.zip"]
    assert read_trn(archives["KsponSpeech_scripts.zip"], "train.trn")[0] == (
        folder + "KsponSpeech_000001.pcm",
        "똠양꿍 먹자",
    )


def test_too_few_utterances_say_how_many(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--num_utterances 12 or more"):
        sc.write_corpus(tmp_path, num_utterances=8, voice="tone")


def test_cli_writes_a_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = sc.main(["--out", str(tmp_path), "--num_utterances", "20", "--voice", "tone", "--seed", "1"])
    assert sum(summary.per_zip.values()) == 20 and (tmp_path / "KsponSpeech_scripts.zip").exists()
    assert "wrote 20 utterances" in capsys.readouterr().out


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_espeak_voice_speaks_the_phonetic_side() -> None:
    pcm = sc.make_pcm("KsponSpeech_000001", "(3)/(세) 시에 만나자", "espeak", seed=0)
    assert pcm == sc.make_pcm("KsponSpeech_000001", "(3)/(세) 시에 만나자", "espeak", seed=0)
    assert len(pcm) % 2 == 0 and 0.7 <= len(pcm) / 2 / sc.SAMPLE_RATE <= 3.0
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 1000  # speech, not silence


@pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason="the committed sample corpus is not there")
def test_committed_sample_corpus() -> None:
    total = sum(path.stat().st_size for path in SAMPLE_DIR.rglob("*") if path.is_file())
    assert total <= 5_000_000
    archives = read_archives(SAMPLE_DIR)
    assert len(archives) == 7
    n_pcm = sum(name.endswith(".pcm") for members in archives.values() for name in members)
    assert 140 <= n_pcm <= 170


@pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason="the committed sample corpus is not there")
def test_generator_still_writes_the_committed_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything but espeak-ng itself: given the committed clips, the sample's command (kspon_dataset/sample/
    README.md) writes the committed archives byte for byte: sentences, ids, transcripts, CRLFs, dev.trn, ZIPs."""
    clips = {
        name.rpartition("/")[2].removesuffix(".pcm"): data
        for members in read_archives(SAMPLE_DIR).values()
        for name, data in members.items()
        if name.endswith(".pcm")
    }
    monkeypatch.setattr(sc, "make_pcm", lambda uid, raw_text, voice, seed: clips[uid])
    sc.main(["--out", str(tmp_path), "--num_utterances", "150", "--voice", "espeak", "--seed", "0"])
    for path in sorted(SAMPLE_DIR.glob("*.zip")):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
