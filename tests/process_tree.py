"""Run a launcher and everything it starts, and kill the whole tree if it runs past its time.

torch's elastic agent starts the workers in sessions of their own, so killing the launcher's process group does not
reach them, and a hung worker keeps the pipe open. On timeout every descendant found through /proc is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest


def run_process_tree(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run `command` to the end and return its output; fail the test with the log on timeout or non-zero exit."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        log, _ = process.communicate()
        pytest.fail(f"{command[:6]} ran past {timeout} s and was killed with all its processes:\n{log[-6000:]}")
    if process.returncode != 0:
        pytest.fail(f"{command[:6]} exited with {process.returncode}:\n{log[-8000:]}")
    return log


def kill_tree(root: int) -> None:
    for pid in [*descendants(root), root]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces; the parent pid is the second field after its ")".
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
