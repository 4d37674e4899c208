"""The data-pipeline benchmark runs end to end on a tiny corpus and reports every number, so it cannot rot."""

from pathlib import Path

import pytest

from benchmarks import data_pipeline
from tests.processes import tagged_environment

TINY = ["--num_utterances", "200", "--passes", "1", "--loader_workers", "1", "--loader_batches", "2"]


@pytest.mark.slow
def test_benchmark_measures_every_phase_and_updates_only_its_section(tmp_path: Path, capsys):
    results_file = tmp_path / "RESULTS.md"
    results_file.write_text("# Benchmarks\n\n## Data pipeline\n\nstale\n\n## Training throughput\n\nkeep me\n")
    workdir = tmp_path / "work"
    argv = [*TINY, "--workdir", str(workdir), "--write_results", "--results_file", str(results_file)]

    with tagged_environment():  # its phases run as child processes: none may outlive the test
        results = data_pipeline.main(argv)

    dataset = results["dataset"]
    stream = dataset["stream"]
    timed_runs = [
        stream["cold"],
        *stream["warm"],
        *dataset["stream_dataloader"]["warm"],
        *(dataset[name] for name in ("prepare_np1", "prepare_np2", "unzip", "inflate")),
        *results["loader"],
    ]
    for run in timed_runs:
        assert run["examples"] > 0 and run["seconds"] > 0, run
    for phase in [*dataset.values(), *results["loader"]]:
        assert phase["rss_tree_mib"] >= phase["rss_self_mib"] > 0, phase
    # Every route sees the same training utterances: streamed, through workers, and prepared with 1 or 2 processes.
    assert stream["cold"]["examples"] == dataset["stream_dataloader"]["warm"][0]["examples"]
    assert dataset["prepare_np1"]["splits"] == dataset["prepare_np2"]["splits"]
    assert dataset["prepare_np1"]["splits"]["train"] == stream["cold"]["examples"]
    modes = {(run["audio_mode"], run["n_mels"]) for run in results["loader"]}
    assert modes == {("features", 80), ("features", 128), ("waveform", 80)}

    printed = capsys.readouterr().out
    for field in ("utt/s per core", "Blog route / prepared route", "samples/s", "Command: `python benchmarks"):
        assert field in printed
    text = results_file.read_text()
    assert "stale" not in text and text.endswith("## Training throughput\n\nkeep me\n")
    assert text.count("## Data pipeline") == 1 and "| streaming, 1 process" in text
    assert not workdir.exists(), "the work dir was not cleaned up"


def test_write_section_creates_appends_and_replaces(tmp_path: Path):
    path = tmp_path / "RESULTS.md"
    data_pipeline.write_section(path, "## Data pipeline\n\nfirst\n")
    assert path.read_text() == "# Benchmarks\n\n## Data pipeline\n\nfirst\n"

    path.write_text("# Benchmarks\n\n## Training throughput\n\nsteps/s\n")
    data_pipeline.write_section(path, "## Data pipeline\n\nsecond\n")
    assert path.read_text() == "# Benchmarks\n\n## Training throughput\n\nsteps/s\n\n## Data pipeline\n\nsecond\n"

    data_pipeline.write_section(path, "## Data pipeline\n\nthird\n")
    assert path.read_text() == "# Benchmarks\n\n## Training throughput\n\nsteps/s\n\n## Data pipeline\n\nthird\n"

    # Other benchmarks share it: a section is found by its own heading, and the others stay as they are.
    data_pipeline.write_section(path, "## Full scale\n\nfourth\n")
    data_pipeline.write_section(path, "## Data pipeline\n\nfifth\n")
    assert path.read_text() == (
        "# Benchmarks\n\n## Training throughput\n\nsteps/s\n\n## Data pipeline\n\nfifth\n\n## Full scale\n\nfourth\n"
    )
