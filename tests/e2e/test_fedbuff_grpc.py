"""FedBuff over gRPC: a real `fedloom server` process, clients of different speeds, one dying.

The clients are the same user code as in simulation (`toy_client`): each fit returns
the weights it got plus one, after `delay_s`. With FedBuff (``server_lr = 1``,
``staleness_exponent = 0.5``) every client update is ``+1`` against the version it
trained from, so each version adds the mean of its K results' staleness factors
``(1 + s)^-0.5`` to every coordinate, and the final weights follow from the recorded
staleness alone::

    x_R = sum over versions r of mean over its results i of (1 + s_i)^-0.5

The gRPC test checks that against the store the server wrote: versions advance, every
result's staleness is recorded, the client killed mid-task fails only its task (and the
rounds after it complete), and a client that joins later gets tasks. Gates in the fits
(bounded waits on events) pin when those happen, so no timing decides the outcome.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.client import FunctionClient
from fedloom.core import Config, Metrics, Weights, WeightsLike
from fedloom.deployment import connect
from fedloom.server import Callback, ClientOutcome
from fedloom.simulation import Fleet as SimulatedFleet
from fedloom.store import open_store
from fedloom.strategies import fedasync, fedbuff
from fedloom.transport.codec import load_weights

pytestmark = pytest.mark.e2e

FEDLOOM = [sys.executable, "-c", "import sys; from fedloom.cli.main import main; sys.exit(main())"]
ROUNDS = 10
CONFIG = f"""
[run]
name = "async"
rounds = {ROUNDS}

[strategy]
name = "fedbuff"
buffer_size = 2
concurrency = 4
server_lr = 1.0
staleness_exponent = 0.5

[server]
address = "127.0.0.1:0"
min_clients = 3
join_timeout_s = 60
fit_timeout_s = 60
heartbeat_s = 1.0
"""
# The client that dies: on its first fit task it kills its own process (no goodbye).
DOOMED = """
import os, signal, sys
import fedloom
from fedloom.client import FunctionClient

def fit(weights, config):
    os.kill(os.getpid(), signal.SIGKILL)

client = FunctionClient(weights={"x": [0.0, 0.0, 0.0]}, fit=fit)
fedloom.connect(client, address=sys.argv[1], name="doomed")
"""
GATE_S = 60.0


def toy_client(
    delay_s: float, gate: Callable[[Config], None] = lambda config: None
) -> FunctionClient:
    """The user's client: the weights plus one, after `delay_s` (`gate` may hold it first)."""

    def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        gate(config)
        time.sleep(delay_s)
        return {"x": weights["x"] + 1.0}, 1, {}

    return FunctionClient(weights={"x": np.zeros(3)}, fit=fit)


def expected_x(staleness_by_round: dict[int, list[int]]) -> float:
    """The docstring's x_R: each version adds the mean staleness factor of its results."""
    return sum(
        float(np.mean([(1 + s) ** -0.5 for s in values])) for values in staleness_by_round.values()
    )


class Staleness(Callback):
    """Collects each fit result's staleness by version."""

    def __init__(self) -> None:
        self.by_round: dict[int, list[int]] = {}

    def on_client_result(self, outcome: ClientOutcome) -> None:
        if outcome.kind == "fit" and outcome.failure is None:
            assert outcome.staleness is not None
            self.by_round.setdefault(outcome.server_round, []).append(outcome.staleness)


def test_fedbuff_simulation_weights_follow_the_recorded_staleness() -> None:
    """The same client code and strategy in simulation obey the same rule."""
    staleness = Staleness()
    speeds = {"0": 1.0, "1": 1.0, "2": 5.0}  # virtual seconds a task: client "2" is slow

    result = fedloom.simulate(
        lambda context: toy_client(0.0),
        num_clients=3,
        rounds=6,
        strategy=fedbuff(buffer_size=2, concurrency=3, server_lr=1.0, staleness_exponent=0.5),
        fleet=SimulatedFleet(profile=lambda client_id: (speeds[client_id], 1.0)),
        callbacks=[staleness],
    )

    assert sorted(staleness.by_round) == [1, 2, 3, 4, 5, 6]
    assert max(max(values) for values in staleness.by_round.values()) >= 1
    assert np.allclose(result.weights["x"], expected_x(staleness.by_round))


