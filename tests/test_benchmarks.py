"""benchmarks/: every script still starts (its imports and options, `--help`), and the section writer keeps the rest
of RESULTS.md. What the benchmarks measure is measured by running them (benchmarks/RESULTS.md), not here;
tests/test_gpu_check.py runs gpu_check.sh at toy size."""

import importlib
from pathlib import Path

import pytest

from benchmarks.harness import BY_HAND, write_section

SCRIPTS = sorted(p.stem for p in (Path(__file__).parent.parent / "benchmarks").glob("*.py") if p.stem != "harness")


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_starts_and_explains_its_options(script, capsys):
    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_write_section_creates_appends_replaces_and_keeps_what_was_written_by_hand(tmp_path: Path):
    path = tmp_path / "RESULTS.md"
    write_section("## Data pipeline\n\nfirst\n", path)
    assert path.read_text() == "# Benchmarks\n\n## Data pipeline\n\nfirst\n"

    path.write_text("# Benchmarks\n\n## Training throughput\n\nsteps/s\n")
    write_section("## Data pipeline\n\nsecond\n", path)
    assert path.read_text() == "# Benchmarks\n\n## Training throughput\n\nsteps/s\n\n## Data pipeline\n\nsecond\n"

    # A section is found by its own heading; the others stay as they are, and so does a section's part by hand.
    write_section(f"## Full scale\n\nfourth\n\n{BY_HAND}\n\nHow to read it.\n", path)
    write_section("## Data pipeline\n\nfifth\n", path)
    write_section("## Full scale\n\nsixth\n", path)
    assert path.read_text() == (
        "# Benchmarks\n\n## Training throughput\n\nsteps/s\n\n## Data pipeline\n\nfifth\n\n"
        f"## Full scale\n\nsixth\n\n{BY_HAND}\n\nHow to read it.\n"
    )
    write_section("## Training throughput\n\nsamples/s\n", path)
    assert path.read_text().startswith("# Benchmarks\n\n## Training throughput\n\nsamples/s\n\n## Data pipeline\n")
