"""The process helper every launching test relies on: a hung tree is killed in seconds, escaped workers included."""

import os
import platform
import struct
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
    assert_killed(child)


def assert_killed(child: subprocess.Popen) -> None:
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        pytest.fail("the block ended and left its child running")
    assert child.returncode == -9


# A child whose execve is still running when the block ends: Popen has returned, but the kernel has not yet written the
# environment that carries the tag. Each of this static x86-64 program's segments has a page zeroed after the point of
# no return (padzero), read from disk when the file is not cached: the gap grows from microseconds to milliseconds.
COLD_SEGMENTS, SEGMENT_SPACING = 4, 16 << 20  # the spacing beats read-ahead (up to 8 MiB), so each page is a disk read


def write_slow_loading_program(path: Path) -> None:
    code = bytes.fromhex("b8220000000f05ebf7")  # mov eax, 34 (pause); syscall; jmp back: sleeps until killed
    segments = [struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 0x1000, 0x1000, 0x1000)]  # PT_LOAD r-x
    for k in range(1, COLD_SEGMENTS + 1):  # PT_LOAD rw-, 16 bytes from the file and a zeroed tail
        segments.append(
            struct.pack("<IIQQQQQQ", 1, 6, k * SEGMENT_SPACING, 0x10000000 + k * 0x100000, 0, 16, 256, 0x1000)
        )
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, 0x400200, 64, 0, 0, 64, 56, len(segments), 64, 0, 0)
    first_page = bytearray(0x1000)
    first_page[: 64 + 56 * len(segments)] = header + b"".join(segments)
    first_page[0x200 : 0x200 + len(code)] = code
    with path.open("wb") as program:
        program.write(first_page)
        for _ in range(COLD_SEGMENTS * SEGMENT_SPACING >> 20):
            program.write(b"\1" * (1 << 20))  # written, not a hole: a hole is read as zeros without touching the disk
        program.flush()
        os.fsync(program.fileno())
        os.posix_fadvise(program.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
    path.chmod(0o755)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the slow-loading program is x86-64 machine code")
def test_a_child_still_inside_execve_when_the_block_ends_dies_too(tmp_path):
    program = tmp_path / "slow-loading"
    write_slow_loading_program(program)
    try:
        with tagged_environment():
            child = subprocess.Popen([program], start_new_session=True)
        assert_killed(child)
    finally:
        program.unlink()  # 64 MiB
