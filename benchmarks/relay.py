"""Relays cut the server's inbound traffic: a flat federation of 32 clients vs 4 relays x 8.

Both cases run real processes on 127.0.0.1 (``benchmarks/_relay_procs.py``), plain
text, a model of 10M float32 values (40 MB), FedAvg without evaluation, and clients
whose fit returns the weights they received (a round is transport and aggregation):

- flat: the server and one process of 32 client threads connected to it;
- relays: the server, 4 ``fedloom.relaying.relay`` processes, and 4 processes of 8
  client threads, one per relay.

The server counts the bytes of every request message it receives (its `Fleet`'s
counter: joins, beats, task pulls and result frames). Printed per case: the median
round time of rounds 2..R (round 1 warms up) and the bytes the server received in a
round (the median over rounds). The last line is one JSON object:
``relay_bytes_over_flat`` (relay bytes / flat bytes; the goal is at most 1/6),
``flat_round_s``, ``relay_round_s``, ``flat_server_bytes`` and ``relay_server_bytes``.

Run: ``python benchmarks/relay.py [--rounds R] [--params N]``.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HELPER = Path(__file__).resolve().with_name("_relay_procs.py")
CLIENTS = 32
RELAYS = 4


class ChildFailed(RuntimeError):
    """A helper process exited, or did not say what was awaited in time."""


class Child:
    """A helper process whose stdout lines are read by a thread, so every wait has a deadline."""

    def __init__(self, name: str, arguments: list[str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.stderr"
        with open(self.log, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(HELPER), *arguments],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, word: str, deadline: float) -> str:
        """The rest of the next line starting with `word` (skipping others), by `deadline`."""
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise ChildFailed(f"{self.name} printed no {word} line in time") from None
            if line is None:
                code = self.process.wait(timeout=10)
                raise ChildFailed(f"{self.name} exited ({code}) before printing {word}")
            head, _, rest = line.partition(" ")
            if head == word:
                return rest

    def stop(self) -> None:
        """Terminate the process if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_case(relays: int, params: int, rounds: int, timeout_s: float, log_dir: Path) -> dict:
    """One run: 32 clients on the server (relays == 0) or split evenly under `relays` relays."""
    deadline = time.monotonic() + timeout_s
    label = "flat" if relays == 0 else f"relays{relays}"
    peers = CLIENTS if relays == 0 else relays
    children: list[Child] = []

    def remaining() -> str:
        return str(max(1.0, deadline - time.monotonic()))

    try:
        server = Child(
            f"{label}_server",
            ["server", "--rounds", str(rounds), "--clients", str(peers), "--params", str(params)],
            log_dir,
        )
        children.append(server)
        upstream = f"127.0.0.1:{server.expect('PORT', deadline)}"
        groups = [(upstream, CLIENTS)] if relays == 0 else []
        for index in range(relays):
            name = f"relay{index}"
            per_relay = CLIENTS // relays
            child = Child(
                f"{label}_{name}",
                ["relay", "--upstream", upstream, "--name", name, "--clients", str(per_relay)],
                log_dir,
            )
            children.append(child)
            groups.append((f"127.0.0.1:{child.expect('PORT', deadline)}", per_relay))
        for index, (address, count) in enumerate(groups):
            arguments = ["clients", "--address", address, "--clients", str(count)]
            arguments += ["--params", str(params), "--timeout-s", remaining()]
            children.append(Child(f"{label}_clients{index}", arguments, log_dir))
        records = [json.loads(server.expect("ROUND", deadline)) for _ in range(rounds)]
        result = json.loads(server.expect("RESULT", deadline))
        for child in children:
            child.process.wait(timeout=float(remaining()))
    except (ChildFailed, subprocess.TimeoutExpired) as exc:
        for child in children:
            print(f"--- {child.name} stderr (last lines) ---\n{child.tail()}", file=sys.stderr)
        raise ChildFailed(f"case {label}: {exc}") from exc
    finally:
        for child in children:
            child.stop()
    if any(record["failures"] for record in records) or not result["weights_unchanged"]:
        raise ChildFailed(f"case {label} had failures or wrong weights: {records}, {result}")
    durations = [record["duration_s"] for record in records]
    return {
        "label": label,
        "round_s": statistics.median(durations[1:] or durations),
        "server_bytes": int(statistics.median(record["received_bytes"] for record in records)),
        "results_per_round": records[0]["num_results"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--params", type=int, default=10_000_000, help="model size (float32)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="limit per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedloom-relay-bench-") as folder:
        flat = run_case(0, args.params, args.rounds, args.timeout_s, Path(folder))
        tree = run_case(RELAYS, args.params, args.rounds, args.timeout_s, Path(folder))
    raw_mb = args.params * 4 / 1e6
    print(f"model: {args.params:,} float32 values ({raw_mb:.0f} MB); {CLIENTS} clients")
    print(f"{'case':<22}{'results/round':>14}{'s/round':>10}{'server MB received/round':>27}")
    for case, name in ((flat, "flat 32 clients"), (tree, f"{RELAYS} relays x {CLIENTS // RELAYS}")):
        print(
            f"{name:<22}{case['results_per_round']:>14}{case['round_s']:>10.2f}"
            f"{case['server_bytes'] / 1e6:>27.1f}"
        )
    ratio = tree["server_bytes"] / flat["server_bytes"]
    print(f"relay bytes / flat bytes: {ratio:.4f} (goal <= {1 / 6:.4f})")
    print(
        json.dumps(
            {
                "relay_bytes_over_flat": ratio,
                "flat_round_s": flat["round_s"],
                "relay_round_s": tree["round_s"],
                "flat_server_bytes": flat["server_bytes"],
                "relay_server_bytes": tree["server_bytes"],
            }
        )
    )


if __name__ == "__main__":
    main()
