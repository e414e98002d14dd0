"""SecAgg+ over gRPC on loopback: a real server process, clients in threads.

Client "3" hangs in training (for three stage deadlines), so the masked-input stage of round 1 and the setup
stage of round 2 reach their deadline without it: both rounds unmask the others'
sum (round 1 rebuilds client 3's pairwise masks from its shares). The result
equals a simulation in which client 3 fails, bit for bit: the masks cancel exactly
and the rounding randomness derives from the same seeds.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Weights
from fedloom.secagg import SecAggPlus
from fedloom.strategies import Strategy

pytestmark = pytest.mark.e2e

SERVER = Path(__file__).resolve().parent / "grpc_server.py"
DIM = 6
TIMEOUT_S = 4.0


def _make_client(index: int, release: threading.Event) -> FunctionClient:
    target = index / 10.0

    def fit(
        weights: Weights, config: Config
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        if index == 3:  # hangs past round 1's training deadline and round 2's setup deadline
            release.wait(timeout=3 * TIMEOUT_S)
            raise RuntimeError("client 3 was too slow")
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, index + 1, {}

    return FunctionClient(weights={"x": np.zeros(DIM)}, fit=fit)


def _expected_by_simulation() -> np.ndarray:
    never = threading.Event()
    never.set()  # client 3 fails at once in simulation

    def client_fn(context: ClientContext) -> FunctionClient:
        return _make_client(context.partition_id, never)

    result = fedloom.simulate(
        client_fn,
        num_clients=4,
        rounds=2,
        seed=5,
        initial_weights={"x": np.zeros(DIM)},
        strategy=Strategy(
            evaluate_sampler=None,
            secure_aggregation=SecAggPlus(clipping_range=1.0, timeout_s=TIMEOUT_S),
        ),
    )
    return result.weights.flat


def test_secagg_over_grpc_recovers_a_timed_out_client_and_matches_simulation(
    tmp_path: Path,
) -> None:
    logging.getLogger("fedloom").setLevel(logging.ERROR)
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--out", str(out), "--timeout", str(TIMEOUT_S)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "server.log").open("w"),
        text=True,
        env=env,
    )
    release, stop = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [lines.put(line.strip()) for line in server.stdout or ()], daemon=True
        )
        reader.start()
        port = int(lines.get(timeout=60.0).removeprefix("PORT "))
        for index in range(4):
            client = _make_client(index, release)
            thread = threading.Thread(
                target=fedloom.connect,
                kwargs={
                    "client": client,
                    "address": f"127.0.0.1:{port}",
                    "name": str(index),
                    "stop": stop,
                },
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        started = time.monotonic()
        assert lines.get(timeout=90.0) == "DONE"
        elapsed = time.monotonic() - started
        server.wait(timeout=30.0)
    finally:
        release.set()
        stop.set()
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10.0)
        for thread in threads:
            thread.join(timeout=20.0)

    result = json.loads(out.read_text())
    assert result["num_results"] == [3, 3]
    assert result["failures"] == [["3"], ["3"]]
    # two stage deadlines were waited out, each bounded by TIMEOUT_S
    assert 2 * TIMEOUT_S <= elapsed < 2 * TIMEOUT_S + 40.0
    assert np.array_equal(np.array(result["weights"]), _expected_by_simulation())
    assert not any(thread.is_alive() for thread in threads)


def test_secagg_over_grpc_with_local_dp_reports_the_clients_epsilon(tmp_path: Path) -> None:
    """Three DP-SGD clients over gRPC: their epsilons travel in the clear, updates masked."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from fedloom.client import TorchClient
    from fedloom.privacy.local import DPSGDBudget

    logging.getLogger("fedloom").setLevel(logging.ERROR)
    out = tmp_path / "result.json"
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--out", str(out), "--clients", "3",
         "--timeout", "60", "--local-dp", "4.0"],
        stdout=subprocess.PIPE, stderr=(tmp_path / "server.log").open("w"), text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [lines.put(line.strip()) for line in server.stdout or ()], daemon=True
        )
        reader.start()
        port = int(lines.get(timeout=60.0).removeprefix("PORT "))
        for index in range(3):
            rng = np.random.default_rng(index)
            x = rng.normal(size=(64, 4)).astype(np.float32)
            y = (x[:, 0] > 0).astype(np.int64)
            client = TorchClient(
                torch.nn.Linear(4, 2),
                train=(torch.from_numpy(x), torch.from_numpy(y)),
                batch_size=16,
            )
            thread = threading.Thread(
                target=fedloom.connect,
                kwargs={"client": client, "address": f"127.0.0.1:{port}", "name": f"dp{index}",
                        "stop": stop},
                daemon=True,
            )  # fmt: skip
            thread.start()
            threads.append(thread)
        assert lines.get(timeout=120.0) == "DONE", (tmp_path / "server.log").read_text()
        server.wait(timeout=30.0)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10.0)
        for thread in threads:
            thread.join(timeout=20.0)

    result = json.loads(out.read_text())
    assert result["num_results"] == [3, 3]
    assert result["failures"] == [[], []]
    # every client has 64 examples and batch 16: its epsilon after each fit is the plan's
    budget = DPSGDBudget(epsilon=4.0, delta=1e-3, rounds=2)
    first = budget.plan(num_examples=64, batch_size=16, epochs=1, history=())
    second = budget.plan(num_examples=64, batch_size=16, epochs=1, history=first.history)
    assert result["local_epsilon"] == pytest.approx([first.epsilon, second.epsilon], rel=1e-9)
    assert second.epsilon <= 4.0
    assert not any(thread.is_alive() for thread in threads)
