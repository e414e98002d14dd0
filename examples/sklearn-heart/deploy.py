"""The heart-disease federation over gRPC with TLS: one server and four hospital processes.

    python examples/sklearn-heart/deploy.py [--rounds N] [--run-dir DIR]

What an operator would type in five terminals, in one command on this machine:

1. ``fedloom certs DIR --client cleveland ...``: a development CA, the server's
   certificate and one token per hospital (kept in DIR, reused next time);
2. ``fedloom server fedloom.toml --address 127.0.0.1:0 --certs DIR --tokens ...``;
3. for each hospital ``fedloom client fedloom.toml --server 127.0.0.1:PORT --name
   NAME --partition-id I --certs DIR --token-file DIR/tokens.toml``.

The server's [stop] rules (early stopping, best-model restore) and [server]
section come from fedloom.toml. Every wait is bounded; all processes are stopped
on the way out. The server's output is printed at the end; it exits with the
server's status.
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
CONFIG = HERE / "fedloom.toml"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va-long-beach")
TIMEOUT_S = 600.0


def fedloom(*args: str | Path) -> list[str]:
    """The ``fedloom`` command run by this Python."""
    return [sys.executable, "-m", "fedloom.cli.main", *map(str, args)]


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the federation over gRPC with TLS.")
    parser.add_argument("--rounds", type=int, help="override [run].rounds")
    parser.add_argument("--run-dir", type=Path, default=Path("runs"), help="parent of run folder")
    parser.add_argument("--certs", type=Path, default=Path("runs/sklearn-heart-certs"))
    args = parser.parse_args()
    if not (args.certs / "tokens.toml").exists():
        clients = [option for name in HOSPITALS for option in ("--client", name)]
        subprocess.run(fedloom("certs", args.certs, *clients), check=True, timeout=120)
    rounds = ["--rounds", str(args.rounds)] if args.rounds else []
    server = subprocess.Popen(
        fedloom("server", CONFIG, "--address", "127.0.0.1:0", "--certs", args.certs,
                "--tokens", args.certs / "tokens.toml", "--run-dir", args.run_dir, *rounds),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    clients: list[subprocess.Popen[bytes]] = []
    try:
        address = _listening_address(lines, deadline=time.monotonic() + 120)
        for index, name in enumerate(HOSPITALS):
            clients.append(
                subprocess.Popen(
                    fedloom(
                        "client",
                        CONFIG,
                        "--server",
                        address,
                        "--name",
                        name,
                        "--partition-id",
                        index,
                        "--certs",
                        args.certs,
                        "--token-file",
                        args.certs / "tokens.toml",
                    ),
                    stdout=subprocess.DEVNULL,
                )
            )
        status = server.wait(timeout=TIMEOUT_S)
        for client in clients:
            client.wait(timeout=60)
    finally:
        for process in (*clients, server):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    time.sleep(0.1)  # let the reader thread take the last lines
    print("".join(output), end="")
    return status


def _listening_address(lines: queue.Queue[str | None], *, deadline: float) -> str:
    """The HOST:PORT of the server's ``listening on HOST:PORT`` line."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise SystemExit("the server exited before it listened")
        if line.startswith("listening on "):
            return line.split()[-1]
    raise SystemExit("the server did not listen within 120 s")


if __name__ == "__main__":
    sys.exit(main())
