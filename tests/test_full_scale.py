"""The full-scale check runs end to end at a small scale, so it cannot rot; its ZIP writer is a real ZIP64 writer."""

import zipfile
from pathlib import Path

import pytest

from benchmarks import full_scale
from kspon_dataset.archives import _zip_members

SMALL = ["--folders", "12", "--per_folder", "40", "--eval_utterances", "60", "--examples_per_rank", "0"]


@pytest.mark.slow
def test_small_scale_run_passes_every_check_and_updates_only_its_section(tmp_path: Path):
    results_file = tmp_path / "RESULTS.md"
    results_file.write_text("# Benchmarks\n\n## Full scale\n\nstale\n\n## Training throughput\n\nkeep me\n")
    argv = [*SMALL, "--workdir", str(tmp_path / "work"), "--write_results", "--results_file", str(results_file)]

    results = full_scale.main(argv)

    checks = results["analysis"]["checks"]
    assert [name for name, ok in checks.items() if not ok] == []
    assert sum("counts match the generator" in name for name in checks) == 13  # 3 schemes, eval splits included
    after, derived = results["after"], results["analysis"]["derived"]
    assert derived["reads_per_kept"] == {1: 1.0, 8: 1.0}
    world_8 = after["loaders"]["world_8"]["ranks"]
    assert len(world_8) == 8 and sum(rank["kept"] for rank in world_8) == after["loaders"]["split"]
    assert after["loaders"]["workers"] == 2  # whole parts are read through workers, as in training
    # 9 training folders at this scale: a batch of 16 cannot reach the full layout's 12 folders, but must spread.
    assert derived["diversity"]["batches"] >= 15 and derived["diversity"]["folders_per_batch"] >= 6
    assert derived["diversity"]["adjacent_share"] < 0.03
    assert all(share > 0 for share in derived["shares"].values())
    assert not after["index_cold"]["memory_mapped"] and after["index_warm"]["memory_mapped"]
    assert after["index_cold"]["utterances"] == 462  # a name stored twice is one record (its copies are counted)
    for label in ("cold", "warm"):
        first = after[f"first_batch_{label}"]
        assert len(first["batch"]) == full_scale.BATCH_SIZE and 0 < first["seconds"] < 120
        assert len(first["workers"]) == full_scale.TRAINER_WORKERS
    validation = after["validation_pass"]
    assert validation["rss"] and validation["line"].startswith("validation: kept ")

    text = results_file.read_text()
    assert "stale" not in text and text.endswith("## Training throughput\n\nkeep me\n")
    assert text.count("## Full scale") == 1
    assert "reads per kept example at world size 8: 1.00\n" in text


def test_zip_writer_writes_zip64_end_records_and_offsets_both_readers_accept(tmp_path: Path):
    path = tmp_path / "many.zip"
    writer = full_scale.ZipWriter(path)
    deflated = full_scale.Deflated()
    count = 70_000  # more than the 65,535 entries a plain end record can count
    for i in range(count):
        data, crc, size = deflated.zeros(320 * (1 + i % 3))
        name = f"KsponSpeech_01/KsponSpeech_0001/KsponSpeech_{i:06d}.pcm"
        writer.add(name, data, crc, size, zip64_offset=i % 2 == 1)
    writer.close()

    tail = path.read_bytes()[-200:]
    assert b"PK\x06\x06" in tail and b"PK\x06\x07" in tail
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert len(infos) == count
        assert archive.read(infos[-1]) == bytes(320 * (1 + (count - 1) % 3))
    members = list(_zip_members(str(path)))
    assert len(members) == count
    assert [offset for _, (offset, *_rest) in members] == [info.header_offset for info in infos]


def test_expected_counts_follow_the_generator(tmp_path: Path):
    manifest = full_scale.write_full_corpus(tmp_path, folders=10, per_folder=20, eval_utterances=8)
    random = full_scale.expected_tallies(manifest, "random")
    assert set(random) == {"train", "validation", "test", "eval_clean", "eval_other"}
    written = sum(manifest["folders"].values())
    assert sum(random[split]["seen"] for split in ("train", "validation", "test")) == written + 3
    drops = len(manifest["too_short"]) + len(manifest["too_long"]) + 3
    assert sum(random[split]["candidates"] for split in ("train", "validation", "test")) == written + 3 - drops
    assert random["eval_clean"] == random["eval_other"] == {"seen": 4, "candidates": 4}
    assert sorted(p.name for p in tmp_path.glob("*.zip")) == [
        *(f"KsponSpeech_0{k}.zip" for k in range(1, 6)),
        "KsponSpeech_eval.zip",
        "KsponSpeech_scripts.zip",
    ]
