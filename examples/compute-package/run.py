"""The whole compute-package federation on this machine: a server, a relay and N clients.

    python examples/compute-package/run.py [--clients N] [--rounds R] [--dashboard-port P]

What an operator would type in 2 + N terminals, in one command, on 127.0.0.1:

1. ``fedloom certs DIR/certs --client relay-a --client site-0 ...``: a development CA, the
   server's certificate and a token per client (kept, and reused next time);
2. ``fedloom package keygen DIR/signer.pem`` once, then ``fedloom package build
   client -o DIR/package.tar.gz --sign DIR/signer.pem``;
3. ``prepare_data.py``: each client's data file, ``DIR/data/client-I.npz``;
4. ``fedloom server fedloom.toml --package DIR/package.tar.gz --dashboard P ...``;
5. ``fedloom relay fedloom.toml --upstream 127.0.0.1:PORT --name relay-a --forward-package ...``;
6. for each client ``fedloom client --server 127.0.0.1:RELAY_PORT --name site-I
   --package-dir DIR/clients/site-I --trust DIR/signer.pem.pub --data DIR/data/client-I.npz ...``.

Every process's output is shown with its name in front. Every wait is bounded,
and every process is stopped on the way out. It ends with the test accuracy of
the last round, and exits with the server's status.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from prepare_data import prepare

from fedloom.transport.grpc.security import load_tokens

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "fedloom.toml"
RELAY = "relay-a"
OPERATOR = "operator"  # the dashboard's token
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 900.0

Lines = queue.Queue[tuple[str, str | None]]


def fedloom(*args: str | Path) -> list[str]:
    """The ``fedloom`` command run by this Python."""
    return [sys.executable, "-m", "fedloom.cli.main", *map(str, args)]


def main() -> int:
    parser = argparse.ArgumentParser(description="Run server, relay and clients on 127.0.0.1.")
    parser.add_argument("--clients", type=int, default=4, help="clients behind the relay")
    parser.add_argument("--rounds", type=int, help="override [run].rounds (10)")
    parser.add_argument("--train-size", type=int, help="training images in all (default 4000)")
    parser.add_argument("--dir", type=Path, default=Path("runs/compute-package"), help="work dir")
    parser.add_argument("--dashboard-port", type=int, default=8050, help="0: any free port")
    args = parser.parse_args()
    work: Path = args.dir
    names = [f"site-{index}" for index in range(args.clients)]
    certs = make_certs(work / "certs", [RELAY, *names, OPERATOR])
    tokens = certs / "tokens.toml"
    token = load_tokens(tokens).clients[OPERATOR]  # opens the dashboard's page
    signer = work / "signer.pem"
    if not signer.exists():
        subprocess.run(fedloom("package", "keygen", signer), check=True, timeout=120)
    package = work / "package.tar.gz"
    subprocess.run(
        fedloom("package", "build", HERE / "client", "-o", package, "--sign", signer),
        check=True, timeout=120,
    )  # fmt: skip
    data = prepare(work / "data", clients=args.clients, train_size=args.train_size)

    lines: Lines = queue.Queue()
    processes: list[subprocess.Popen[str]] = []
    security = ("--certs", certs, "--tokens", tokens)
    try:
        server = start(processes, lines, "server", fedloom(
            "server", CONFIG, "--address", "127.0.0.1:0", *security, "--package", package,
            "--dashboard", f"127.0.0.1:{args.dashboard_port}", "--run-dir", work / "runs",
            *(("--rounds", str(args.rounds)) if args.rounds else ()),
        ))  # fmt: skip
        server_address = wait_for(lines, "server", "listening on ", token)
        relay_ = start(processes, lines, RELAY, fedloom(
            "relay", CONFIG, "--upstream", server_address, "--name", RELAY,
            "--address", "127.0.0.1:0", "--min-clients", str(args.clients), *security,
            "--upstream-ca", certs / "ca.pem", "--upstream-token-file", tokens,
            "--forward-package",
        ))  # fmt: skip
        relay_address = wait_for(lines, RELAY, "listening on ", token)
        clients = []
        for name, path in zip(names, data, strict=True):
            clients.append(start(processes, lines, name, fedloom(
                "client", "--server", relay_address, "--name", name,
                "--package-dir", work / "clients" / name, "--trust", f"{signer}.pub",
                "--data", path, "--certs", certs, "--token-file", tokens,
            )))  # fmt: skip
        follow(lines, "server", token)
        status = server.wait(timeout=60)
        for process in (relay_, *clients):
            process.wait(timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    drain(lines)
    if status == 0:
        report(work / "runs")
    return status


def make_certs(folder: Path, names: list[str]) -> Path:
    """`folder` with a CA, the server's certificate and a token for each of `names`."""
    tokens = folder / "tokens.toml"
    if tokens.exists() and set(names) <= set(load_tokens(tokens).clients):
        return folder
    again = ("--overwrite",) if (folder / "ca.pem").exists() else ()
    clients = [option for name in names for option in ("--client", name)]
    subprocess.run(
        fedloom("certs", folder, *clients, *again), check=True, timeout=120,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return folder


def start(
    processes: list[subprocess.Popen[str]], lines: Lines, name: str, command: list[str]
) -> subprocess.Popen[str]:
    """Start `command`; a thread puts each line of its output on `lines` as (name, line)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    processes.append(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put((name, line.rstrip("\n")))
        lines.put((name, None))

    threading.Thread(target=pump, daemon=True).start()
    return process


def show(who: str, line: str, token: str) -> None:
    """Print `who`'s `line`; after the dashboard's URL, the URL to open with `token`."""
    print(f"[{who}] {line}", flush=True)
    if line.startswith("dashboard on "):
        print(f"open {line.split()[-1]}#token={token} (its CA: certs/ca.pem)", flush=True)


def wait_for(lines: Lines, name: str, prefix: str, token: str) -> str:
    """Show output until `name` prints a line starting with `prefix`; the rest of that line."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            who, line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            if who == name:
                raise SystemExit(f"{name} exited before it printed {prefix!r}")
            continue
        show(who, line, token)
        if who == name and line.startswith(prefix):
            return line[len(prefix) :].split()[0]
    raise SystemExit(f"{name} did not print {prefix!r} within {START_TIMEOUT_S:g} s")


def follow(lines: Lines, name: str, token: str) -> None:
    """Show output until `name`'s output ends."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            who, line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            if who == name:
                return
            continue
        show(who, line, token)
    raise SystemExit(f"{name} did not end within {RUN_TIMEOUT_S:g} s")


def drain(lines: Lines) -> None:
    """Show the output left (the processes have ended; their pumps end within moments)."""
    time.sleep(0.2)
    while True:
        try:
            who, line = lines.get_nowait()
        except queue.Empty:
            return
        if line is not None:
            print(f"[{who}] {line}", flush=True)


def report(runs: Path) -> None:
    """Print the last round's test accuracy from the newest run's history.json."""
    newest = max(runs.glob("*/history.json"), key=lambda path: path.stat().st_mtime)
    last = json.loads(newest.read_text())["rounds"][-1]
    accuracy = last["metrics"]["evaluate.test_accuracy"]
    print(f"test accuracy after round {last['server_round']}: {accuracy:.4f}")
    print(f"browse it: fedloom dashboard --store {runs} (http://127.0.0.1:8050/)")


if __name__ == "__main__":
    sys.exit(main())
