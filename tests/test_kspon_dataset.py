"""The loading script on generated corpora: splits, streaming = prepared, layouts, and every bad-input class.

Run under datasets 3.6 (script loading, `load_dataset("./kspon_dataset", ...)`) and under datasets 5.x
(`load_kspon`, no script loading): `load` takes whichever path the installed release has, `prepare` always the
documented call. Audio is compared as WAV bytes, so no test here needs torchcodec/FFmpeg; decoding through
datasets, as users do, is tests/test_dataset_decoding.py.
"""

import logging
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import datasets
import pytest

import kspon_dataset.corpus as corpus_module
import kspon_dataset.kspon_dataset as kspon_module
from kspon_dataset import load_kspon
from kspon_dataset.corpus import folder_split, utterance_split
from kspon_dataset.sample_corpus import (
    Utterance,
    member_path,
    tone_pcm,
    write_corpus,
    write_scripts,
    write_utterances,
)

SCRIPT = str(Path(__file__).resolve().parent.parent / "kspon_dataset")
FORBIDDEN = set("/+*()")
SCRIPT_LOADING = int(datasets.__version__.split(".")[0]) < 4
RAW_AUDIO = datasets.Audio(sampling_rate=16_000, decode=False)
PINNED_HELD_OUT = [f"KsponSpeech_{n:04d}" for n in (4, 8, 11, 17, 21, 23, 32, 37)]  # folders 0001-0040


def load(data_dir, config="spelling", **kwargs):
    """As a user of the installed datasets release loads it: the script where script loading exists."""
    if SCRIPT_LOADING:
        data = datasets.load_dataset(SCRIPT, config, data_dir=str(data_dir), trust_remote_code=True, **kwargs)
    else:
        data = load_kspon(str(data_dir), config, **kwargs)
    return {name: raw_audio(split) for name, split in data.items()}


def raw_audio(split):
    """WAV bytes, never decoded: datasets.Audio(decode=False), or the plain {bytes, path} column without torchcodec."""
    return split.cast_column("audio", RAW_AUDIO) if isinstance(split.features["audio"], datasets.Audio) else split


def prepare(data_dir, tmp_path, config="spelling", num_proc=None, **config_kwargs) -> dict:
    """The documented call, `from kspon_dataset import load_kspon`, in a private cache."""
    data = load_kspon(str(data_dir), config, num_proc=num_proc, cache_dir=str(tmp_path / "cache"), **config_kwargs)
    return {name: raw_audio(split) for name, split in data.items()}


def samples(example) -> int:
    return (len(example["audio"]["bytes"]) - 44) // 2  # the script writes plain 44-byte WAV headers


def as_rows(split) -> list[tuple]:
    return [(ex["id"], ex["text"], ex["raw_text"], ex["duration"], ex["audio"]["bytes"]) for ex in split]


