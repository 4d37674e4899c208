"""Run a command whose whole process tree is killed on timeout, even processes that left its session.

`accelerate launch` starts torch's elastic agent, which starts each worker with `start_new_session=True`, so a
`killpg` on the launcher never reaches a hung worker, and a reader of the launcher's stdout pipe waits as long as that
worker keeps the pipe open. Here every process of the run carries a tag in its environment, which children inherit
whatever session or parent they end up with (`tagged_environment` does the same for code that starts its own
processes); on timeout each tagged process first gets SIGABRT, which makes Python
(with PYTHONFAULTHANDLER) print every thread's stack into the log, then SIGKILL. Output goes to files, not pipes, so
nothing waits on a descendant's open file descriptor.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Two gloo processes on the CPU: `accelerate launch --cpu --num_processes 2` silently starts one, --multi_gpu with
# ACCELERATE_USE_CPU starts two. Port 0: the OS picks a free one, so concurrent runs never collide.
TWO_CPU_ENV = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
TAG_VARIABLE = "KSPON_TEST_PROCESS_TREE"
POLL_S = 0.1
STACK_DUMP_GRACE_S = 2.0  # time for faulthandler to write the stacks before SIGKILL
LEFTOVER_GRACE_S = 2.0  # time a child may take to exit after the command did, before it counts as left over


@dataclass
class Finished:
    command: list[str]
    returncode: int | None  # None when the run was killed (timeout or stop_when)
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    stopped: bool = False  # stop_when matched a stdout line and the tree was killed there, as a crash would
    leftovers: int = 0  # processes of the tree still alive after the command itself had exited (then killed)

    def log_tail(self, chars: int = 8000) -> str:
        return f"--- stdout ---\n{self.stdout[-chars:]}\n--- stderr ---\n{self.stderr[-chars:]}"


def run_command(
    command: list[str],
    *,
    timeout_s: float,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    stop_when: Callable[[str], bool] | None = None,
) -> Finished:
    """Run `command` to the end, or kill its whole tree after `timeout_s` or on the first stdout line `stop_when`
    accepts; then kill whatever of the tree is still running (an orphaned worker is a bug, and must not outlive us).
    """
    tag = uuid.uuid4().hex
    env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1", **{TAG_VARIABLE: tag})
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="run-command-") as logs:
        stdout_path, stderr_path = Path(logs) / "stdout", Path(logs) / "stderr"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        # Inherited by every process it starts (they take a second to import): the SIGABRT below leaves no core files.
        resource.prlimit(process.pid, resource.RLIMIT_CORE, (0, 0))
        timed_out = stopped = False
        try:
            with stdout_path.open("r", errors="replace") as watched:
                pending = ""
                while process.poll() is None:
                    if stop_when is not None:
                        pending += watched.read()
                        *lines, pending = pending.split("\n")
                        if any(stop_when(line) for line in lines):
                            stopped = True
                            kill_tree(tag, process)
                            break
                    if time.monotonic() - start > timeout_s:
                        timed_out = True
                        kill_tree(tag, process, dump_stacks=True)
                        break
                    time.sleep(POLL_S)
        finally:
            if process.poll() is not None:  # exited by itself: give its children a moment to follow it
                deadline = time.monotonic() + LEFTOVER_GRACE_S
                while tagged_pids(tag) and time.monotonic() < deadline:
                    time.sleep(POLL_S)
            leftovers = kill_tree(tag, process)  # also on KeyboardInterrupt or a test timeout raised in the loop
        process.wait()
        killed = timed_out or stopped
        return Finished(
            command=command,
            returncode=None if killed else process.returncode,
            stdout=stdout_path.read_text(errors="replace"),
            stderr=stderr_path.read_text(errors="replace"),
            seconds=time.monotonic() - start,
            timed_out=timed_out,
            stopped=stopped,
            leftovers=0 if killed else leftovers,
        )


def run_ok(command: list[str], *, timeout_s: float, **kwargs) -> Finished:
    """`run_command`, failing the calling test with the log unless the command exited 0 in time and alone."""
    import pytest  # here, so that helpers outside a test can use `run_command` without pytest installed

    result = run_command(command, timeout_s=timeout_s, **kwargs)
    if result.timed_out:
        pytest.fail(f"{_shown(command)} hung for {timeout_s:.0f} s; stacks at the kill:\n{result.log_tail()}")
    if result.returncode != 0:
        pytest.fail(f"{_shown(command)} exited {result.returncode}:\n{result.log_tail()}")
    if result.leftovers:
        pytest.fail(f"{_shown(command)} exited but left {result.leftovers} process(es) running:\n{result.log_tail()}")
    return result


@contextlib.contextmanager
def tagged_environment() -> Iterator[str]:
    """For code that starts processes itself (a benchmark's phases): every process started in the block carries a
    tag, and whatever of them still runs when the block ends, normally or by a test's time limit, is killed.
    """
    tag, previous = uuid.uuid4().hex, os.environ.get(TAG_VARIABLE)
    os.environ[TAG_VARIABLE] = tag
    try:
        yield tag
    finally:
        if previous is None:
            del os.environ[TAG_VARIABLE]
        else:
            os.environ[TAG_VARIABLE] = previous
        kill_tree(tag, exclude=os.getpid())


def kill_tree(tag: str, root: subprocess.Popen | None = None, dump_stacks: bool = False, exclude: int = 0) -> int:
    """Kill every process carrying `tag` and the root; return how many were alive besides the root."""
    if dump_stacks:
        for pid in tagged_pids(tag) - {exclude}:
            _signal(pid, signal.SIGABRT)
        deadline = time.monotonic() + STACK_DUMP_GRACE_S
        while tagged_pids(tag) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    found = 0
    # A process may fork while we kill, and a child may still be inside execve (any process's: its tag is not
    # readable yet, and it finishes in milliseconds): go round until neither is left.
    for _ in range(50):
        tagged, still_in_execve = _scan(tag)
        pids = tagged - {exclude} - ({root.pid} if root else set())
        if root is not None and root.poll() is None:
            _signal(root.pid, signal.SIGKILL)
        if not pids and not still_in_execve:
            break
        found = max(found, len(pids))
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(POLL_S)
    return found


def tagged_pids(tag: str) -> set[int]:
    """Live (non-zombie) processes whose environment holds our tag; zombies have an empty environ."""
    return _scan(tag)[0]


def _scan(tag: str) -> tuple[set[int], int]:
    """The tagged processes, and how many processes are still inside execve, whose tag cannot be read yet.

    Popen returns once the child's execve is past the point of no return, but the kernel writes the new program's
    environment, which /proc/PID/environ shows, a little later (microseconds; milliseconds on a loaded machine or a
    cold page cache): a scan in between reads an empty environ, and would miss a child started just before the kill.
    """
    marker = f"{TAG_VARIABLE}={tag}".encode()
    pids, still_in_execve = set(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if marker in environ.split(b"\0"):
            pids.add(int(entry.name))
        elif not environ and _inside_execve(entry.path):
            still_in_execve += 1
    return pids, still_in_execve


def _inside_execve(proc_dir: str) -> bool:
    """A process has memory (vsize > 0) but no code address only from execve's switch to the new program's memory
    until its loading ends (fs/binfmt_elf.c sets start_code after writing the environment). Zombies, kernel threads
    and exiting processes have no memory; a process started with an empty environment has its code address.
    """
    try:
        fields = Path(proc_dir, "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    vsize, start_code = int(fields[20]), int(fields[23])  # proc(5)'s fields 23 and 26
    return vsize > 0 and start_code == 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _shown(command: list[str]) -> str:
    shown = [Path(part).name if part == sys.executable else part for part in command]
    return " ".join(shown[:6]) + (" ..." if len(shown) > 6 else "")


def run_output(command: list[str], *, timeout_s: float, **kwargs) -> str:
    """`run_ok`, returning what the command printed (stdout, then stderr)."""
    result = run_ok(command, timeout_s=timeout_s, **kwargs)
    return result.stdout + result.stderr


def two_cpu_processes(mixed_precision: str = "no") -> list[str]:
    """`accelerate launch` for two gloo processes on the CPU (run it with TWO_CPU_ENV); the script and args follow."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "--main_process_port", "0",
    ]  # fmt: skip
