"""The trainer's data order at a realistic layout: decorrelated batches, each rank reading only its own utterances,
exact resume, and the compact index underneath (ZIP64 included).

The corpus is the real layout scaled down: 43 folders of 50 utterances (real ids, so folder 0007 holds
KsponSpeech_006001 ... KsponSpeech_006050), spread over the five training ZIPs. 43 folders do not divide among 8
ranks, which is where sharding by folder reads everything on every rank.
"""

import itertools
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kspon_dataset import KsponSpeech, archives, corpus
from kspon_dataset.sample_corpus import Utterance, write_utterances
from kspon_whisper.data import PassCounter, Split, batches_per_pass, make_dataloader, rank_order, set_epoch

FOLDERS = (1, 7, 60, 124, 125, 130, 200, 248, 249, 300, 372, 373, 400, 496, 497, 550, 600, 620)
FOLDERS += tuple(range(2, 27))  # 43 in all
PER_FOLDER = 50
BATCH = 16


def folder(uid: str) -> int:
    return (int(uid[-6:]) - 1) // 1000 + 1


@pytest.fixture(scope="module")
def scaled_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scaled")
    rng = np.random.default_rng(0)
    utterances = [
        Utterance(f"KsponSpeech_{(f - 1) * 1000 + i:06d}", "음/ 그래 (1)/(일) 번", bytes(2 * int(16_000 * s)))
        for f in FOLDERS
        for i, s in zip(range(1, PER_FOLDER + 1), rng.uniform(0.6, 2.0, PER_FOLDER), strict=True)
    ]
    write_utterances(root, utterances)
    return root


@pytest.fixture(scope="module")
def splits(scaled_corpus) -> dict[str, Split]:
    selections = KsponSpeech(config_name="spelling", data_dir=str(scaled_corpus)).selections()
    return {name: Split(s, s.tally, "spelling") for name, s in selections.items()}


def ids_of(rows: list[dict]) -> list[str]:
    return [row["id"] for row in rows]


def loader(split: Split, *, rank=0, world_size=1, num_workers=0, shuffle=True, seed=0):
    return make_dataloader(
        split,
        ids_of,
        batch_size=BATCH,
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle=shuffle,
    )


def test_the_split_assigns_whole_folders(splits):
    folders = {
        name: {folder(uid) for uid in ids_of(list(loader(s, shuffle=False).dataset))} for name, s in splits.items()
    }
    assert folders["train"] and folders["validation"] and folders["test"]
    assert not folders["train"] & folders["validation"] and not folders["train"] & folders["test"]
    assert not folders["validation"] & folders["test"]
    for name, numbers in folders.items():
        assert {corpus.folder_split(f"KsponSpeech_{n:04d}") for n in numbers} == {name}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_batches_mix_many_folders(splits, num_workers):
    batches = [b for b in loader(splits["train"], num_workers=num_workers) if len(b) == BATCH]
    distinct = np.mean([len({folder(uid) for uid in batch}) for batch in batches])
    numbers = [sorted(int(uid[-6:]) for uid in batch) for batch in batches]
    adjacent = sum(b - a == 1 for batch in numbers for a, b in itertools.pairwise(batch)) / sum(
        len(batch) * (len(batch) - 1) / 2 for batch in numbers
    )
    assert distinct >= 12, f"a batch of {BATCH} holds {distinct:.1f} folders on average"
    assert adjacent < 0.01, f"{adjacent:.1%} of within-batch pairs are consecutive turns"


@pytest.mark.parametrize("world_size", [8, 3])
def test_each_rank_reads_only_its_own_utterances(splits, monkeypatch, world_size):
    reads = Counter()
    real_read = corpus.read_file

    def counting_read(source, folder_path, uid, ext, record):
        reads[uid, ext] += 1
        return real_read(source, folder_path, uid, ext, record)

    monkeypatch.setattr(corpus, "read_file", counting_read)
    split = splits["train"]
    per_rank = [
        [uid for batch in loader(split, rank=r, world_size=world_size) for uid in batch] for r in range(world_size)
    ]
    everything = [uid for ids in per_rank for uid in ids]
    assert len(everything) == len(set(everything)) == len(split), "ranks overlap or miss utterances"
    assert sorted(everything) == sorted(split.data.utterance(i)[2] for i in range(len(split)))
    pcm_reads = sum(n for (_, ext), n in reads.items() if ext == "pcm")
    assert pcm_reads / len(everything) == 1.0, f"reads per kept example at world size {world_size}"
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def test_workers_split_a_rank_without_overlap(splits):
    stream = loader(splits["train"], rank=1, world_size=3).dataset
    parts = [stream.positions(w, 4) for w in range(4)]
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(stream.positions(0, 1))


