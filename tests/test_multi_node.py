"""Two machines simulated on one host: two `accelerate launch` commands, `--num_machines 2 --machine_rank 0|1`, one
gloo process each, meeting at 127.0.0.1, as two nodes of a cluster would (README "Several machines").

A run trains, checkpoints, loses machine 0 to a SIGKILL (machine 1 then stops by itself), resumes with the same
commands plus `--resume_from_checkpoint latest` and ends with the weights of an uninterrupted run; every rank ends
with the same weights and every training id is trained once per epoch across the two machines. The start-up checks
(kspon_whisper/agreement.py) refuse, on both machines, a machine whose corpus copy lacks an archive and an output
folder that is not shared.

The sample's train split keeps 100 utterances: 50 per rank, 13 batches of 4, so 13 steps an epoch. The runs go to
step 16: the kill comes after the checkpoint at step 10, mid-epoch, and the resumed run crosses into epoch 2.
"""

import json
import os
import shutil
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from kspon_dataset import load_kspon
from kspon_dataset.corpus import corpus_fingerprint
from kspon_whisper.agreement import corpus_disagreement
from tests.processes import TWO_CPU_ENV, Finished, run_command

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "kspon_dataset" / "sample"
MAX_STEPS, SAVE_EVERY, KILL_AFTER = 16, 5, "step_00000010"
TIMEOUT_S = 180  # each machine's command; ~20 s normally
REFUSAL_S = 60  # a refused start must end on both machines within this
ENV = dict(TWO_CPU_ENV, PYTHONUNBUFFERED="1")
FSDP_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # tests/fsdp_on_cpu.py picks the CPU itself


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Between the machine's place (rank, address, port) and the script: one gloo CPU process per machine, DDP.
DDP = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "2",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def training_options(model: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--per_device_batch_size", "4", "--num_workers", "0",
        "--learning_rate", "1e-3", "--warmup_steps", "2", "--gradient_checkpointing", "false", "--log_every", "1",
        "--eval_every", "0", "--final_eval_splits", "test", "--generation_max_new_tokens", "2", "--report_to", "none",
        *extra,
    ]  # fmt: skip


def machine_command(machine: int, port: int, launch: list[str], model: Path, data_dir: Path, output_dir: Path, *extra):
    """What one node of a two-node job runs (examples/slurm/train_2x8.sbatch, with 1 or 2 processes instead of 8)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--machine_rank", str(machine),
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *launch,
        "train_accelerate.py", "--data_dir", str(data_dir), "--output_dir", str(output_dir),
        *training_options(model, *extra),
    ]  # fmt: skip


def two_machines(
    model: Path, data_dirs: list[Path], output_dirs: list[Path], *extra: str, kill_after="", launch=DDP, env=ENV
) -> list[Finished]:
    """Run both machines' commands at once; with `kill_after`, SIGKILL machine 0 when it reports that checkpoint."""
    port = free_port()
    extra = ("--max_steps", str(MAX_STEPS), "--save_every", str(SAVE_EVERY), *extra)

    def machine(rank: int) -> Finished:
        def saved(line: str) -> bool:
            return rank == 0 and line.startswith("saved checkpoint") and line.rstrip().endswith(kill_after)

        command = machine_command(rank, port, launch, model, data_dirs[rank], output_dirs[rank], *extra)
        return run_command(command, timeout_s=TIMEOUT_S, env=env, stop_when=saved if kill_after else None)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(machine, [0, 1]))
    for rank, result in enumerate(results):
        if result.timed_out or result.leftovers:
            pytest.fail(f"machine {rank} hung or left processes behind:\n{result.log_tail()}")
    return results


def assert_finished(results: list[Finished]) -> str:
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"machine {rank} exited {result.returncode}:\n{result.log_tail()}"
    return results[0].stdout + results[0].stderr


