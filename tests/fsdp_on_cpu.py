"""Run a script under accelerate's FSDP code path with CPU processes (tests only): `fsdp_on_cpu.py script.py ARGS`.

accelerate 1.15 turns `distributed_type: FSDP` on only for accelerators: on a CPU-only host it quietly becomes DDP
(MULTI_CPU), so a CPU run of configs/fsdp_8gpu.yaml would prove nothing. Here the gloo process group is declared as
the multi-device backend and the device is pinned to the CPU, so accelerate takes its real FSDP branch (fully_shard,
sharded save_state/load_state, get_state_dict) on torch's CPU DTensors.
"""

import os
import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"  # read by PartialState before it picks a device


def _gloo_as_multi_device(self, cpu=False, sagemaker_dp=False, backend=None):
    return "gloo", DistributedType.MULTI_GPU


accelerate.state.PartialState._prepare_backend = _gloo_as_multi_device
sys.argv = sys.argv[1:]
script = sys.argv[0]
sys.path[0] = os.path.dirname(os.path.abspath(script))  # what `python script.py` would put there
runpy.run_path(script, run_name="__main__")
