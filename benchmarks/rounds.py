"""Seconds per round of a gRPC deployment on loopback, its wire overhead, and the server's memory.

Each case runs `fedloom.serve` in a process of its own and K clients in threads of a
second process (both ``benchmarks/_rounds_server.py``), on 127.0.0.1 with an
OS-assigned port, plain text. Every client's fit returns the weights it received
unchanged, so a round is transport and aggregation only: K tasks out, K results in,
one streaming FedAvg fold. The figures:

- ``s_per_round``: the median duration of rounds 2..R (round 1 warms up), for K = 2
  and 10 clients and models of 1M and 10M float32 values (keys ``K2_1M`` ...).
- ``wire_over_raw``: the bytes of one update's result stream (the protobuf frames of
  ``encode_result`` for a FitRes of the 10M model) over its raw tensor bytes;
  ``task_wire_over_raw`` is the same for a task stream (``encode_task``).
- ``server_peak_over_model``: the server's peak RSS during a round of 10 clients with a
  100M-value (400 MB) model, over 400 MB. The peak is the kernel's high-water mark
  reset as each round starts (a 10 ms RSS sampler where that reset is not allowed). It
  runs 2 rounds by default: only from round 2 on is the initial model no longer the
  global one, so a server that keeps it alive shows it then. It needs about 7 GB free.

Extras: ``floor_s`` (one ``numpy.copyto`` of every byte a round moves: K tasks and K
results), the CPU seconds per round of the server and of the clients' process (the
machine may be shared: CPU time is less disturbed by other work than wall time), and
``loopback_over_raw`` (bytes on the ``lo`` interface over the raw bytes of the tasks
and results; other traffic on ``lo`` adds to it).

Run: ``python benchmarks/rounds.py [--rounds R] [--memory-rounds R] [--skip-memory]``.
Prints a table, then one JSON line.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedloom.core import FitIns, FitRes, VectorSpec, Weights
from fedloom.transport.grpc.wire import encode_result, encode_task

HELPER = Path(__file__).resolve().with_name("_rounds_server.py")
CLIENTS = (2, 10)
SIZES = {"1M": 1_000_000, "10M": 10_000_000}
MEMORY_CLIENTS = 10
MEMORY_PARAMS = 100_000_000
KIB = 1024


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
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise ChildFailed(f"the {self.name} printed no {word} line in time") from None
            if line is None:
                code = self.process.wait(timeout=10)
                raise ChildFailed(f"the {self.name} exited ({code}) before printing {word}")
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

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Case:
    """One deployment run and what its server reported."""

    clients: int
    params: int
    rounds: int
    durations_s: list[float] = field(default_factory=list)
    records: list[dict[str, object]] = field(default_factory=list)
    baseline_kib: int = 0
    model_kib: int = 0
    loopback_bytes: int = 0
    wall_s: float = 0.0
    weights_unchanged: bool = False
    client_cpu_s: float = 0.0

    @property
    def raw_bytes(self) -> int:
        return self.params * 4

    @property
    def s_per_round(self) -> float:
        """The median duration of rounds 2..R (of round 1 when there is no other)."""
        timed = self.durations_s[1:] or self.durations_s
        return statistics.median(timed)

    @property
    def server_cpu_s_per_round(self) -> float:
        """The server's median CPU seconds (all threads) in rounds 2..R."""
        cpu = [float(r["cpu_s"]) for r in self.records]  # type: ignore[arg-type]
        return statistics.median(cpu[1:] or cpu)

    @property
    def peak_kib(self) -> int:
        """The highest per-round peak: the reset high-water mark, else the sampled RSS."""
        peaks = [
            r["hwm_kib"] if r["hwm_kib"] is not None else r["sampled_peak_kib"]
            for r in self.records
        ]
        return max(int(p) for p in peaks)  # type: ignore[call-overload]

    @property
    def sampled_peak_kib(self) -> int:
        return max(int(r["sampled_peak_kib"]) for r in self.records)  # type: ignore[call-overload]


def loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (``/proc/net/dev``)."""
    with open("/proc/net/dev") as dev:
        for line in dev:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[0])
    return 0


def run_case(clients: int, params: int, rounds: int, timeout_s: float, log_dir: Path) -> Case:
    """Serve `rounds` rounds to `clients` clients with a model of `params` float32 values."""
    case = Case(clients=clients, params=params, rounds=rounds)
    deadline = time.monotonic() + timeout_s
    sizes = ["--clients", str(clients), "--params", str(params)]
    label = f"K{clients}_{params}"
    started = time.perf_counter()
    lo_before = loopback_bytes()
    children: list[Child] = []
    try:
        server = Child(f"server_{label}", ["server", "--rounds", str(rounds), *sizes], log_dir)
        children.append(server)
        case.baseline_kib = int(server.expect("BASELINE", deadline))
        case.model_kib = int(server.expect("MODEL", deadline))
        port = int(server.expect("PORT", deadline))
        address = f"127.0.0.1:{port}"
        remaining = str(max(1.0, deadline - time.monotonic()))
        arguments = ["clients", "--address", address, *sizes, "--timeout-s", remaining]
        client_process = Child(f"clients_{label}", arguments, log_dir)
        children.append(client_process)
        result = json.loads(server.expect("RESULT", deadline))
        done = json.loads(client_process.expect("DONE", deadline))
        server.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        client_process.process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (ChildFailed, subprocess.TimeoutExpired) as exc:
        for child in children:
            print(
                f"--- {child.name} stderr (last lines) ---\n{child.stderr_tail()}", file=sys.stderr
            )
        raise ChildFailed(f"case K={clients}, {params:,} values: {exc}") from exc
    finally:
        for child in children:
            child.stop()
    case.wall_s = time.perf_counter() - started
    case.loopback_bytes = loopback_bytes() - lo_before
    case.durations_s = [float(d) for d in result["durations_s"]]
    case.records = result["rounds"]
    case.weights_unchanged = bool(result["weights_unchanged"])
    tasks = done["tasks"]
    case.client_cpu_s = float(done["cpu_s"])
    failures = [r["failures"] for r in case.records if r["failures"] or r["num_results"] != clients]
    if failures or sum(tasks.values()) != clients * rounds or not case.weights_unchanged:
        raise ChildFailed(
            f"case K={clients}, {params:,} values did not run cleanly: failures {failures}, "
            f"tasks {tasks}, weights unchanged: {case.weights_unchanged}"
        )
    return case


def wire_ratios(params: int) -> tuple[float, float]:
    """Protobuf bytes of one result stream and one task stream, over the raw tensor bytes."""
    spec = VectorSpec(names=("w",), shapes=((params,),), dtype="float32")
    weights = Weights.from_flat(spec, np.zeros(params, np.float32))
    task_id, session = "f" * 32, "e" * 32  # the sizes of the uuid4 hex ids the fleet uses
    result = encode_result(
        task_id, FitRes(weights=weights, num_examples=1, metrics={}), session=session
    )
    result_bytes = sum(frame.ByteSize() for frame in result)
    config = {"server_round": 1, "seed": 2**62}
    task = encode_task(task_id, FitIns(weights=weights, config=config), session=session)
    task_bytes = sum(frame.ByteSize() for frame in task)
    return result_bytes / (params * 4), task_bytes / (params * 4)


def copy_floor_s(params: int, clients: int, repeat: int = 5) -> float:
    """One ``numpy.copyto`` of everything a round moves: K tasks and K results of `params`."""
    source = np.ones(params, np.float32)
    destination = np.empty_like(source)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(destination, source)
        best = min(best, time.perf_counter() - start)
    return best * 2 * clients


def memory_available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    return 0


def mib(kib: float) -> str:
    return f"{kib / KIB:8.1f} MiB"


def timing_cases(args: argparse.Namespace, log_dir: Path) -> dict[str, dict[str, float]]:
    """Run the K x size grid; print a row per case; the figures keyed by ``K<k>_<size>``."""
    figures: dict[str, dict[str, float]] = {
        "s_per_round": {},
        "server_cpu_s_per_round": {},
        "client_cpu_s_per_round": {},
        "floor_s": {},
        "loopback_over_raw": {},
    }
    print(
        f"\n{'case':>8} {'s/round':>8} {'floor s':>8} {'/floor':>7} {'server cpu':>10} "
        f"{'client cpu':>10}  each round (s)"
    )
    for clients in CLIENTS:
        for size, params in SIZES.items():
            key = f"K{clients}_{size}"
            case = run_case(clients, params, args.rounds, args.case_timeout_s, log_dir)
            floor_s = copy_floor_s(params, clients)
            moved = 2 * clients * args.rounds * case.raw_bytes
            figures["s_per_round"][key] = case.s_per_round
            figures["server_cpu_s_per_round"][key] = case.server_cpu_s_per_round
            figures["client_cpu_s_per_round"][key] = case.client_cpu_s / args.rounds
            figures["floor_s"][key] = floor_s
            figures["loopback_over_raw"][key] = case.loopback_bytes / moved
            each = " ".join(f"{d:.3f}" for d in case.durations_s)
            print(
                f"{key:>8} {case.s_per_round:8.3f} {floor_s:8.4f} "
                f"{case.s_per_round / floor_s:7.1f} {case.server_cpu_s_per_round:10.3f} "
                f"{case.client_cpu_s / args.rounds:10.3f}  {each}"
            )
    return figures


def memory_case(args: argparse.Namespace, log_dir: Path) -> dict[str, object]:
    """Run K=10 clients with the 100M-value model; print the server's memory; its figures."""
    needed = (MEMORY_CLIENTS + 8) * MEMORY_PARAMS * 4  # clients' K buffers, server's ~5 models
    available = memory_available_bytes()
    if args.skip_memory:
        print("\nmemory case skipped (--skip-memory)")
        return {}
    if available < needed:
        print(
            f"\nmemory case skipped: {available / 1e9:.1f} GB available, about "
            f"{needed / 1e9:.1f} GB needed"
        )
        return {}
    case = run_case(
        MEMORY_CLIENTS, MEMORY_PARAMS, args.memory_rounds, args.memory_timeout_s, log_dir
    )
    model_kib = case.raw_bytes / KIB
    figures: dict[str, object] = {
        "server_peak_over_model": case.peak_kib / model_kib,
        "server_sampled_peak_over_model": case.sampled_peak_kib / model_kib,
        "server_peak_above_baseline_over_model": (case.peak_kib - case.baseline_kib) / model_kib,
        "server_baseline_mib": case.baseline_kib / KIB,
        "memory_rounds": args.memory_rounds,
        "memory_round_s": case.durations_s,
        "memory_case_wall_s": case.wall_s,
    }
    print(f"\nserver, K={MEMORY_CLIENTS}, {MEMORY_PARAMS:,} float32 values ({mib(model_kib)}):")
    print(f"  RSS before the model was created (baseline): {mib(case.baseline_kib)}")
    print(f"  RSS once the model exists:                    {mib(case.model_kib)}")
    for record in case.records:
        hwm = record["hwm_kib"]
        high = "   (no reset)" if hwm is None else mib(hwm)  # type: ignore[arg-type]
        print(
            f"  round {record['server_round']}: {record['duration_s']:6.2f} s, "
            f"server cpu {record['cpu_s']:6.2f} s, peak {high} (high-water mark), "
            f"{mib(record['sampled_peak_kib'])} (10 ms samples)"  # type: ignore[arg-type]
        )
    print(
        f"  peak / model: {figures['server_peak_over_model']:.2f} "
        f"(10 ms samples {figures['server_sampled_peak_over_model']:.2f}, above the baseline "
        f"{figures['server_peak_above_baseline_over_model']:.2f}); "
        f"case wall time {case.wall_s:.0f} s"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-rounds", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--case-timeout-s", type=float, default=180.0)
    parser.add_argument("--memory-timeout-s", type=float, default=420.0)
    args = parser.parse_args()

    wire_over_raw, task_wire_over_raw = wire_ratios(SIZES["10M"])
    print(f"result stream / raw bytes (10M model): {wire_over_raw:.6f}")
    print(f"task stream / raw bytes (10M model):   {task_wire_over_raw:.6f}")
    with tempfile.TemporaryDirectory(prefix="fedloom-rounds-") as folder:
        timings = timing_cases(args, Path(folder))
        memory = memory_case(args, Path(folder))

    figures: dict[str, object] = {
        "s_per_round": timings.pop("s_per_round"),
        "wire_over_raw": wire_over_raw,
        "server_peak_over_model": memory.pop("server_peak_over_model", None),
        "task_wire_over_raw": task_wire_over_raw,
        **timings,
        **memory,
        "rounds": args.rounds,
    }
    print(json.dumps(rounded(figures)))


def rounded(value: object, digits: int = 6) -> object:
    """`value` with every float rounded to `digits` significant digits, for the JSON line."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value


if __name__ == "__main__":
    main()
