"""The whole federation on this machine in one command: one server and three client processes.

    python examples/keras-multiprocess/run.py [--rounds N] [--samples N] [--run-dir DIR]

What you would type in four terminals (the README gives the commands for several
machines), over gRPC with TLS and one token per client:

1. ``fedloom certs DIR --client client-1 --client client-2 --client client-3``, once:
   a development CA, the server's certificate and ``DIR/tokens.toml``;
2. ``server.py --address 127.0.0.1:0 --certs DIR`` (port 0: the OS picks a free port,
   which the server prints);
3. ``client.py N --server 127.0.0.1:PORT --ca DIR/ca.pem --token-file DIR/tokens.toml``
   for N = 1, 2, 3.

The server's lines are printed as they come; each client's output goes to
``RUN_DIR/client-N.log`` (its tail is printed if it fails). Every wait is bounded
by ``--timeout-s``, and every process is stopped on the way out. The exit status
is 0 when the server and the three clients all succeeded.
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUM_CLIENTS = 3  # task.NUM_CLIENTS, without importing Keras into this launcher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of FedAvg (default 10)")
    parser.add_argument("--samples", type=int, default=5000, help="digits to use (default 5000)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/keras-multiprocess"))
    parser.add_argument("--certs", type=Path, default=Path("runs/keras-multiprocess-certs"))
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="bound on the whole run")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout_s
    names = [f"client-{number}" for number in range(1, NUM_CLIENTS + 1)]
    if not (args.certs / "tokens.toml").exists():
        certs = fedloom("certs", args.certs, *(f"--client={name}" for name in names))
        subprocess.run(certs, check=True, timeout=120, stdout=subprocess.DEVNULL)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    common = ["--samples", args.samples]
    listen = ["--address", "127.0.0.1:0", "--certs", args.certs]
    output = ["--rounds", args.rounds, "--run-dir", args.run_dir]
    server = subprocess.Popen(
        python(HERE / "server.py", *listen, *output, *common),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _echo(server)
    clients: list[subprocess.Popen[bytes]] = []
    logs = [args.run_dir / f"{name}.log" for name in names]
    try:
        address = _listening_address(lines, deadline=min(deadline, time.monotonic() + 120))
        security = ["--ca", args.certs / "ca.pem", "--token-file", args.certs / "tokens.toml"]
        for number, log in enumerate(logs, start=1):
            command = python(HERE / "client.py", number, "--server", address, *security, *common)
            with log.open("wb") as log_file:
                clients.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT))
        status = server.wait(timeout=max(1.0, deadline - time.monotonic()))
        statuses = [client.wait(timeout=60) for client in clients]
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(
            f"stopped every process: {exc}; raise --timeout-s for a longer run"
        ) from None
    finally:
        for process in (*clients, server):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    for log, client_status in zip(logs, statuses, strict=True):
        if client_status != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
            print(f"{log.stem} exited with status {client_status}:", *tail, sep="\n  ")
    return status or max(statuses)


def python(script: Path, *args: object) -> list[str]:
    """`script` run by this Python, with `args` as text."""
    return [sys.executable, str(script), *map(str, args)]


def fedloom(*args: object) -> list[str]:
    """The ``fedloom`` command run by this Python."""
    return [sys.executable, "-m", "fedloom.cli.main", *map(str, args)]


def _echo(server: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Print the server's lines as they come, and queue them (None at the end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            print(line, end="", flush=True)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _listening_address(lines: queue.Queue[str | None], *, deadline: float) -> str:
    """The HOST:PORT of the server's ``listening on HOST:PORT`` line."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise SystemExit("the server exited before it listened (its output is above)")
        if line.startswith("listening on "):
            return line.split()[-1]
    raise SystemExit("the server did not listen in time")


if __name__ == "__main__":
    sys.exit(main())
