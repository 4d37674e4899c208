"""How often does a two-process CPU (gloo) training run fail to exit? The same short training, N times.

python benchmarks/exit_soak.py --runs 20   # ~15 min on 2 cores
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/exit_soak.py`

from benchmarks.harness import arguments, machine_line, offline_env, run_process
from kspon_dataset.sample_corpus import write_corpus
from kspon_whisper.random_whisper import save_random_whisper
from tools.offline_whisper import DEFAULT_OUTPUT_DIR, build_offline_whisper

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
LAUNCH += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
TRAIN = ["--per_device_batch_size", "4", "--num_workers", "0", "--learning_rate", "1e-3", "--warmup_steps", "1"]
TRAIN += ["--gradient_checkpointing", "false", "--log_every", "1", "--eval_every", "0", "--save_every", "0"]
TRAIN += ["--final_eval_splits", "test", "--generation_max_new_tokens", "2", "--report_to", "none"]
DATA_ARGS = {
    "streaming": ["--streaming", "true", "--max_steps", "7"],
    "map-style": ["--streaming", "false", "--num_epochs", "1", "--gradient_accumulation_steps", "2"],
}


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout_s", type=float, default=240.0, help="a run past it hung: SIGABRT (stacks), SIGKILL")
    args = parser.parse_args(argv)
    modes = list(DATA_ARGS)  # in turn
    print(f"{args.runs} two-process runs ({', '.join(modes)})\n{machine_line('accelerate')}", flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="exit-soak-") as work:
        work = Path(work)
        model_dir = save_random_whisper("test", build_offline_whisper(DEFAULT_OUTPUT_DIR), work / "tiny_whisper")
        corpus = work / "tone_corpus"
        write_corpus(corpus, num_utterances=60, voice="tone", seed=0)
        env = offline_env(work, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
        for run in range(args.runs):
            mode, log_path = modes[run % len(modes)], work / f"run{run}.log"
            command = [*LAUNCH, "train_accelerate.py", *DATA_ARGS[mode], *TRAIN, "--model_name_or_path"]
            command += [str(model_dir), "--data_dir", str(corpus), "--output_dir", str(work / f"out{run}")]
            with log_path.open("w") as log:
                code, seconds, _ = run_process(command, timeout_s=args.timeout_s, env=env, log=log)
            outcomes.append("hung" if code is None else f"exit {code}")
            print(f"run {run + 1:2d} ({mode}): {outcomes[-1]} after {seconds:.1f} s", flush=True)
            if outcomes[-1] != "exit 0":
                print(log_path.read_text(errors="replace")[-6000:], flush=True)
    hung, clean = outcomes.count("hung"), outcomes.count("exit 0")
    print(f"summary: {clean} of {args.runs} exited 0 in time, {hung} hung, {args.runs - clean - hung} failed")
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
