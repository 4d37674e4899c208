"""What the start-up agreement checks (kspon_whisper/agreement.py) cost at KsponSpeech's full size.

    python benchmarks/startup_checks.py --write_results   # writes the full-size corpus first (~5 min), then ~1 min

The corpus is full_scale.py's: 7 ZIPs holding 622,545 utterances in AI Hub's layout, with zero-valued audio.
The check runs as the trainer calls it, on one process (its collectives then cost nothing; across machines they carry
a few hundred bytes per rank), in a fresh process: cold, with the archives' pages dropped from the page cache first
(`posix_fadvise(DONTNEED)`, so the central directories come from the disk), and warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python benchmarks/startup_checks.py`, the repo packages need not be installed

from benchmarks import harness  # noqa: E402
from tools.full_corpus import ensure_corpus  # noqa: E402

SECTION = "## Start-up agreement checks at full scale"
TARGET_S = 2.0


def drop_from_page_cache(folder: Path) -> None:
    for path in folder.glob("*.zip"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def phase_checks(spec: dict) -> dict:
    """Seconds of `check_machines_agree` per repeat, cold then warm, and of the fingerprint alone (warm)."""
    from accelerate import Accelerator

    from kspon_dataset.corpus import corpus_fingerprint
    from kspon_whisper.agreement import check_machines_agree

    corpus, accelerator, times = Path(spec["corpus"]), Accelerator(cpu=True), {"cold": [], "warm": [], "digest": []}
    for label in ["cold"] * spec["repeats"] + ["warm"] * spec["repeats"]:
        if label == "cold":
            drop_from_page_cache(corpus)
        start = time.perf_counter()
        check_machines_agree(accelerator, str(corpus), spec["output_dir"])
        times[label].append(time.perf_counter() - start)
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        fingerprint = corpus_fingerprint(str(corpus))
        times["digest"].append(time.perf_counter() - start)
    return times | {"archives": len(fingerprint), "zip_bytes": sum(size for size, _ in fingerprint.values())}


def format_section(result: dict, info: dict, argv: list[str] | None) -> str:
    members = sum(info["manifest"]["zip_members"].values())
    rows = [
        [label, f"{min(result[key]):.3f}", f"{statistics.median(result[key]):.3f}", f"{max(result[key]):.3f}"]
        for key, label in [
            ("cold", "`check_machines_agree`, archives not in the page cache"),
            ("warm", "`check_machines_agree`, warm"),
            ("digest", "`corpus_fingerprint` alone, warm"),
        ]
    ]
    worst = max(result["cold"] + result["warm"])
    return (
        harness.section_head(SECTION, __file__, argv)
        + f"- Corpus: {result['archives']} archives, {result['zip_bytes'] / 2**20:,.0f} MiB, {members:,} ZIP entries "
        f"(full_scale.py's writer at the real size); {len(result['cold'])} repeats each, in one fresh process.\n\n"
        + harness.markdown_table(["what", "min s", "median s", "max s"], rows)
        + f"\n\nWorst repeat {worst:.2f} s against a target of {TARGET_S:.0f} s: "
        + ("within it.\n" if worst < TARGET_S else "**over it**.\n")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kspon_full_scale")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind")
    parser.add_argument("--write_results", action="store_true", help=f"update the '{SECTION}' section")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    info = ensure_corpus(workdir, folders=623, per_folder=1000, eval_utterances=6000)
    spec = {"corpus": str(workdir / "corpus"), "output_dir": str(workdir / "output"), "repeats": args.repeats}
    result = harness.run_fresh("startup_checks", "checks", spec, harness.offline_env(workdir), timeout_s=600)
    harness.publish(format_section(result, info, argv), args.write_results)
    return 0 if max(result["cold"] + result["warm"]) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
