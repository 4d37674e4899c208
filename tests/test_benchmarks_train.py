"""The throughput benchmark in CI size (tiny random model, CPU), so it cannot rot."""

import math

import pytest

from benchmarks import train_throughput


@pytest.mark.slow
def test_both_configurations_run_and_report(tmp_path, monkeypatch, offline_whisper_dir):
    monkeypatch.setattr(train_throughput, "RESULTS", tmp_path / "RESULTS.md")
    results = train_throughput.main(
        ["--model", "test", "--batch_size", "4", "--steps", "2", "--warmup", "1", "--window", "1", "--write_results"]
    )
    assert [r.name[0] for r in results] == ["B", "A", "A"]
    assert {r.gradient_checkpointing for r in results if r.name.startswith("A")} == {False, True}
    assert all(r.samples_per_s > 0 and math.isfinite(r.samples_per_s) for r in results)
    written = (tmp_path / "RESULTS.md").read_text()
    assert "## Training throughput" in written and "x configuration B" in written