def pcm(seconds: float, uid: str = "x") -> bytes:
    data = tone_pcm("소리", uid)
    need = int(seconds * 16_000) * 2
    return (data * (need // max(len(data), 1) + 1))[:need]


def utt(number: int, raw: str = "아/ 오늘 (70%)/(칠 십 퍼센트) 맞아", seconds: float = 1.0, **kwargs) -> Utterance:
    uid = f"KsponSpeech_{number:06d}"
    return Utterance(uid, raw, kwargs.pop("pcm", None) or pcm(seconds, uid), **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Splits and configs


def test_random_scheme_yields_clean_deterministic_splits(tone_corpus):
    data = load(tone_corpus)
    assert set(data) == {"train", "validation", "test", "eval_clean", "eval_other"}
    for name, split in data.items():
        assert split.features["audio"] in (RAW_AUDIO, kspon_module.audio_feature())
        for ex in split:
            assert ex["text"] and not FORBIDDEN & set(ex["text"]), (name, ex["text"])
            assert samples(ex) == round(ex["duration"] * 16_000)
            assert 0.5 <= ex["duration"] <= 30.0
    clean_ids = {int(ex["id"].removeprefix("KsponSpeech_E")) for ex in data["eval_clean"]}
    other_ids = {int(ex["id"].removeprefix("KsponSpeech_E")) for ex in data["eval_other"]}
    assert max(clean_ids) <= 3000 < min(other_ids)
    held_out = {ex["text"] for name in ("validation", "test") for ex in data[name]}
    assert len(data["train"]) > len(data["validation"]) > 0 and len(data["test"]) > 0
    assert not held_out & {ex["text"] for ex in data["train"]}, "a held-out sentence also appears in train"
    folders = {name: {int(ex["id"][-6:]) // 1000 + 1 for ex in data[name]} for name in ("train", "validation", "test")}
    for name, numbers in folders.items():
        assert all(folder_split(f"KsponSpeech_{n:04d}") == name for n in numbers), name


def test_random_utterance_scheme_is_the_blogs_leaky_split(tone_corpus):
    data = load(tone_corpus, split_scheme="random_utterance")
    for name in ("train", "validation", "test"):
        assert all(utterance_split(ex["id"]) == name for ex in data[name])
    folders = [{int(ex["id"][-6:]) // 1000 for ex in data[name]} for name in ("train", "validation", "test")]
    assert folders[0] & (folders[1] | folders[2]), "the per-utterance split no longer shares folders (the leak)"


def test_phonetic_config_takes_the_pronunciation_side(tone_corpus):
    spelling, phonetic = load(tone_corpus)["train"], load(tone_corpus, "phonetic")["train"]
    assert [ex["id"] for ex in spelling] == [ex["id"] for ex in phonetic]
    assert [ex["raw_text"] for ex in spelling] == [ex["raw_text"] for ex in phonetic]
    dual = [(s["text"], p["text"]) for s, p in zip(spelling, phonetic, strict=True) if ")/(" in s["raw_text"]]
    assert dual and all(s != p for s, p in dual)


def test_official_scheme_follows_dev_trn(tone_corpus):
    data = load(tone_corpus, split_scheme="official")
    assert set(data) == {"train", "validation", "eval_clean", "eval_other"}
    with zipfile.ZipFile(tone_corpus / "KsponSpeech_scripts.zip") as scripts:
        dev_listed = {
            line.split(" :: ")[0].rsplit("/", 1)[1][:-4] for line in scripts.read("dev.trn").decode().splitlines()
        }
    validation_ids = {ex["id"] for ex in data["validation"]}
    assert validation_ids == dev_listed
    train_folders = {int(ex["id"][-6:]) // 1000 + 1 for ex in data["train"]}
    assert train_folders and max(train_folders) <= 620


def test_streaming_yields_exactly_the_prepared_examples(tone_corpus):
    for config, scheme in (("spelling", "random"), ("phonetic", "official")):
        prepared = load(tone_corpus, config, split_scheme=scheme)
        streamed = load(tone_corpus, config, split_scheme=scheme, streaming=True)
        assert set(prepared) == set(streamed)
        for name in prepared:
            assert as_rows(streamed[name]) == as_rows(prepared[name]), (config, scheme, name)
        assert streamed["train"].n_shards > 1


def test_dataloader_workers_share_the_streamed_split_without_overlap(tone_corpus):
    """A user's `DataLoader(streamed_split, num_workers=2)`: each worker reads its own shards, so together they yield
    every example once."""
    import torch

    streamed = load(tone_corpus, streaming=True)["train"]
    loader = torch.utils.data.DataLoader(streamed, batch_size=16, num_workers=2, collate_fn=lambda rows: rows)
    ids = [row["id"] for batch in loader for row in batch]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(row["id"] for row in streamed)


def test_num_proc_does_not_change_the_data(tone_corpus, tmp_path):
    one, two = prepare(tone_corpus, tmp_path / "a"), prepare(tone_corpus, tmp_path / "b", num_proc=2)
    for name in one:
        assert sorted(as_rows(one[name])) == sorted(as_rows(two[name])), name


def test_folder_split_is_8_1_1_at_the_real_623_folders_and_stable():
    folders = [f"KsponSpeech_{n:04d}" for n in range(1, 624)]
    first = [folder_split(f) for f in folders]
    assert first == [folder_split(f) for f in reversed(folders)][::-1], "a folder's split depends on other folders"
    share = {k: v / len(folders) for k, v in Counter(first).items()}  # folders hold 1,000 utterances each
    assert share == pytest.approx({"train": 0.8, "validation": 0.1, "test": 0.1}, abs=0.01)
    for block in range(62):  # every block of ten consecutive folders is exactly 8:1:1
        assert Counter(first[10 * block : 10 * block + 10]) == {"train": 8, "validation": 1, "test": 1}
    # Pinned: a change here silently moves folders between train and test for everyone who trained before.
    assert [f for f, s in zip(folders[:40], first[:40], strict=True) if s != "train"] == PINNED_HELD_OUT


def test_utterance_split_hash_is_stable_and_close_to_8_1_1():
    ids = [f"KsponSpeech_{n:06d}" for n in range(1, 20_001)]
    first, again = [utterance_split(i) for i in ids], [utterance_split(i) for i in ids]
    assert first == again
    share = {k: v / len(ids) for k, v in Counter(first).items()}
    assert share["train"] == pytest.approx(0.8, abs=0.015)
    assert share["validation"] == pytest.approx(0.1, abs=0.01)
    assert share["test"] == pytest.approx(0.1, abs=0.01)


# --------------------------------------------------------------------------------------------------------------
# Layouts: ZIPs, extracted folders, a mix


def test_folder_and_mixed_layouts_equal_the_zips(tone_corpus, tmp_path):
    folders = tmp_path / "folders"
    write_corpus(folders, num_utterances=60, voice="tone", seed=0, layout="dir")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for archive in ("KsponSpeech_01.zip", "KsponSpeech_03.zip", "KsponSpeech_eval.zip", "KsponSpeech_scripts.zip"):
        (mixed / archive).write_bytes((tone_corpus / archive).read_bytes())
    for archive in ("KsponSpeech_02", "KsponSpeech_04", "KsponSpeech_05"):
        shutil.copytree(folders / archive, mixed / archive)
    # A half-finished unzip beside its ZIP must not double the data.
    with zipfile.ZipFile(tone_corpus / "KsponSpeech_01.zip") as z:
        z.extractall(mixed)
    reference = load(tone_corpus)
    for data_dir in (folders, mixed):
        data = load(data_dir)
        for name in reference:
            assert sorted(as_rows(data[name])) == sorted(as_rows(reference[name])), (data_dir.name, name)


# --------------------------------------------------------------------------------------------------------------
# Bad input: counted skips, never a crash, never silent


def write_bad_corpus(root: Path) -> dict[str, str]:
    """One utterance per bad-input class, a few good ones, and the reason each bad one must be skipped."""
    good = [utt(n) for n in range(1, 9)]
    bad = {
        utt(9, omit_txt=True): "missing_transcript",
        utt(10, txt=b"\xff\xfe\xfd\x80\x81 \xc8"): "undecodable_transcript",
        utt(11, raw="b/ n/ o/"): "empty_text",
        utt(12, seconds=0.2): "too_short",
        utt(13, seconds=31.0): "too_long",
        utt(14, pcm=b"\x00"): "zero_length",  # one dangling byte: zero samples
    }
    special = [
        utt(15, txt="똠방각하 (SRT)/(에스알티) 탔어".encode()),  # a UTF-8 copy
        utt(16, raw="똠방각하 왔어", crlf=True),  # CP949-only syllable, CRLF ending
        utt(17, pcm=pcm(1.0, "odd") + b"\x01"),  # odd byte count: kept, last byte dropped
        utt(18),  # will get a corrupted CRC
        utt(19),  # will be stored twice
    ]
    write_utterances(root, [*good, *bad, *special])
    write_scripts(root, {"train": [*good, *bad, *special], "dev": []})
    archive = root / "KsponSpeech_01.zip"
    _corrupt_member(archive, member_path(special[3].uid) + ".pcm")
    with zipfile.ZipFile(archive, "a") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr(member_path(special[4].uid) + ".pcm", pcm(7.0, "second copy"))  # zipfile would read this one
    return {u.uid: reason for u, reason in bad.items()} | {special[3].uid: "bad_crc", special[4].uid: "duplicate_id"}


def _corrupt_member(archive: Path, name: str) -> None:
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(name)
    data = bytearray(archive.read_bytes())
    header_len = 30 + int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    header_len += int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    middle = info.header_offset + header_len + info.compress_size // 2
    data[middle] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.fixture
def bad_corpus(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "bad"
    return root, write_bad_corpus(root)


def all_examples(data) -> dict[str, dict]:
    return {ex["id"]: ex for split in data.values() for ex in split}


def test_every_bad_input_class_is_counted_not_fatal(bad_corpus, tmp_path, caplog):
    root, expected = bad_corpus
    with caplog.at_level(logging.WARNING):
        data = prepare(root, tmp_path)
    examples = all_examples(data)
    assert not set(expected) & set(examples) - {"KsponSpeech_000019"}
    assert "KsponSpeech_000019" in examples, "the first copy of a duplicated id is kept"
    summary = "\n".join(r.getMessage() for r in caplog.records if "kept" in r.getMessage())
    totals = Counter()
    for line in summary.splitlines():
        for reason in set(expected.values()):
            if f"{reason}: " in line:
                totals[reason] += int(line.split(f"{reason}: ")[1].split(",")[0].split(")")[0].split(";")[0])
    assert totals == Counter(expected.values()), summary
    kept = sum(int(line.split("kept ")[1].split(" of ")[0]) for line in summary.splitlines())
    assert kept == len(examples) == 19 - len(expected) + 1
    stored_twice = examples["KsponSpeech_000019"]
    assert stored_twice["duration"] == pytest.approx(1.0), "measured on the first copy"
    assert samples(stored_twice) == 16_000, "read from another copy than the one measured"


def test_encodings_and_odd_bytes_are_read_right(bad_corpus, tmp_path):
    root, _ = bad_corpus
    examples = all_examples(prepare(root, tmp_path))
    assert examples["KsponSpeech_000015"]["text"] == "똠방각하 SRT 탔어"
    assert examples["KsponSpeech_000016"]["raw_text"] == "똠방각하 왔어"
    odd = examples["KsponSpeech_000017"]
    assert samples(odd) == 16_000 and odd["duration"] == pytest.approx(1.0)


def test_streaming_skips_the_same_utterances(bad_corpus, tmp_path):
    root, _ = bad_corpus
    prepared = prepare(root, tmp_path)
    streamed = load(root, streaming=True)
    for name in prepared:
        assert as_rows(streamed[name]) == as_rows(prepared[name])


def test_too_much_loss_fails_with_a_clear_message(bad_corpus, tmp_path, monkeypatch):
    root, _ = bad_corpus
    monkeypatch.setattr(corpus_module, "MIN_UTTERANCES_FOR_SKIP_CHECK", 1)
    with pytest.raises(ValueError, match=r"max_skip_ratio=1\.0%.*pass a larger max_skip_ratio"):
        prepare(root, tmp_path / "strict")
    assert prepare(root, tmp_path / "lenient", max_skip_ratio=0.9)["train"].num_rows > 0


# --------------------------------------------------------------------------------------------------------------
# Errors that name the file and the fix


def test_missing_data_dir_says_where_to_download_and_how_to_retry(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)aihub\.or\.kr.*load_dataset\(\"\./kspon_dataset\", \"spelling\""
    ):
        prepare(tmp_path / "nowhere", tmp_path)


def test_truncated_zip_is_named(tone_corpus, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (tone_corpus / "KsponSpeech_02.zip").read_bytes()
    (broken / "KsponSpeech_02.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"KsponSpeech_02\.zip is not a readable ZIP.*download it again"):
        prepare(broken, tmp_path)


def test_split_parts_get_join_instructions(tone_corpus, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    data = (tone_corpus / "KsponSpeech_01.zip").read_bytes()
    (parts / "KsponSpeech_01.zip.part0").write_bytes(data[:1000])
    (parts / "KsponSpeech_01.zip.part1").write_bytes(data[1000:])
    with pytest.raises(FileNotFoundError, match=r"cat \$\(ls .*KsponSpeech_01\.zip\.part\* \| sort -V\) >"):
        prepare(parts, tmp_path)


def test_official_scheme_without_scripts_says_what_is_missing(tone_corpus, tmp_path):
    no_scripts = tmp_path / "no_scripts"
    no_scripts.mkdir()
    (no_scripts / "KsponSpeech_01.zip").write_bytes((tone_corpus / "KsponSpeech_01.zip").read_bytes())
    with pytest.raises(FileNotFoundError, match="KsponSpeech_scripts.zip"):
        prepare(no_scripts, tmp_path, split_scheme="official")


def test_bad_config_values_list_the_valid_ones(tone_corpus, tmp_path):
    with pytest.raises(ValueError, match="random.*random_utterance.*official"):
        prepare(tone_corpus, tmp_path, split_scheme="kaldi")
    with pytest.raises(ValueError, match="min_duration < max_duration"):
        prepare(tone_corpus, tmp_path, min_duration=5.0, max_duration=1.0)


def test_duration_bounds_are_configurable(tone_corpus):
    everything = [d for split in load(tone_corpus).values() for d in split["duration"]]
    floor = sorted(everything)[len(everything) // 2]
    streamed = load(tone_corpus, streaming=True, min_duration=floor)
    kept = [ex["duration"] for split in streamed.values() for ex in split]
    assert kept and min(kept) >= floor
    assert len(kept) == sum(d >= floor for d in everything)


# --------------------------------------------------------------------------------------------------------------
# Nothing lost silently, nothing stale, nothing read from outside


def test_a_missing_archive_is_named_and_its_arrival_is_noticed(tone_corpus, tmp_path, caplog):
    partial = tmp_path / "partial"
    shutil.copytree(tone_corpus, partial)
    (partial / "KsponSpeech_04.zip").rename(partial / "KsponSpeech_04.zip.001")
    with caplog.at_level(logging.WARNING):
        before = prepare(partial, tmp_path)
    warning = next(r.getMessage() for r in caplog.records if "KsponSpeech_04.zip is not in" in r.getMessage())
    assert "folders 0373-0496 are left out" in warning and "KsponSpeech_04.zip.001" in warning
    (partial / "KsponSpeech_04.zip.001").rename(partial / "KsponSpeech_04.zip")
    after = prepare(partial, tmp_path)  # the same cache folder: a stale cache would return `before` again
    assert len(after["train"]) > len(before["train"])
    assert sorted(as_rows(after["train"])) == sorted(as_rows(prepare(tone_corpus, tmp_path / "whole")["train"]))


def test_the_same_id_twice_is_read_once_and_counted_in_every_mode(tmp_path, caplog):
    """A folder repeated in a second archive (one utterance of it new) and an id stored in two folders."""
    root = tmp_path / "twice"
    first = [utt(n) for n in (1, 2, 3)]
    write_utterances(root, first)
    again = [utt(1, seconds=2.0), utt(4)]  # KsponSpeech_000001 again, and a new utterance of the same folder
    members = {f"KsponSpeech_02/{member_path(u.uid).split('/', 1)[1]}.{ext}": data for u in again for ext, data in
               (("pcm", u.pcm), ("txt", u.txt_bytes()))}  # fmt: skip
    with zipfile.ZipFile(root / "KsponSpeech_02.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    expected = {"KsponSpeech_000001", "KsponSpeech_000002", "KsponSpeech_000003", "KsponSpeech_000004"}
    with caplog.at_level(logging.INFO):
        for num_proc in (None, 2):
            ids = [ex["id"] for split in prepare(root, tmp_path / f"np{num_proc}", num_proc=num_proc).values()
                   for ex in split]  # fmt: skip
            assert sorted(ids) == sorted(expected), num_proc
        streamed = [ex["id"] for split in load(root, streaming=True).values() for ex in split]
        assert sorted(streamed) == sorted(expected)
    one = all_examples(prepare(root, tmp_path / "again"))["KsponSpeech_000001"]
    assert one["duration"] == pytest.approx(1.0), "the first archive's copy is the one read"
    assert any("duplicate_id: 1" in r.getMessage() for r in caplog.records)


def test_members_named_with_an_absolute_path_are_left_out_by_name(tmp_path, caplog):
    """`/KsponSpeech_0001/...` sorts before `KsponSpeech_01/KsponSpeech_0001/...`: kept, it would replace the real
    copy of an id. No AI Hub archive has such names, so they are left out, and said to be."""
    root = tmp_path / "absolute"
    write_utterances(root, [utt(n) for n in (1, 2, 3)])
    with zipfile.ZipFile(root / "KsponSpeech_01.zip", "a") as z:
        for u in (utt(1, seconds=2.0), utt(4)):
            path = member_path(u.uid).split("/", 1)[1]
            z.writestr(f"/{path}.pcm", u.pcm)
            z.writestr(f"/{path}.txt", u.txt_bytes())
    with caplog.at_level(logging.WARNING):
        examples = all_examples(prepare(root, tmp_path))
        streamed = sorted(ex["id"] for split in load(root, streaming=True).values() for ex in split)
    assert sorted(examples) == streamed == ["KsponSpeech_000001", "KsponSpeech_000002", "KsponSpeech_000003"]
    assert examples["KsponSpeech_000001"]["duration"] == pytest.approx(1.0), "the absolute-named copy was read"
    warning = next(r.getMessage() for r in caplog.records if "absolute path" in r.getMessage())
    assert "Leaving out 4 member(s)" in warning and "/KsponSpeech_0001/KsponSpeech_000001" in warning


def test_folder_layout_refuses_links_outside_and_skips_what_cannot_be_read(tmp_path, caplog):
    root = tmp_path / "folders"
    write_utterances(root, [utt(n) for n in range(1, 6)], layout="dir")
    folder = root / "KsponSpeech_01" / "KsponSpeech_0001"
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the data_dir", encoding="cp949")
    (folder / "KsponSpeech_000002.txt").unlink()
    (folder / "KsponSpeech_000002.txt").symlink_to(secret)  # a transcript that leads outside
    (folder / "KsponSpeech_000003.pcm").unlink()
    (folder / "KsponSpeech_000003.pcm").symlink_to(tmp_path / "gone.pcm")  # dangling
    (folder / ".DS_Store").symlink_to(folder / ".DS_Store")  # a link loop, not even an utterance
    with caplog.at_level(logging.INFO):
        examples = all_examples(prepare(root, tmp_path))
    assert sorted(examples) == ["KsponSpeech_000001", "KsponSpeech_000004", "KsponSpeech_000005"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "links to" in messages and "outside" in messages and "secret.txt" in messages
    assert "missing_transcript: 1" in messages and "missing_audio: 1" in messages


@pytest.mark.parametrize("streaming", [False, True], ids=["prepared", "streaming"])
def test_a_file_that_cannot_be_read_is_skipped_and_counted(tmp_path, caplog, monkeypatch, streaming):
    root = tmp_path / "folders"
    write_utterances(root, [utt(n) for n in range(1, 4)], layout="dir")
    locked = root / "KsponSpeech_01" / "KsponSpeech_0001" / "KsponSpeech_000002.pcm"
    real_open = open

    def open_as_another_user(file, *args, **kwargs):  # chmod 000 would not stop root, who runs CI
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_as_another_user)
    with caplog.at_level(logging.INFO):
        data = load(root, streaming=True) if streaming else prepare(root, tmp_path)
        ids = sorted(ex["id"] for split in data.values() for ex in split)
    assert ids == ["KsponSpeech_000001", "KsponSpeech_000003"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Skipping KsponSpeech_000002: [Errno 13] Permission denied: '{locked}'" in messages
    if not streaming:  # a stream counts per pass, in the trainer
        assert "unreadable: 1" in messages


def test_an_overlong_transcript_is_counted_without_being_normalised(tmp_path, caplog):
    root = tmp_path / "long"
    nested = "(" * 20_000 + "가" + ")/(나)" * 20_000  # quadratic to resolve; no 30 s clip says this much
    write_utterances(root, [utt(1), utt(2, raw=nested)])
    with caplog.at_level(logging.INFO):
        examples = all_examples(prepare(root, tmp_path))
    assert list(examples) == ["KsponSpeech_000001"]
    assert any("transcript_too_long: 1" in r.getMessage() for r in caplog.records)
