"""Two DDP ranks (gloo) when one fails or works alone (tests only): a save that fails on one rank must stop both,
each saying why, and a rank must wait for rank 0 as long as --ddp_timeout says.

    two_rank_faults.py checkpoint RANK ROOT          # RANK cannot write its part of a checkpoint: the disk is full
    two_rank_faults.py final_model train_accelerate.py ARGS...   # rank 0 cannot write the final model
    two_rank_faults.py model_card train_accelerate.py ARGS...    # rank 0 cannot write the model card
    two_rank_faults.py timeout SECONDS               # print the trainer's process-group timeout on each rank

Launched by tests/test_checkpoints.py with `accelerate launch --multi_gpu --num_processes 2` on CPU. Without the
agreement in `kspon_whisper.checkpoints.on_every_rank` and `on_rank_zero`, the rank that failed would exit and the
other would wait at its next collective until torch's elastic agent killed it, without a word of why.
"""

import errno
import os
import runpy
import sys
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's packages, not installed ones

from accelerate import Accelerator

from kspon_whisper import checkpoints, model_card


def checkpoint_fails_on(rank: int, root: Path) -> None:
    accelerator = Accelerator()
    model = torch.nn.Linear(4, 4)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    if accelerator.process_index == rank:

        def full_disk(output_dir: str, **kwargs):
            raise OSError(errno.ENOSPC, f"No space left on device: '{output_dir}/model.safetensors'")

        accelerator.save_state = full_disk
    try:
        checkpoints.save_checkpoint(accelerator, root, checkpoints.LoopState(step=1), total_limit=2)
    except (OSError, RuntimeError) as err:
        print(f"rank {accelerator.process_index} stopped: {err}", flush=True)
    else:
        print(f"rank {accelerator.process_index} saved", flush=True)
    from train_accelerate import end_distributed

    model = weakref.ref(model)  # the last reference, so that end_distributed can free it first
    del optimizer
    end_distributed(accelerator, model)


def rank_0_fails_to_write(what: str, script_and_args: list[str]) -> None:
    """Rank 0's `save_final_model` or `write_model_card` meets a full disk; train_accelerate.py runs as launched."""
    module, function = {
        "final_model": (checkpoints, "save_final_model"),
        "model_card": (model_card, "write_model_card"),
    }[what]

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, f"No space left on device (in {function})")

    if os.environ.get("RANK", "0") == "0":
        setattr(module, function, full_disk)  # before train_accelerate imports it
    sys.argv = script_and_args
    runpy.run_path(script_and_args[0], run_name="__main__")


def timeout_of_the_process_group(seconds: str) -> None:
    import torch.distributed

    from train_accelerate import TrainConfig, make_accelerator

    accelerator = make_accelerator(TrainConfig(data_dir="unused", max_steps=1, ddp_timeout=int(seconds)))
    group = torch.distributed.distributed_c10d._get_default_group()
    timeout = group._get_backend(accelerator.device).options._timeout  # what a waiting rank waits before it aborts
    print(f"rank {accelerator.process_index} waits {timeout.total_seconds():.0f} s", flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    case, *rest = sys.argv[1:]
    if case == "checkpoint":
        checkpoint_fails_on(int(rest[0]), Path(rest[1]))
    elif case == "timeout":
        timeout_of_the_process_group(rest[0])
    else:
        rank_0_fails_to_write(case, rest)
