"""The process helper every launching test relies on: a hung tree is killed in seconds, escaped workers included."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import run_command, run_ok, tagged_environment

# A parent that starts a grandchild in its own session, as torch's elastic agent starts workers: a killpg on the
# parent's group cannot reach it. The grandchild writes its pid, then sleeps as a hung worker would.
ESCAPING_PARENT = """
import subprocess, sys, time
grandchild = "import os, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", "import sys\\n" + grandchild, sys.argv[1]], start_new_session=True)
print("started", flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
"""


def escaping_tree(pid_file: Path, parent: str) -> list[str]:
    return [sys.executable, "-c", ESCAPING_PARENT, str(pid_file), parent]


def grandchild_pid(pid_file: Path) -> int:
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the grandchild never started"
        time.sleep(0.05)
    return int(pid_file.read_text())


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a killed orphan may wait a moment for init to reap it


def test_a_hung_tree_is_killed_on_timeout_escaped_grandchild_included(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    start = time.monotonic()
    result = run_command(escaping_tree(pid_file, "hang"), timeout_s=3)
    assert result.timed_out and result.returncode is None
    assert time.monotonic() - start < 15, "the kill took far longer than the timeout"
    pid = grandchild_pid(pid_file)
    assert not is_running(pid), f"the grandchild {pid} in its own session survived the timeout"
    assert "started" in result.stdout
    assert "most recent call first" in result.stderr, "no Python stack was printed before the kill"


def test_a_grandchild_left_running_after_a_clean_exit_is_killed_and_reported(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"exited but left 1 process\(es\) running"):
        run_ok(escaping_tree(pid_file, "exit"), timeout_s=60)
    assert time.monotonic() - start < 15
    pid = grandchild_pid(pid_file)
    assert not is_running(pid), f"the orphaned grandchild {pid} is still running"


def test_run_ok_fails_with_the_log_of_a_hung_command():
    command = [sys.executable, "-c", "import time; print('about to hang', flush=True); time.sleep(600)"]
    with pytest.raises(pytest.fail.Exception, match=r"(?s)hung for 2 s.*about to hang.*most recent call first"):
        run_ok(command, timeout_s=2)


def test_stop_when_kills_the_tree_at_the_matching_line():
    script = "import time\nfor i in range(100):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)"
    result = run_command([sys.executable, "-c", script], timeout_s=30, stop_when=lambda line: line == "line 3")
    assert result.stopped and not result.timed_out and result.returncode is None
    assert "line 3" in result.stdout and "line 99" not in result.stdout


def test_the_environment_is_passed_on():
    command = [sys.executable, "-c", "import os; print(os.environ['SOME_SETTING'])"]
    assert run_ok(command, timeout_s=30, env=dict(os.environ, SOME_SETTING="42")).stdout.strip() == "42"


def test_processes_started_in_a_tagged_environment_die_with_the_block():
    with tagged_environment():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    child.wait(timeout=10)  # raises if the block left it running
    assert child.returncode == -9
