"""``fedloom launch --nproc N SCRIPT.py``: run a federation as N local processes of one script.

Rank 0 is the server and ranks 1..N-1 are clients; each process reads its place
with `fedloom.launching.launch_env` (rank, world size, the server's loopback
address on a free port, a generated shared secret). Each runs in its own process
group (session) with stdout and stderr in ``<log-dir>/rank<k>.log``. The launcher
waits until rank 0 exits or any process fails; then it stops the rest (SIGTERM to
each group, SIGKILL after ``--grace-s``), names the rank that failed with the tail
of its log, and exits with that rank's status (0 when all went well). Launched runs
are plain text on loopback, checked by the shared secret only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

from fedloom.cli._options import SubParsers, fail
from fedloom.launching import ADDRESS_VAR, RANK_VAR, TOKEN_VAR, WORLD_SIZE_VAR

__all__ = ["add_parser", "run"]

_POLL_S = 0.05
_TAIL_LINES = 20


@dataclass
class _Rank:
    """One launched process; `stopped` is set when the launcher signalled it."""

    rank: int
    process: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``launch`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "launch",
        help="run a script as N local processes: rank 0 serves, the others are clients",
        description="Start N processes of `python SCRIPT.py [ARGS]` with FEDLOOM_RANK, "
        "FEDLOOM_WORLD_SIZE, FEDLOOM_ADDRESS and FEDLOOM_TOKEN set (read them with "
        "fedloom.launching.launch_env); stop them all when rank 0 ends or one fails.",
    )
    parser.add_argument("--nproc", type=_world_size, required=True, metavar="N", help="N >= 2")
    parser.add_argument(
        "--log-dir", type=Path, metavar="DIR", help="where rank<k>.log go (runs/launch-<time>)"
    )
    parser.add_argument(
        "--grace-s", type=float, default=10.0, metavar="S", help="wait before SIGKILL (10)"
    )
    parser.add_argument("script", type=Path, metavar="SCRIPT.py", help="the script to run")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start the processes, supervise them, stop them, and report.

    Returns:
        The exit status of the first process that failed (128 + signal when a signal
        ended it), 0 when all finished, 2 for bad options, 130 when interrupted.
    """
    if not args.script.is_file():
        return fail(f"no such script: {args.script} (relative to {Path.cwd()})", status=2)
    from fedloom.transport.grpc.security import generate_token

    log_dir = _log_dir(args.log_dir)
    address = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, str(args.script), *args.script_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", ADDRESS_VAR: address, TOKEN_VAR: generate_token()}
    env[WORLD_SIZE_VAR] = str(args.nproc)
    print(f"launching {args.nproc} processes of {args.script} (server on {address})", flush=True)
    ranks: list[_Rank] = []
    try:
        with _sigterm_interrupts():
            for rank in range(args.nproc):
                ranks.append(_start(rank, command, env, log_dir / f"rank{rank}.log"))
                print(
                    f"  rank {rank}: pid {ranks[-1].process.pid}  log {ranks[-1].log}", flush=True
                )
            failed = _supervise(ranks, grace_s=args.grace_s)
    except KeyboardInterrupt:
        _stop(ranks, grace_s=args.grace_s)
        return fail(f"interrupted; stopped every process. Logs are in {log_dir}", status=130)
    _stop(ranks, grace_s=args.grace_s)
    if failed is None:
        print(f"all {args.nproc} processes finished; logs in {log_dir}", flush=True)
        return 0
    return _report_failure(failed)


def _world_size(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected N >= 2 (a server and a client), got {text!r}")
    return value


def _log_dir(chosen: Path | None) -> Path:
    """`chosen`, or a new ``runs/launch-<UTC time>`` folder; created."""
    if chosen is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        chosen, suffix = Path("runs") / f"launch-{stamp}", 1
        while chosen.exists():
            suffix += 1
            chosen = Path("runs") / f"launch-{stamp}-{suffix}"
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def _free_port() -> int:
    """A port free on loopback now (the OS picks it; the server binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _start(rank: int, command: list[str], env: dict[str, str], log: Path) -> _Rank:
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            command,
            env={**env, RANK_VAR: str(rank)},
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    return _Rank(rank=rank, process=process, log=log)


def _supervise(ranks: list[_Rank], *, grace_s: float) -> _Rank | None:
    """Wait for rank 0 to end or any rank to fail; the first rank that failed, or None.

    After rank 0 ends well, the clients get `grace_s` to leave by themselves.
    """
    exits: list[_Rank] = []  # in the order they were seen to end

    def first_failure() -> _Rank | None:
        for entry in ranks:
            if entry not in exits and entry.process.poll() is not None:
                exits.append(entry)
        return next((e for e in exits if e.process.returncode != 0), None)

    while ranks[0].process.poll() is None and first_failure() is None:
        time.sleep(_POLL_S)
    deadline = time.monotonic() + grace_s
    while first_failure() is None and time.monotonic() < deadline:
        if all(entry.process.poll() is not None for entry in ranks):
            break
        time.sleep(_POLL_S)
    return first_failure()


def _stop(ranks: list[_Rank], *, grace_s: float) -> None:
    """SIGTERM every process group, SIGKILL what is left after `grace_s`, reap the processes.

    Groups whose leader already ended are signalled too, so no descendant is left
    behind (a group's id is not reused while any member remains).
    """
    for entry in ranks:
        if entry.process.poll() is None:
            entry.stopped = True
        _signal_group(entry, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(e.process.poll() is None for e in ranks) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    for entry in ranks:
        _signal_group(entry, signal.SIGKILL)
        entry.process.wait()


def _signal_group(entry: _Rank, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(entry.process.pid, signum)


def _report_failure(failed: _Rank) -> int:
    code = failed.process.returncode
    if code < 0:
        how, status = f"was killed by {signal.Signals(-code).name}", 128 - code
    else:
        how, status = f"failed with exit code {code}", code
    tail = _tail(failed.log)
    print(
        f"error: rank {failed.rank} (pid {failed.process.pid}) {how}; stopped the others.\n"
        f"last lines of {failed.log}:\n{tail}",
        file=sys.stderr,
    )
    return status


def _tail(log: Path) -> str:
    try:
        lines = log.read_bytes().decode("utf-8", "replace").splitlines()[-_TAIL_LINES:]
    except OSError as exc:
        return f"    (cannot read it: {exc})"
    return "\n".join(f"    {line}" for line in lines) or "    (empty)"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while supervising, so the launched processes are stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