def test_order_is_a_pure_function_of_seed_epoch_rank_and_world_size():
    same = rank_order(1000, seed=3, epoch=2, rank=1, world_size=4, shuffle=True)
    assert np.array_equal(same, rank_order(1000, seed=3, epoch=2, rank=1, world_size=4, shuffle=True))
    for other in ({"seed": 4, "epoch": 2}, {"seed": 3, "epoch": 3}):
        assert not np.array_equal(same, rank_order(1000, rank=1, world_size=4, shuffle=True, **other))
    assert np.array_equal(rank_order(10, seed=0, epoch=5, rank=1, world_size=4, shuffle=False), [1, 5, 9])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restored_loader_continues_exactly(splits, num_workers):
    whole = loader(splits["train"], num_workers=num_workers)
    set_epoch(whole, 1)
    expected = [uid for batch in whole for uid in batch]

    first = loader(splits["train"], num_workers=num_workers)
    set_epoch(first, 1)
    iterator, seen = iter(first), []
    for _ in range(5):
        seen += next(iterator)
    state = first.state_dict()
    del iterator

    resumed = loader(splits["train"], num_workers=num_workers)
    set_epoch(resumed, 1)
    resumed.load_state_dict(state)
    assert seen + [uid for batch in resumed for uid in batch] == expected
    set_epoch(resumed, 2)  # the next epoch starts from its beginning, in a new order
    next_epoch = [uid for batch in resumed for uid in batch]
    assert sorted(next_epoch) == sorted(expected) and next_epoch != expected


def test_index_is_compact_cached_and_memory_mapped(scaled_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KSPON_INDEX_CACHE", str(tmp_path / "index"))
    archive = str(scaled_corpus / "KsponSpeech_01.zip")
    archives.index_source.cache_clear()
    built = archives.index_source(archive)
    assert built.records.dtype.itemsize == 74  # bytes per utterance: 46 MB for the whole corpus
    assert list((tmp_path / "index").glob("KsponSpeech_01-*.npy")), "the index was not cached"
    archives.index_source.cache_clear()
    again = archives.index_source(archive)
    assert isinstance(again.records, np.memmap), "a later process should map the cached index, not rebuild it"
    assert np.array_equal(again.records, built.records) and again.folders == built.folders
    archives.index_source.cache_clear()


def test_zip64_directories_are_read_like_zipfile_reads_them(tmp_path, monkeypatch):
    """Each real training ZIP is ~14 GB, past 4 GiB offsets: lower zipfile's ZIP64 limit to write one small."""
    path = tmp_path / "KsponSpeech_01.zip"
    members = {f"KsponSpeech_01/KsponSpeech_0001/KsponSpeech_{i:06d}.pcm": bytes(range(256)) * i for i in (1, 2, 3)}
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 300)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        expected = {i.filename: (i.header_offset, i.compress_size, i.file_size, i.CRC) for i in z.infolist()}
    assert path.read_bytes().count(b"PK\x06\x06") == 1, "no ZIP64 end record: the test lost its point"
    parsed = {name: entry[:4] for name, entry in archives._zip_members(str(path))}
    assert parsed == expected
    index = archives._build_index(str(path), archives._zip_members(str(path)))
    for record in index.records:
        uid = archives.uid_string(int(record["uid"]))
        assert (
            corpus.read_file(str(path), index.folders[0], uid, "pcm", record)
            == members[f"{index.folders[0]}/{uid}.pcm"]
        )


def test_a_zip64_end_record_counts_past_65535_entries(tmp_path):
    """A real training ZIP holds ~250,000 entries: the plain end record can only say 65,535, the ZIP64 one the rest."""
    path, count = tmp_path / "KsponSpeech_01.zip", 70_000
    with zipfile.ZipFile(path, "w") as z:
        for i in range(count):
            z.writestr(f"KsponSpeech_01/KsponSpeech_0001/KsponSpeech_{i:06d}.pcm", b"\0\0" * (i % 3))
    assert path.read_bytes()[-12:-10] == b"\xff\xff", "the plain end record counts them all: the test lost its point"
    with zipfile.ZipFile(path) as z:
        expected = [(i.filename, i.header_offset, i.file_size) for i in z.infolist()]
    assert [(name, entry[0], entry[2]) for name, entry in archives._zip_members(str(path))] == expected


