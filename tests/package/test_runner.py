"""Entry points run as subprocesses: failures are reported with their output, and nothing is left running."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from fedloom.errors import ConfigError, EntryPointError
from fedloom.package import run_entry_point


def script(tmp_path: Path, body: str) -> tuple[str, ...]:
    (tmp_path / "entry.py").write_text(body)
    return ("python", "entry.py", "{in}")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its reaper does not run)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_success_fills_placeholders_and_uses_this_interpreter(tmp_path):
    command = script(
        tmp_path,
        "import sys, os\nprint(sys.executable)\nprint(sys.argv[1])\nprint(os.environ['EXTRA'])\n",
    )
    output = run_entry_point(
        "train", command, cwd=tmp_path, values={"in": "model.bin"}, timeout_s=30, env={"EXTRA": "e"}
    )
    assert output.splitlines() == [sys.executable, "model.bin", "e"]


def test_nonzero_exit_reports_code_and_last_fifty_lines(tmp_path):
    command = script(tmp_path, "for i in range(80):\n    print('line', i)\nraise SystemExit(3)\n")
    with pytest.raises(EntryPointError, match="exited with code 3") as caught:
        run_entry_point("train", command, cwd=tmp_path, values={"in": "x"}, timeout_s=30)
    lines = caught.value.output_tail.splitlines()
    assert len(lines) == 50
    assert lines[0] == "line 30"
    assert lines[-1] == "line 79"
    assert caught.value.returncode == 3
    assert caught.value.entry_point == "train"
    assert "line 79" in str(caught.value)


def test_segfault_is_reported_by_signal_name(tmp_path):
    command = script(
        tmp_path,
        "import os, signal\nprint('about to crash', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    with pytest.raises(EntryPointError, match="killed by SIGSEGV") as caught:
        run_entry_point("validate", command, cwd=tmp_path, values={"in": "x"}, timeout_s=30)
    assert caught.value.returncode == -signal.SIGSEGV
    assert "about to crash" in caught.value.output_tail


def test_a_hanging_command_and_its_children_are_killed_at_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    command = script(
        tmp_path,
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r}, 'w').write(str(child.pid))\n"
        "print('waiting', flush=True)\n"
        "time.sleep(120)\n",
    )
    started = time.monotonic()
    with pytest.raises(EntryPointError, match="ran past its timeout of 2 s") as caught:
        run_entry_point("train", command, cwd=tmp_path, values={"in": "x"}, timeout_s=2)
    assert time.monotonic() - started < 15
    assert caught.value.returncode is None
    assert "waiting" in caught.value.output_tail
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_children_forked_by_a_finished_command_are_killed(tmp_path):
    pids = tmp_path / "pids"
    command = script(
        tmp_path,
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " stdout=subprocess.DEVNULL)\n"
        f"open({str(pids)!r}, 'w').write(str(child.pid))\n",
    )
    run_entry_point("train", command, cwd=tmp_path, values={"in": "x"}, timeout_s=30)
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_bad_timeout(tmp_path):
    with pytest.raises(ConfigError, match="timeout"):
        run_entry_point("train", ("python", "-c", "0"), cwd=tmp_path, values={}, timeout_s=0)


def test_no_shell_is_involved(tmp_path):
    marker = tmp_path / "pwned"
    command = ("python", "-c", "import sys; print(sys.argv[1])", "{in}")
    output = run_entry_point(
        "train", command, cwd=tmp_path, values={"in": f"x; touch {marker}"}, timeout_s=30
    )
    assert output.strip() == f"x; touch {marker}"
    assert not marker.exists()
    assert os.path.exists(tmp_path)
