"""How often does a two-process CPU (gloo) training run fail to exit? The two-process test's command, N times.

    python benchmarks/exit_soak.py --runs 20                      # this checkout
    python benchmarks/exit_soak.py --runs 20 --repo /tmp/old      # another checkout of the project, same command

Each run must exit 0 within --timeout_s; a run past it is counted as a hang, its whole process tree is killed (see
tests/processes.py) and the last lines of its log, with every process's Python stacks at the kill, are printed.
The tiny random Whisper and the 60-utterance tone corpus are built in a temporary folder, as the tests build them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kspon_dataset.sample_corpus import write_corpus  # noqa: E402
from kspon_whisper.random_whisper import save_random_whisper  # noqa: E402
from tests.processes import run_command  # noqa: E402
from tests.test_two_process import DATA_ARGS, ENV, two_process_command  # noqa: E402
from tools.offline_whisper import DEFAULT_OUTPUT_DIR, build_offline_whisper  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout_s", type=float, default=240.0, help="the two-process test's own timeout")
    parser.add_argument("--mode", choices=[*DATA_ARGS, "both"], default="both", help="alternate both by default")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose train_accelerate.py runs")
    args = parser.parse_args(argv)
    modes = list(DATA_ARGS) if args.mode == "both" else [args.mode]
    print(f"{args.runs} runs of tests/test_two_process.py's command in {args.repo} ({', '.join(modes)}); "
          f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")  # fmt: skip
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="exit-soak-") as work:
        work = Path(work)
        model_dir = save_random_whisper("test", build_offline_whisper(DEFAULT_OUTPUT_DIR), work / "tiny_whisper")
        corpus = work / "tone_corpus"
        write_corpus(corpus, num_utterances=60, voice="tone", seed=0)
        for run in range(args.runs):
            mode = modes[run % len(modes)]
            command = two_process_command(model_dir, corpus, work / f"out{run}", DATA_ARGS[mode])
            env = dict(ENV, HF_DATASETS_CACHE=str(work / "datasets"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
            result = run_command(command, timeout_s=args.timeout_s, cwd=args.repo, env=env)
            outcome = "hung" if result.timed_out else f"exit {result.returncode}"
            if result.leftovers:
                outcome += f", {result.leftovers} process(es) left running"
            outcomes.append(outcome)
            print(f"run {run + 1:2d} ({mode}): {outcome} after {result.seconds:.1f} s", flush=True)
            if outcome != "exit 0":
                print(result.log_tail(6000), flush=True)
    hung = outcomes.count("hung")
    clean = outcomes.count("exit 0")
    print(f"summary: {clean} of {args.runs} exited 0 in time, {hung} hung, {args.runs - clean - hung} failed")
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
