"""Checkpoint save time for a large-v3-sized training state, with the sha256s read behind the writers.

python benchmarks/checkpoint_save.py --scale 8 --write_results   # ~2 min on 2 cores; --scale 1 needs ~40 GB RAM
"""

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/checkpoint_save.py`

from accelerate import Accelerator
from transformers import WhisperForConditionalGeneration

from benchmarks.harness import arguments, markdown_table, publish, section_head
from kspon_whisper.checkpoints import LoopState, complete_checkpoints, first_damaged_file, save_checkpoint
from kspon_whisper.random_whisper import whisper_config

SECTION = "## Checkpoint save: sha256 read behind the writers"


def training_state(scale: int) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer, int]:
    with torch.device("meta"):
        shapes = [p.shape for p in WhisperForConditionalGeneration(whisper_config("large-v3")).parameters()]
    total, kept = sum(s.numel() for s in shapes), []
    while sum(s.numel() for s in kept) < total / scale:
        kept.append(shapes[len(kept)])
    model = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(shape)) for shape in kept)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for p in model.parameters():  # the moments a step would leave, without the step's time and memory
        moments = {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
        optimizer.state[p] = {"step": torch.tensor(1.0), **moments}
    accelerator = Accelerator(cpu=True)
    return accelerator, *accelerator.prepare(model, optimizer), total


WHAT = (
    "`save_checkpoint` (sha256 read behind the writers)",
    "`save_state` alone (torch.save: the write, no digest)",
    "`save_state` alone, the model as safetensors (the format before)",
    "reading the checkpoint back to hash it (verification at resume)",
)


def measure(scale: int, repeats: int, workdir: Path) -> dict:
    accelerator, model, _, total = training_state(scale)
    root, plain = workdir / "checkpoints", workdir / "plain"
    runs = dict(zip(WHAT, [
        lambda: save_checkpoint(accelerator, root, LoopState(step=1), total_limit=1),
        lambda: accelerator.save_state(str(plain), safe_serialization=False),
        lambda: accelerator.save_state(str(plain), safe_serialization=True),
        lambda: first_damaged_file(complete_checkpoints(root)[0]),  # what resume runs
    ], strict=True))  # fmt: skip
    times = {name: [] for name in runs}
    for repeat in range(repeats + 1):  # the first, untimed, pays for lazy imports and first allocations
        writes = list(WHAT[:3])
        random.Random(repeat).shuffle(writes)  # no write always follows another: the page cache's state varies
        for name in [*writes, WHAT[3]]:
            os.sync()  # the previous repeat's dirty pages are written out first, not throttling this one
            start = time.perf_counter()
            runs[name]()
            if repeat:
                times[name].append(time.perf_counter() - start)
            shutil.rmtree(plain, ignore_errors=True)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        shutil.rmtree(root)
    params = sum(p.numel() for p in model.parameters())
    return {"times": times, "params": params, "total": total, "bytes": size, "repeats": repeats}


def format_section(results: dict, argv: list[str] | None) -> str:
    times = results["times"]
    median = {name: statistics.median(values) for name, values in times.items()}
    gb, factor = results["bytes"] / 1e9, results["total"] / results["params"]
    before, after = median[WHAT[2]] + median[WHAT[3]], median[WHAT[0]]
    table = [
        [n, f"{median[n]:.2f}", f"{min(times[n]):.2f}-{max(times[n]):.2f}", f"{gb / median[n]:.2f}"] for n in WHAT
    ]
    return (
        section_head(SECTION, __file__, argv, "safetensors")
        + f"- State: {results['params']:,} of large-v3's {results['total']:,} parameters (1/{factor:.1f}), fp32, "
        f"with AdamW's two moments: {gb:.2f} GB on disk. Median of {results['repeats']} repeats, each after "
        "`os.sync`; the writes go to the page cache.\n\n"
        + markdown_table(["what", "s (median)", "range", "GB/s"], table)
        + f"\n\nBefore (the write as safetensors, then the read-back): {before:.2f} s; now {after:.2f} s "
        f"({after / before:.0%}). At full size (x{factor:.1f}, ~{gb * factor:.0f} GB) the read-back would add "
        f"~{median[WHAT[3]] * factor:.0f} s to every save.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--scale", type=int, default=8, help="the state is 1/scale of large-v3's (1: the whole)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:  # in $TMPDIR
        results = measure(args.scale, args.repeats, Path(workdir))
    publish(format_section(results, argv), args.write_results)


if __name__ == "__main__":
    main()