def records(ids_dir: Path) -> list[dict]:
    return [json.loads((ids_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_two_machines_train_resume_after_a_kill_and_agree(dropout_whisper_dir, tmp_path):
    train_ids = sorted(load_kspon(str(SAMPLE), "spelling", split_scheme="random")["train"]["id"])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert_finished(two_machines(dropout_whisper_dir, [SAMPLE] * 2, [whole] * 2, "--trained_ids_dir", f"{whole}/ids"))
    uninterrupted = records(whole / "ids")
    assert uninterrupted[0]["params_sha256"] == uninterrupted[1]["params_sha256"], "the machines' weights differ"
    first_epoch = [uid for record in uninterrupted for uid in record["ids"]["0"]]
    assert sorted(first_epoch) == train_ids, "an epoch across the two machines is not the training split, once each"
    second_epoch = [uid for record in uninterrupted for uid in record["ids"]["1"]]
    assert len(second_epoch) == len(set(second_epoch)) == 2 * 3 * 4, "the 3 steps of epoch 2 repeat an id"

    killed = two_machines(dropout_whisper_dir, [SAMPLE] * 2, [resumed] * 2, kill_after=KILL_AFTER)
    assert killed[0].stopped, f"machine 0 was not killed after {KILL_AFTER}:\n{killed[0].log_tail()}"
    assert killed[1].returncode not in (0, None), f"machine 1 went on without machine 0:\n{killed[1].log_tail()}"
    assert not (resumed / "model.safetensors").exists()

    extra = ("--trained_ids_dir", f"{resumed}/ids", "--resume_from_checkpoint", "latest")
    log = assert_finished(two_machines(dropout_whisper_dir, [SAMPLE] * 2, [resumed] * 2, *extra))
    assert f"Resumed from {resumed / 'checkpoints' / KILL_AFTER} at step 10" in log
    after_resume = records(resumed / "ids")
    for rank, (whole_record, resumed_record) in enumerate(zip(uninterrupted, after_resume, strict=True)):
        assert resumed_record["params_sha256"] == whole_record["params_sha256"], f"rank {rank}: weights differ"
        whole_ids, resumed_ids = (
            [uid for ids in r["ids"].values() for uid in ids] for r in (whole_record, resumed_record)
        )
        assert resumed_ids and whole_ids[-len(resumed_ids) :] == resumed_ids, f"rank {rank} resumed elsewhere"
    expected, saved = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert [name for name in expected if not torch.equal(expected[name], saved[name])] == []


def assert_refused_on_both(results: list[Finished], *phrases: str) -> None:
    """Both machines exit non-zero within REFUSAL_S, each printing the message with every phrase."""
    for rank, result in enumerate(results):
        log = result.stdout + result.stderr
        assert result.returncode not in (0, None), f"machine {rank} exited {result.returncode}:\n{result.log_tail()}"
        assert result.seconds < REFUSAL_S, f"machine {rank} took {result.seconds:.0f} s to stop"
        assert all(phrase in log for phrase in phrases), f"machine {rank} does not say {phrases}:\n{result.log_tail()}"
        assert "step 1 |" not in log, f"machine {rank} trained before the check:\n{result.log_tail()}"


def test_the_corpus_fingerprint_tells_copies_apart_by_contents_not_by_dates(tmp_path):
    """An identical copy with other modification times agrees; a copy whose ZIP differs in one CRC of its central
    directory (same size) or lacks an archive is named, with what each machine sees."""
    copies = {name: tmp_path / name for name in ("same", "other", "missing")}
    for copy in copies.values():
        shutil.copytree(SAMPLE, copy)
    os.utime(copies["same"] / "KsponSpeech_01.zip", (0, 0))
    altered = bytearray((copies["other"] / "KsponSpeech_02.zip").read_bytes())
    first_entry = int.from_bytes(altered[-6:-2], "little")  # the end record's last field before the comment length
    altered[first_entry + 16] ^= 0xFF  # a byte of the first entry's CRC-32
    (copies["other"] / "KsponSpeech_02.zip").write_bytes(altered)
    (copies["missing"] / "KsponSpeech_05.zip").unlink()

    def view(rank: int, data_dir: Path) -> dict:  # what rank `rank` on machine `rank` gathers
        where = {"host": f"node{rank + 1}", "machine": str(rank), "rank": rank, "data_dir": str(data_dir)}
        return where | {"corpus": corpus_fingerprint(str(data_dir))}

    def views(copy: Path) -> list[dict]:
        return [view(0, SAMPLE), view(1, copy)]

    assert corpus_disagreement(views(copies["same"])) == ""
    other = corpus_disagreement(views(copies["other"])).splitlines()
    assert other[1] == "  KsponSpeech_02.zip:" and other[2].endswith(
        f"--data_dir {SAMPLE} on node1 (machine 0, rank 0)"
    )
    assert other[3].endswith(
        f"(other contents, same size) in --data_dir {copies['other']} on node2 (machine 1, rank 1)"
    )
    missing = corpus_disagreement(views(copies["missing"])).splitlines()
    assert missing[1] == "  KsponSpeech_05.zip:"
    assert missing[3] == f"    missing in --data_dir {copies['missing']} on node2 (machine 1, rank 1)", missing


@pytest.mark.slow
def test_a_machine_missing_an_archive_stops_every_machine(tiny_whisper_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(SAMPLE, copy)
    (copy / "KsponSpeech_05.zip").unlink()
    results = two_machines(tiny_whisper_dir, [SAMPLE, copy], [tmp_path / "out"] * 2)
    assert_refused_on_both(
        results, "do not see the same corpus", f"missing in --data_dir {copy} on", "(machine 1, rank 1)"
    )
    message = results[0].stderr[results[0].stderr.index("do not see the same corpus") :]
    assert message.split("\n", 2)[1].endswith("KsponSpeech_05.zip:"), "the archive that differs is not named first"


@pytest.mark.slow
def test_an_output_dir_that_is_not_shared_stops_every_machine(tiny_whisper_dir, tmp_path):
    own_folders = [tmp_path / "machine0", tmp_path / "machine1"]
    results = two_machines(tiny_whisper_dir, [SAMPLE] * 2, own_folders)
    assert_refused_on_both(results, f"--output_dir {own_folders[0]} is not one folder shared", "(machine 1, rank 1)")


@pytest.mark.slow
def test_hybrid_sharding_over_two_machines_trains_and_resumes_exactly(tiny_whisper_dir, tmp_path):
    """configs/fsdp_hybrid_2x8gpu.yaml at 2 x 2 CPU processes: each machine shards the model over its own processes
    and the machines hold replicas. Through tests/fsdp_on_cpu.py, as in test_fsdp.py: without it accelerate runs an
    FSDP config on the CPU as DDP."""
    config = yaml.safe_load((REPO / "configs" / "fsdp_hybrid_2x8gpu.yaml").read_text())
    config.pop("gpu_ids")
    config.update(num_processes=4, mixed_precision="no", use_cpu=False)
    config["parallelism_config"]["parallelism_config_dp_shard_size"] = 2
    (tmp_path / "hybrid.yaml").write_text(yaml.safe_dump(config))
    launch = ["--config_file", str(tmp_path / "hybrid.yaml"), "tests/fsdp_on_cpu.py"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    steps = ("--max_steps", "3", "--save_every", "2")
    assert_finished(two_machines(tiny_whisper_dir, [SAMPLE] * 2, [whole] * 2, *steps, launch=launch, env=FSDP_ENV))
    shards = FileSystemReader(whole / "checkpoints" / "step_00000002" / "pytorch_model_fsdp_0").read_metadata()
    chunks = {len(tensor.chunks) for tensor in shards.state_dict_metadata.values()}
    assert chunks == {2}, f"tensors saved in {chunks} pieces: 2 (one per process of a machine) is hybrid sharding"

    shutil.copytree(whole / "checkpoints" / "step_00000002", resumed / "checkpoints" / "step_00000002")
    extra = (*steps, "--resume_from_checkpoint", "latest")
    log = assert_finished(
        two_machines(tiny_whisper_dir, [SAMPLE] * 2, [resumed] * 2, *extra, launch=launch, env=FSDP_ENV)
    )
    assert "at step 2" in log
    expected, saved = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert [name for name in expected if not torch.equal(expected[name], saved[name])] == []


FAKE_SLURM = {  # what the sbatch script asks of SLURM, on one host: srun starts its command once per node
    "srun": """#!/bin/bash
while [[ $1 == -* ]]; do shift; done  # as with --kill-on-bad-exit: the first task to fail ends the others
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do SLURM_NODEID=$node "$@" & done
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
    if ! wait -n; then kill $(jobs -p) 2>/dev/null; wait; exit 1; fi
done
""",
    "scontrol": "#!/bin/bash\necho 127.0.0.1; echo 127.0.0.2\n",  # `scontrol show hostnames $SLURM_JOB_NODELIST`
}


@pytest.mark.slow
def test_the_slurm_example_starts_one_launcher_per_machine(tiny_whisper_dir, tmp_path):
    """examples/slurm/train_2x8.sbatch as `sbatch` runs it, with configs/ddp_2x8gpu.yaml scaled to 1 CPU process per
    machine: both machines train together and end with the same weights."""
    for name, text in FAKE_SLURM.items():
        (tmp_path / "bin" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    config = yaml.safe_load((REPO / "configs" / "ddp_2x8gpu.yaml").read_text())
    config.pop("gpu_ids")
    config.update(num_processes=2, mixed_precision="no")
    (tmp_path / "ddp_2x1.yaml").write_text(yaml.safe_dump(config))
    env = ENV | {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "ACCELERATE_CONFIG": str(tmp_path / "ddp_2x1.yaml"),
        "MAIN_PROCESS_PORT": str(free_port()),
        "DATA_DIR": str(SAMPLE),
        "OUTPUT_DIR": str(tmp_path / "out"),
    }
    options = training_options(tiny_whisper_dir, "--max_steps", "2", "--trained_ids_dir", str(tmp_path / "ids"))
    result = run_command(["bash", "examples/slurm/train_2x8.sbatch", *options], timeout_s=TIMEOUT_S, env=env)
    assert result.returncode == 0, result.log_tail()
    ranks = records(tmp_path / "ids")
    assert [len(record["ids"]["0"]) for record in ranks] == [2 * 4, 2 * 4], "not two ranks of 2 steps of 4 each"
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
