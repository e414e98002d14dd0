"""Run a package's entry point as a subprocess: bounded in time, alone in its process group.

The command is an argument list (never a shell line); ``python`` means the
client's own interpreter. Each run gets a new session, so the command and
everything it forks share one process group, and the whole group is killed
when the command ends, fails or overruns its timeout: nothing is left behind.
(A process that deliberately leaves the group with ``setsid`` escapes this;
run clients under a container or cgroup when packages are not trusted.)
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

from fedloom.errors import ConfigError, EntryPointError

__all__ = ["TAIL_LINES", "run_entry_point"]

TAIL_LINES = 50
"""How many of the command's last output lines a failure reports."""

_PYTHON = {"python", "python3"}


def run_entry_point(
    entry_point: str,
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    values: Mapping[str, str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run `command` with its placeholders filled from `values`; return its output's tail.

    Args:
        entry_point: its name, for messages.
        command: the manifest's argument list, e.g. ``("python", "entrypoint.py", "{in}")``.
        cwd: the unpacked package folder.
        values: what each placeholder stands for (``{"in": "/tmp/..", ...}``).
        timeout_s: the most seconds it may run.
        env: extra environment variables for the command.

    Raises:
        EntryPointError: it exited non-zero, was killed by a signal, or ran past
            `timeout_s`; with the last `TAIL_LINES` lines of its output.
    """
    if not timeout_s > 0:
        raise ConfigError(
            f"the timeout of entry point {entry_point!r} must be > 0 s, got {timeout_s!r}.",
            field="timeout_s",
        )
    argv = [_fill(argument, values) for argument in command]
    if argv[0] in _PYTHON:
        argv[0] = sys.executable
    environment = {**os.environ, **(env or {})}
    started = time.monotonic()
    process = subprocess.Popen(  # an argument list, no shell
        argv,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    assert process.stdout is not None
    reader = threading.Thread(target=_drain, args=(process.stdout, tail), daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(process.pid)  # the command's children too, even after it exited
        process.wait()
        reader.join(timeout=5.0)
        process.stdout.close()
    output = "".join(tail)
    if timed_out:
        raise EntryPointError(
            f"entry point {entry_point!r} ran past its timeout of {timeout_s:g} s and was "
            f"killed with its children. Raise the timeout if it needs longer.{_show(output)}",
            entry_point=entry_point,
            returncode=None,
            output_tail=output,
        )
    code = process.returncode
    if code != 0:
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0 and -code in signal.valid_signals()
            else f"exited with code {code}"
        )
        raise EntryPointError(
            f"entry point {entry_point!r} ({' '.join(command)}) {how} after "
            f"{time.monotonic() - started:.1f} s.{_show(output)}",
            entry_point=entry_point,
            returncode=code,
            output_tail=output,
        )
    return output


def _fill(argument: str, values: Mapping[str, str]) -> str:
    for name, value in values.items():
        argument = argument.replace("{" + name + "}", value)
    return argument


def _drain(stream: IO[bytes], tail: collections.deque[str]) -> None:
    for line in iter(stream.readline, b""):
        tail.append(line.decode("utf-8", errors="replace"))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pid, signal.SIGKILL)


def _show(output: str) -> str:
    if not output.strip():
        return " It printed nothing."
    return f" Its last {TAIL_LINES} lines of output:\n{output.rstrip()}"