class ServerProcess:
    """`fedloom server` in a child process; its stderr lines are queued for the test."""

    def __init__(self, folder: Path) -> None:
        config = folder / "fedbuff.toml"
        config.write_text(CONFIG)
        self.popen = subprocess.Popen(
            [*FEDLOOM, "server", str(config), "--insecure", "--no-progress", "--run-dir", folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.stderr: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _drain_stdout(self) -> None:
        assert self.popen.stdout is not None
        for _ in self.popen.stdout:  # the summary: read, so the pipe never fills
            pass

    def port(self, timeout_s: float) -> int:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line.startswith("listening on"):
                threading.Thread(target=self._drain_stdout, daemon=True).start()
                return int(line.rsplit(":", 1)[1])
            if not line and self.popen.poll() is not None:
                break
        raise AssertionError("the server did not listen:\n" + "".join(self.stderr))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.wait(timeout=10)


def test_fedbuff_over_grpc_survives_a_dying_client_and_takes_a_late_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    port = server.port(timeout_s=60)
    address = f"127.0.0.1:{port}"
    doomed_failed, late_fitted = threading.Event(), threading.Event()
    late_fits: list[int] = []

    def gate(config: Config) -> None:
        """Round 4 on waits for the doomed client's failure; round 7 on, for the late client."""
        server_round = int(config["server_round"])
        if server_round >= 4:
            doomed_failed.wait(GATE_S)
        if server_round >= 7:
            late_fitted.wait(GATE_S)

    def watch_failure() -> None:
        deadline = time.monotonic() + GATE_S
        while time.monotonic() < deadline and not doomed_failed.is_set():
            try:
                line = server.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "client 'doomed' failed" in line:
                doomed_failed.set()

    def late_gate(config: Config) -> None:
        late_fits.append(int(config["server_round"]))
        late_fitted.set()

    def run_client(name: str, client: FunctionClient) -> None:
        connect(client, address=address, name=name)

    doomed = subprocess.Popen(
        [sys.executable, "-c", DOOMED, address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watcher = threading.Thread(target=watch_failure, daemon=True)
    watcher.start()
    clients = [
        threading.Thread(target=run_client, args=("fast", toy_client(0.02, gate))),
        threading.Thread(target=run_client, args=("slow", toy_client(0.4, gate))),
    ]
    try:
        for thread in clients:
            thread.start()
        assert doomed_failed.wait(GATE_S), "".join(server.stderr)
        late = threading.Thread(target=run_client, args=("late", toy_client(0.0, late_gate)))
        late.start()
        clients.append(late)
        server.popen.wait(timeout=120)
        for thread in clients:
            thread.join(timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        doomed.wait(timeout=10)

    assert server.popen.returncode == 0, "".join(server.stderr)
    assert doomed.returncode == -9  # it died mid-task, as planned
    assert not any(thread.is_alive() for thread in clients)
    folder = tmp_path / "async"
    with open_store(folder / "store.db") as store:
        run_id = store.list_runs()[0].run_id
        rounds = store.rounds(run_id)
        results = store.client_results(run_id)
    assert [r.server_round for r in rounds] == list(range(ROUNDS + 1))  # versions advanced
    fits = [r for r in results if r.kind == "fit" and r.failure is None]
    failures = [r for r in results if r.failure is not None]
    assert [(f.client_id, f.server_round) for f in failures] == [
        ("doomed", failures[0].server_round)
    ]
    assert "stopped beating" in (failures[0].failure or "")
    assert failures[0].server_round <= 4  # the rounds after it completed
    assert all(r.staleness is not None and r.staleness >= 0 for r in fits)
    assert any(r.client_id == "slow" and (r.staleness or 0) >= 1 for r in fits)
    assert late_fits
    assert any(r.client_id == "late" for r in fits)
    assert {r.client_id for r in fits} == {"fast", "slow", "late"}
    staleness_by_round: dict[int, list[int]] = {}
    for r in fits:
        staleness_by_round.setdefault(r.server_round, []).append(int(r.staleness or 0))
    assert all(len(values) == 2 for values in staleness_by_round.values())  # K = 2 per version
    weights = load_weights(folder / "weights.safetensors")
    assert np.allclose(weights["x"], expected_x(staleness_by_round))


def pulling_client(index: int) -> FunctionClient:
    """Client i moves the weights halfway to its target ``i + 1`` in every coordinate."""

    def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        return {"x": weights["x"] + 0.5 * (index + 1.0 - weights["x"])}, 1, {}

    return FunctionClient(weights={"x": np.zeros(3)}, fit=fit)


def test_fedasync_over_grpc_ends_with_the_simulations_weights() -> None:
    """One client in flight at a time: the seeded sampler alone picks who, on either channel."""
    strategy = fedasync(mixing=0.5, concurrency=1)
    start = {"x": np.zeros(3)}
    simulated = fedloom.simulate(
        lambda context: pulling_client(context.partition_id),
        num_clients=2,
        rounds=5,
        strategy=strategy,
        initial_weights=start,
        seed=3,
    )
    port: queue.Queue[int] = queue.Queue()
    names: queue.Queue[Callable[[], list[str]]] = queue.Queue()
    served: list[fedloom.RunResult] = []

    def serve() -> None:
        served.append(
            fedloom.serve(
                rounds=5,
                strategy=strategy,
                address="127.0.0.1:0",
                min_clients=2,
                join_timeout_s=60,
                fit_timeout_s=60,
                initial_weights=start,
                seed=3,
                on_ready=port.put,
                on_connected=names.put,
            )
        )

    server = threading.Thread(target=serve)
    server.start()
    connected, address = names.get(timeout=60), f"127.0.0.1:{port.get(timeout=60)}"
    clients = [
        threading.Thread(target=connect, args=(pulling_client(index),),
                         kwargs={"address": address, "name": str(index)})
        for index in range(2)
    ]  # fmt: skip
    clients[0].start()
    deadline = time.monotonic() + 60
    while not connected() and time.monotonic() < deadline:  # the run waits for both
        time.sleep(0.05)
    clients[1].start()  # "1" joins second, as the simulation lists it second
    server.join(timeout=120)
    for thread in clients:
        thread.join(timeout=30)

    assert not server.is_alive()
    assert served[0].stop_reason == "completed 5 rounds"
    assert [r.server_round for r in served[0].history] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(served[0].weights["x"], simulated.weights["x"])
    assert float(simulated.weights["x"][0]) > 0.5  # it moved towards the targets 1 and 2
