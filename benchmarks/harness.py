"""What every benchmark shares: options, the machine line, a markdown table, the RESULTS.md section writer, and a
benchmark's `phase_<name>(spec: dict) -> dict` run in a fresh Python process with its peak memory (`run_fresh`)."""

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
MIB = 2**20
BY_HAND = "<!-- Written by hand; a new measurement keeps what follows. -->"


def git_commit() -> str:  # `-dirty` when the checkout has uncommitted changes
    command = ["git", "describe", "--always", "--dirty", "--abbrev=7"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False).stdout.strip() or "unknown"


def machine_line(*packages: str, device: str | None = None) -> str:
    """`- Machine: ...`: where and with what a section's numbers were measured; `packages` adds their versions."""
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("torch", "transformers", "datasets", *packages)
    )
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    cpu = cpu[1] if cpu else platform.machine()
    return (
        f"- Machine: {os.cpu_count()} cores ({cpu}), {ram:.1f} GiB RAM{f', {device}' if device else ''}, "
        f"{platform.platform()}; 1-minute load average {os.getloadavg()[0]:.1f} at the end (a shared machine); "
        f"Python {platform.python_version()}, {versions}; commit {git_commit()}."
    )


def section_head(heading: str, script: str, argv: list[str] | None, *packages: str, device: str | None = None) -> str:
    """A section's heading, the command that measured it (`argv` or sys.argv, OMP_NUM_THREADS), the machine line."""
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}python benchmarks/{Path(script).name} {shlex.join(sys.argv[1:] if argv is None else argv)}"
    return f"{heading}\n\n- Command: `{command.strip()}`\n{machine_line(*packages, device=device)}\n"


def arguments(doc: str, section: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's options: its docstring (the runbook) as --help, and --write_results for its RESULTS.md section."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if section:  # a section written by hand has no --write_results
        parser.add_argument("--write_results", action="store_true", help=f"update RESULTS.md's '{section}'")
    return parser


def publish(section: str, write: bool, path: Path = RESULTS) -> None:
    """Print the section, and write it into RESULTS.md (or `path`) when asked (`--write_results`)."""
    print("\n" + section)
    if write:
        write_section(section, path)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def write_section(section: str, path: Path = RESULTS) -> None:
    """Replace the section of RESULTS.md headed by the section's first line (up to the next `## ` heading), or
    append it; the other sections stay as they are, and so does the part of this one after a `BY_HAND` line."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    old = re.search(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE)
    if old is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        if BY_HAND in old[0]:  # what was written by hand (how to read the numbers) stays under the new numbers
            section = section.rstrip("\n") + "\n\n" + old[0][old[0].index(BY_HAND) :].rstrip("\n") + "\n"
        text = text[: old.start()] + section + ("\n" + text[old.end() :] if old.end() < len(text) else "")
    path.write_text(text)


def offline_env(workdir: Path, **extra: str) -> dict[str, str]:
    """This environment, offline, with the datasets caches in `workdir` and the libraries quiet."""
    env = os.environ | dict.fromkeys(["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"], "1")
    env |= {"HF_DATASETS_CACHE": str(workdir / "hf" / "datasets"), "HF_MODULES_CACHE": str(workdir / "hf" / "mods")}
    return env | {
        "DATASETS_VERBOSITY": "error",  # the bad clips of a corpus would log a warning per shard and split
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",  # the tokenizer runs in forked DataLoader workers
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore:'set_vital' is deprecated:UserWarning",  # library noise
        **extra,
    }


def demo_fine_tune(output_dir: Path, *options: str) -> str:
    """The demo's fine-tune (`configs/demo.yaml` on configs/cpu.yaml) with `options` into `output_dir` (its log:
    train.log), unless a run finished there (metrics.json, written last). Returns the command as a user runs it."""
    output_dir = output_dir.resolve()
    shown = output_dir.relative_to(REPO) if output_dir.is_relative_to(REPO) else output_dir
    command = ["--config_file", "configs/cpu.yaml", "train_accelerate.py", "--config", "configs/demo.yaml"]
    command += ["--output_dir", str(shown), *options]
    if not (output_dir / "metrics.json").exists():
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / "train.log").open("w") as log:
            launch = [sys.executable, "-m", "accelerate.commands.launch", *command]
            subprocess.run(launch, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return shlex.join(["accelerate", "launch", *command])


def proc_mib(field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB."""
    return int(re.search(rf"{field}:\s*(\d+)", Path("/proc/self/status").read_text())[1]) / 1024


def run_process(
    command: list[str], *, timeout_s: float | None = None, env: dict | None = None, log: IO | None = None
) -> tuple[int | None, float, float]:
    """(exit code, seconds, peak MiB of the process tree, sampled every 50 ms and summed). Past `timeout_s` the tree
    gets SIGABRT (with PYTHONFAULTHANDLER set, Python prints its stacks), then SIGKILL, and the exit code is None."""
    start, peak = time.perf_counter(), 0
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT if log else None)
    tree = [root := psutil.Process(process.pid)]
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):  # a process may exit between listing and reading: skip the sample
            tree = [root, *root.children(recursive=True)]  # by parent: workers in sessions of their own too
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        if timeout_s is not None and time.perf_counter() - start > timeout_s:
            for signum in (signal.SIGABRT, signal.SIGKILL):
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        p.send_signal(signum)
                time.sleep(2)
            process.wait()
            return None, time.perf_counter() - start, peak / MIB
        time.sleep(0.05)
    return process.returncode, time.perf_counter() - start, peak / MIB


def run_fresh(module: str, phase: str, spec: dict, env: dict | None = None, timeout_s: float | None = None) -> dict:
    """`phase_<phase>(spec)` of benchmarks.<module> in a fresh Python process: its result, with that process's own
    peak RSS (`rss_self_mib`), its tree's (`rss_tree_mib`), the load average before and after, and its wall time."""
    with tempfile.TemporaryDirectory(prefix="benchmark-phase-") as scratch:
        result_path = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "benchmarks.harness", module, phase, json.dumps(spec), str(result_path)]
        load = os.getloadavg()[0]
        code, seconds, tree_peak = run_process(command, timeout_s=timeout_s, env=env)
        if code != 0:
            raise RuntimeError(f"phase {phase} {'ran past its time' if code is None else f'exited {code}'}; see above")
        result = json.loads(result_path.read_text())
    # Sampling can miss a short spike, the kernel's own maximum cannot; summed RSS counts shared pages per process.
    result |= {"rss_tree_mib": max(tree_peak, result["rss_self_mib"]), "wall_s": seconds}
    return result | {"load_avg": [load, os.getloadavg()[0]]}


if __name__ == "__main__":  # run_fresh's phase process
    module, phase, spec, result_path = sys.argv[1:]
    result = getattr(importlib.import_module(f"benchmarks.{module}"), f"phase_{phase}")(json.loads(spec))
    # VmHWM, not getrusage: Linux carries ru_maxrss over exec, so a phase would report the peak of its parent.
    result["rss_self_mib"] = proc_mib("VmHWM")
    Path(result_path).write_text(json.dumps(result))
