"""What the start-up agreement checks (kspon_whisper/agreement.py) cost at KsponSpeech's full size.

    python benchmarks/startup_checks.py --write_results   # writes the full-size corpus first (~5 min), then ~1 min

On tools/full_corpus.py's corpus, as the trainer calls them, on one process (across machines the collectives add a
few hundred bytes per rank), in a fresh process: cold (the archives dropped from the page cache) and warm.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/startup_checks.py`

from benchmarks import harness
from tools.full_corpus import ensure_corpus

SECTION = "## Start-up agreement checks at full scale"
TARGET_S = 2.0
ROWS = {
    "cold": "`check_machines_agree`, archives not in the page cache",
    "warm": "`check_machines_agree`, warm",
    "digest": "`corpus_fingerprint` alone, warm",
}


def phase_checks(spec: dict) -> dict:
    from accelerate import Accelerator

    from kspon_dataset.corpus import corpus_fingerprint
    from kspon_whisper.agreement import check_machines_agree

    corpus, accelerator, times = Path(spec["corpus"]), Accelerator(cpu=True), {key: [] for key in ROWS}
    for label in ["cold"] * spec["repeats"] + ["warm"] * spec["repeats"] + ["digest"] * spec["repeats"]:
        for path in corpus.glob("*.zip") if label == "cold" else ():
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        start = time.perf_counter()
        if label == "digest":
            fingerprint = corpus_fingerprint(str(corpus))
        else:
            check_machines_agree(accelerator, str(corpus), spec["output_dir"])
        times[label].append(time.perf_counter() - start)
    return times | {"archives": len(fingerprint), "zip_bytes": sum(size for size, _ in fingerprint.values())}


def main(argv: list[str] | None = None) -> int:
    parser = harness.arguments(__doc__, SECTION)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kspon_full_scale")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    info = ensure_corpus(workdir)
    spec = {"corpus": str(workdir / "corpus"), "output_dir": str(workdir / "output"), "repeats": args.repeats}
    result = harness.run_fresh("startup_checks", "checks", spec, harness.offline_env(workdir), timeout_s=600)
    rows = [[label, *(f"{f(result[key]):.3f}" for f in (min, statistics.median, max))] for key, label in ROWS.items()]
    worst = max(result["cold"] + result["warm"])
    harness.publish(
        harness.section_head(SECTION, __file__, argv)
        + f"- Corpus: {result['archives']} archives, {result['zip_bytes'] / 2**20:,.0f} MiB, "
        f"{sum(info['manifest']['zip_members'].values()):,} ZIP entries (tools/full_corpus.py's writer at the real "
        f"size); {args.repeats} repeats each, in one fresh process.\n\n"
        + harness.markdown_table(["what", "min s", "median s", "max s"], rows)
        + f"\n\nWorst repeat {worst:.2f} s against a target of {TARGET_S:.0f} s: "
        + ("within it.\n" if worst < TARGET_S else "**over it**.\n"),
        args.write_results,
    )
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
