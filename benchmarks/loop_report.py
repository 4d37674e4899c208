"""The `## GPU check: the training loop` section of RESULTS.md, from a gpu_check.sh loop run's log and outputs."""

import json
import re
from pathlib import Path

from benchmarks.harness import arguments, machine_line, write_section
from benchmarks.train_throughput import device

HEADING = "## GPU check: the training loop"


def section(loop_dir: Path, log: str, seconds: int, config: str) -> str:
    metrics = json.loads((loop_dir / "metrics.json").read_text())
    # Not anchored at the line's start: `accelerate launch` relays the child's stderr through a thread, so a
    # progress bar's text can land in front of a log line (each line itself is one write, whole).
    steps = re.findall(r"(step \d+ \| loss .*)$", log, flags=re.MULTILINE)
    evals = re.findall(r"(eval \S+ @ step \d+ \|.*)$", log, flags=re.MULTILINE)
    if not steps or not evals:
        raise ValueError(f"no step or eval lines in the loop's log; the run did not complete:\n{log[-3000:]}")
    precision = next(iter(re.findall(r"\| mixed precision (\S+) \|", log)), "unknown")
    block = "\n".join(["```", *steps, *evals, "```"])
    return (
        f"{HEADING}\n\n- `benchmarks/gpu_check.sh`, phase 2: `accelerate launch --config_file {config} "
        f"train_accelerate.py` for 2 steps on the embedded sample corpus (mixed precision {precision}), then the "
        f"final save and evaluation.\n{machine_line(device=device())}\n- Wall time of the launch: {seconds} s (model "
        f"load, 2 steps, checkpoint, save, evaluation).\n\n{block}\n\n- Training: {metrics['train']}; test CER "
        f"{metrics['test']['cer']:.4f} over {metrics['test']['num_scored']} utterances (after 2 steps: this shows "
        "that the loop runs end to end, not what the model is worth)."
    )


def main(argv: list[str] | None = None) -> str:
    parser = arguments(__doc__)
    parser.add_argument("--loop_dir", type=Path, required=True, help="the loop run's --output_dir")
    parser.add_argument("--log", type=Path, required=True, help="its combined stdout/stderr")
    parser.add_argument("--seconds", type=int, required=True, help="wall time of the launch")
    parser.add_argument("--config", required=True, help="the accelerate config it was launched with")
    parser.add_argument("--results", type=Path, required=True, help="the RESULTS.md to update")
    args = parser.parse_args(argv)
    text = section(args.loop_dir, args.log.read_text(), args.seconds, args.config)
    write_section(text + "\n", args.results)
    print(text)
    return text


if __name__ == "__main__":
    main()