def test_each_split_counts_what_the_full_layout_holds(tmp_path):
    """The real layout scaled down (tools/full_corpus.py: five training ZIPs, ZIP64 offsets in each one's second half,
    clips under 0.5 s and over 30 s, names stored twice): every split's tally is what was written, under both random
    schemes (benchmarks/full_scale.py measures the full size)."""
    from tools.full_corpus import write_full_corpus

    written = write_full_corpus(tmp_path, folders=10, per_folder=30, eval_utterances=20)
    short, long, twice = set(written["too_short"]), set(written["too_long"]), {int(u) for u in written["duplicated"]}
    for scheme, split_of in (
        ("random", lambda folder, uid: corpus.folder_split(folder)),
        ("random_utterance", lambda folder, uid: corpus.utterance_split(corpus.uid_string(uid))),
    ):
        expected = {split: Counter(seen=n, candidates=n) for split, n in written["eval"].items()}
        for folder, n in written["folders"].items():
            for uid in range((int(folder[-4:]) - 1) * 1000 + 1, (int(folder[-4:]) - 1) * 1000 + n + 1):
                reason = "too_short" if uid in short else "too_long" if uid in long else "candidates"
                counts = {"seen": 1 + (uid in twice), "duplicate_id": int(uid in twice), reason: 1}
                expected.setdefault(split_of(folder, uid), Counter()).update(counts)
        selections = KsponSpeech(config_name="spelling", data_dir=str(tmp_path), split_scheme=scheme).selections()
        assert {name: +Counter(s.tally) for name, s in selections.items()} == {k: +c for k, c in expected.items()}
    assert short and long and twice, "the layout lost its odd clips: the test lost its point"
    first_copies = {corpus.uid_string(int(u)): round(s * 100) / 100 for u, (s, _) in written["duplicated"].items()}
    examples = [corpus.read_utterance(s, i, "spelling")[0] for s in selections.values() for i in range(len(s))]
    read = {ex["id"]: ex["duration"] for ex in examples if ex and ex["id"] in first_copies}
    assert read == first_copies, "a name stored twice is read from its first copy, not its 4 s longer second one"


def test_a_lying_size_is_caught_without_inflating_the_whole_member(tmp_path):
    """A member that declares 1,000 bytes but inflates to 50 MB: read at most what it declared, plus one byte."""
    path = tmp_path / "KsponSpeech_01.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001.pcm", bytes(50_000_000))
    index = archives._build_index(str(path), archives._zip_members(str(path)))
    record = index.records[0].copy()
    record["pcm_size"] = 1000
    tracemalloc.start()
    with pytest.raises(archives.CorruptMember, match="size mismatch"):
        corpus.read_file(str(path), index.folders[0], "KsponSpeech_000001", "pcm", record)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000, f"{peak:,} bytes allocated to reject a 1,000-byte member"


class OneProcess:
    """The part of an Accelerator that PassCounter uses, for one process."""

    device = "cpu"

    @staticmethod
    def reduce(tensor, reduction="sum"):
        return tensor


def test_a_streamed_pass_says_what_it_kept(splits, scaled_corpus):
    split = splits["validation"]
    counter = PassCounter(split)
    batcher_rows = []
    for batch in counter.counted(
        {"id": ids, "num_labels_too_long": 0, "skipped": Counter()} for ids in loader(split, shuffle=False)
    ):
        batcher_rows += batch["id"]
    line, total = counter.line("validation", OneProcess())
    assert total["kept"] == len(batcher_rows) == len(split)
    assert line == f"validation: kept {len(split)} of {total['seen']} utterances (none skipped)"
    assert counter.counts == Counter(), "the counter must start the next pass from zero"


def test_large_archives_are_indexed_in_child_processes(scaled_corpus, tmp_path, monkeypatch):
    """At full size the five ZIPs are indexed in parallel, in children, and this process only maps the results."""
    monkeypatch.setenv("KSPON_INDEX_CACHE", str(tmp_path / "index"))
    monkeypatch.setattr(archives, "INDEX_IN_CHILDREN_BYTES", 0)
    sources = [str(p) for p in sorted(scaled_corpus.glob("KsponSpeech_0*.zip"))]
    built_here = []
    monkeypatch.setattr(archives, "_build_index", lambda *args: built_here.append(args) or None)  # not in this process
    archives.build_indexes(sources)
    assert not built_here and len(list((tmp_path / "index").glob("*.npy"))) == len(sources)
    archives.index_source.cache_clear()
    assert all(isinstance(archives.index_source(s).records, np.memmap) for s in sources)
    archives.index_source.cache_clear()


@pytest.mark.parametrize(("world_size", "num_workers", "batch_size"), [(1, 0, 16), (3, 2, 16), (8, 3, 5), (2, 4, 7)])
def test_the_batches_of_a_streamed_pass_are_known_before_reading(splits, world_size, num_workers, batch_size):
    """--num_epochs on streaming data: a pass's length comes from the index, and is exactly what the loader yields."""
    for rank in {0, world_size - 1}:
        stream = make_dataloader(
            splits["train"], ids_of, batch_size=batch_size, num_workers=num_workers, rank=rank,
            world_size=world_size, seed=0, shuffle=True,
        )  # fmt: skip
        assert batches_per_pass(stream) == sum(1 for _ in stream)
