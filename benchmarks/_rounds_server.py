"""The processes of ``benchmarks/rounds.py``: a fedloom server, or K clients in threads of one.

``python benchmarks/_rounds_server.py server --rounds R --clients K --params N`` runs
`fedloom.serve` on 127.0.0.1 (an OS-assigned port, plain text, no tokens) with a global
model of N float32 zeros, FedAvg without evaluation. It prints one line per event on
stdout, flushed: ``BASELINE <kib>`` (its RSS before the model exists), ``MODEL <kib>``
(its RSS once the model exists), ``PORT <n>`` once listening, ``ROUND <json>`` after
each round (its duration, CPU seconds and peak RSS), and ``RESULT <json>`` at the end.
A round's peak RSS is measured twice: the kernel's high-water mark (``VmHWM``), reset
as the round starts through ``/proc/self/clear_refs``, and the largest ``VmRSS`` that
a thread sampling every 10 ms saw during the round.

``python benchmarks/_rounds_server.py clients --address HOST:PORT --clients K --params N``
connects K clients named ``c0`` ... from threads of one process; they share one
`FunctionClient` whose fit returns the weights it received unchanged (the same
`Weights` object, so its result is sent from a view of the received buffer, no copy).
Once every client has left it prints ``DONE <json>``: the tasks each client ran, and
the CPU seconds the process spent after building its client.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

import numpy as np

import fedloom
from fedloom.client import FunctionClient
from fedloom.server import Callback, RoundRecord
from fedloom.transport.grpc.client import Backoff

_print_lock = threading.Lock()


def say(line: str) -> None:
    """One event line on stdout, whole and flushed (gRPC threads run alongside)."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux.")


def reset_high_water_mark() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class RssSampler:
    """A daemon thread that reads ``VmRSS`` every `interval_s` and keeps the window's maximum."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def window(self) -> int:
        """The largest RSS seen since the previous call (KiB); starts a new window."""
        current = status_kib("VmRSS")
        with self._lock:
            peak, self._peak_kib = max(self._peak_kib, current), current
        return peak

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            current = status_kib("VmRSS")
            with self._lock:
                self._peak_kib = max(self._peak_kib, current)


class RoundProbe(Callback):
    """Resets the memory peaks as a round starts, and prints the round as it ends."""

    def __init__(self, sampler: RssSampler) -> None:
        self._sampler = sampler
        self.can_reset = True
        self.hwm_before_rounds_kib: int | None = None
        self.rounds: list[dict[str, object]] = []
        self._cpu_started_s = 0.0

    def on_round_start(self, server_round: int) -> None:
        if self.hwm_before_rounds_kib is None:
            self.hwm_before_rounds_kib = status_kib("VmHWM")
        self.can_reset = reset_high_water_mark() and self.can_reset
        self._sampler.window()
        self._cpu_started_s = time.process_time()

    def on_round_end(self, record: RoundRecord, weights: fedloom.Weights) -> bool:
        line = {
            "server_round": record.server_round,
            "duration_s": record.duration_s,
            "cpu_s": time.process_time() - self._cpu_started_s,
            "num_results": record.num_results,
            "failures": record.failures,
            "hwm_kib": status_kib("VmHWM") if self.can_reset else None,
            "sampled_peak_kib": self._sampler.window(),
        }
        self.rounds.append(line)
        say("ROUND " + json.dumps(line))
        return False


def serve(args: argparse.Namespace) -> None:
    say(f"BASELINE {status_kib('VmRSS')}")
    # Weights(...) copies into a buffer it writes, so the model is resident from here on
    # (a bare np.zeros would stay unmapped until first written). The list is popped into
    # the call so that this frame keeps no reference to the initial weights.
    initial = [fedloom.Weights({"w": np.zeros(args.params, np.float32)})]
    say(f"MODEL {status_kib('VmRSS')}")
    sampler = RssSampler()
    sampler.start()
    probe = RoundProbe(sampler)
    try:
        result = fedloom.serve(
            rounds=args.rounds,
            strategy=fedloom.fedavg(fraction_evaluate=0),
            address="127.0.0.1:0",
            min_clients=args.clients,
            join_timeout_s=60.0,
            fit_timeout_s=600.0,
            tls=None,
            tokens=None,
            initial_weights=initial.pop(),
            callbacks=[probe],
            heartbeat_s=args.heartbeat_s,
            on_ready=lambda port: say(f"PORT {port}"),
        )
    finally:
        sampler.stop()
    summary = {
        "durations_s": [record.duration_s for record in result.history],
        "rounds": probe.rounds,
        "stop_reason": result.stop_reason,
        "hwm_before_rounds_kib": probe.hwm_before_rounds_kib,
        "hwm_reset": probe.can_reset,
        # FedAvg of K copies of the global weights is the global weights: all zeros.
        "weights_unchanged": not np.any(result.weights.flat),
    }
    say("RESULT " + json.dumps(summary))


def clients(args: argparse.Namespace) -> None:
    # One client object serves every thread: its fit is a pure function, and a
    # FunctionClient copies its weights, so K of them would hold K models for nothing.
    client = FunctionClient(
        weights={"w": np.zeros(args.params, np.float32)},
        fit=lambda weights, config: (weights, 1, {}),
    )
    tasks: dict[str, int] = {}
    cpu_started_s = time.process_time()
    backoff = Backoff(initial_s=0.1, max_s=1.0)

    def run(name: str) -> None:
        tasks[name] = fedloom.connect(client, address=args.address, name=name, backoff=backoff)

    threads = [
        threading.Thread(target=run, args=(f"c{index}",), daemon=True)
        for index in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.timeout_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise SystemExit(f"clients still running after {args.timeout_s:g} s: {sorted(tasks)} done")
    cpu_s = time.process_time() - cpu_started_s
    say("DONE " + json.dumps({"tasks": tasks, "cpu_s": cpu_s}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server")
    server.add_argument("--rounds", type=int, required=True)
    server.add_argument("--clients", type=int, required=True)
    server.add_argument("--params", type=int, required=True)
    server.add_argument("--heartbeat-s", type=float, default=5.0)
    client = roles.add_parser("clients")
    client.add_argument("--address", required=True)
    client.add_argument("--clients", type=int, required=True)
    client.add_argument("--params", type=int, required=True)
    client.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    if args.role == "server":
        serve(args)
    else:
        clients(args)


if __name__ == "__main__":
    main()
