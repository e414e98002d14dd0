"""Simulation engines: the same results on every engine, client state kept, bounded memory."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from fedloom import ClientContext, RunResult, simulate
from fedloom.client import FunctionClient
from fedloom.core import Client, ClientId, EvaluateIns, FitIns, FitRes, Weights
from fedloom.data import IID
from fedloom.errors import ConfigError
from fedloom.simulation import Fleet, resolve_device
from fedloom.simulation.engines import VectorizedExecutor
from fedloom.strategies import fedavg, fedbuff, scaffold
from fedloom.transport.inprocess import InProcessChannel

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """tests/simulation/engine_clients.py, importable by name in worker processes too."""
    monkeypatch.syspath_prepend(str(HERE))
    import engine_clients

    return engine_clients


def _scaffold_run(clients: types.ModuleType, engine: str, **options: object) -> RunResult:
    return simulate(
        clients.linear_client,
        num_clients=4,
        rounds=3,
        partitioner=IID(),
        strategy=scaffold(fraction_evaluate=0.0),
        seed=3,
        engine=engine,
        device="cpu",
        **options,  # type: ignore[arg-type]
    )


ENGINE_OPTIONS: dict[str, dict[str, object]] = {
    "sequential": {},
    "process": {"workers": 2},
    "ray": {"workers": 2},
    "vectorized": {},
}


@pytest.mark.parametrize("engine", list(ENGINE_OPTIONS))
def test_engines_keep_scaffold_control_variates_across_rounds(
    clients: types.ModuleType, engine: str
) -> None:
    """Every client trains every round; from round 2 on each is handed the c_i it kept."""
    if engine == "ray":
        ray = pytest.importorskip("ray")
    expected = _scaffold_run(clients, "sequential")

    result = _scaffold_run(clients, engine, **ENGINE_OPTIONS[engine])

    # had_c_i is 1 for a client handed a kept c_i: none in round 1, all four after.
    assert result.history.series("fit.had_c_i") == [(1, 0.0), (2, 1.0), (3, 1.0)]
    norms = dict(result.history.series("fit.c_i_norm"))
    assert norms[2] > 0
    assert norms == pytest.approx(dict(expected.history.series("fit.c_i_norm")), rel=1e-6)
    np.testing.assert_allclose(result.weights.flat, expected.weights.flat, atol=1e-6)
    if engine == "ray":
        assert not ray.is_initialized()  # the local instance it started is shut down


@pytest.mark.parametrize("engine", ["process", "vectorized"])
def test_engines_run_fedbuff_on_the_virtual_clock_like_sequential(
    clients: types.ModuleType, engine: str
) -> None:
    """Asynchronous rounds submit and collect through the same channel on every engine."""

    def run(engine: str) -> RunResult:
        return simulate(
            clients.linear_client,
            num_clients=5,
            rounds=4,
            partitioner=IID(),
            strategy=fedbuff(buffer_size=2, concurrency=3),
            fleet=Fleet(task_s=1.0, spread=0.5, seed=1),
            engine=engine,
            device="cpu",
            **ENGINE_OPTIONS[engine],  # type: ignore[arg-type]
        )

    expected = run("sequential")

    result = run(engine)

    assert result.history.series("staleness.max") == expected.history.series("staleness.max")
    np.testing.assert_allclose(result.weights.flat, expected.weights.flat, atol=1e-6)


def test_process_engine_fails_only_the_task_of_a_client_that_cannot_be_built(
    clients: types.ModuleType,
) -> None:
    result = simulate(
        clients.failing_client,
        num_clients=3,
        rounds=2,
        partitioner=IID(),
        strategy=fedavg(fraction_evaluate=0.0),
        initial_weights={"w": np.zeros(5, np.float32), "b": np.zeros(1, np.float32)},
        engine="process",
        workers=2,
        device="cpu",
    )

    for record in result.history:
        assert record.num_results == 2
        assert "could not be built: RuntimeError: no data on this device" in record.failures["1"]


def test_process_engine_replaces_a_worker_whose_client_kills_it(
    clients: types.ModuleType,
) -> None:
    result = simulate(
        clients.dying_client,
        num_clients=3,
        rounds=2,
        partitioner=IID(),
        strategy=fedavg(fraction_evaluate=0.0),
        engine="process",
        workers=2,
        device="cpu",
    )

    for record in result.history:
        assert record.num_results == 2
        assert "died (exit code 3)" in record.failures["2"]


def test_process_engine_refuses_a_client_fn_it_cannot_import_by_name() -> None:
    with pytest.raises(ConfigError, match="cannot be imported by name"):
        simulate(
            lambda context: FunctionClient(weights={"x": [0.0]}, fit=lambda w, c: (w, 1, {})),
            num_clients=2,
            rounds=1,
            engine="process",
        )


def test_simulate_rejects_an_unknown_engine_and_suggests_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown simulation engine 'proces'.*'process'"):
        simulate(_constant_client, num_clients=2, rounds=1, engine="proces")


def test_resolve_device_rejects_unknown_names_and_missing_gpus() -> None:
    torch = pytest.importorskip("torch")

    with pytest.raises(ConfigError, match=r"unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda:0"
        assert resolve_device("cuda") == "cuda:0"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="torch sees 0 CUDA device"):
            resolve_device("cuda:1")


def test_simulate_tells_clients_the_device_through_their_context() -> None:
    devices: list[str] = []

    def client_fn(context: ClientContext) -> Client:
        devices.append(context.device)
        return _constant_client(context)

    simulate(client_fn, num_clients=2, rounds=1, device="cpu")

    assert len(devices) > 0
    assert set(devices) == {"cpu"}


def _constant_client(context: ClientContext) -> FunctionClient:
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: ({"x": w["x"] + 1}, 1, {}))


class _FakeVectorizedFit:
    """Stands in for VectorizedFit: batches clients whose id is even."""

    calls: ClassVar[list[list[ClientId]]] = []

    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device

    def unsupported(self, client: Client, ins: FitIns) -> str | None:
        return None if int(client.get_weights()["id"][0]) % 2 == 0 else "odd clients do not batch"

    def fit(self, jobs: Mapping[ClientId, tuple[Client, FitIns]]) -> dict[ClientId, FitRes]:
        self.calls.append(list(jobs))
        return {cid: FitRes({"id": -ins.weights["id"]}, 1) for cid, (_, ins) in jobs.items()}


def test_vectorized_engine_batches_what_it_can_and_names_each_fallback_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = types.ModuleType("fedloom.simulation.vectorized")
    fake.VectorizedFit = _FakeVectorizedFit  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fedloom.simulation.vectorized", fake)
    monkeypatch.setattr(_FakeVectorizedFit, "calls", [])
    caplog.set_level(logging.WARNING, logger="fedloom.simulation.engines")

    def client_fn(context: ClientContext) -> FunctionClient:
        own = float(context.partition_id)
        return FunctionClient(
            weights={"id": [own]},
            fit=lambda w, config: ({"id": w["id"] + own}, 1, {}),
            evaluate=lambda w, config: (0.0, 1, {}),
        )

    executor = VectorizedExecutor(client_fn)
    channel = InProcessChannel(client_fn, num_clients=4, executor=executor)
    weights = Weights({"id": [10.0]})
    fit = FitIns(weights=weights, config={"server_round": 1})
    evaluate = EvaluateIns(weights=weights, config={"server_round": 1})

    for _ in range(2):
        replies = dict(channel.run(dict.fromkeys(["0", "1", "2", "3"], fit), timeout_s=None))
        evaluations = dict(channel.run({"0": evaluate, "1": evaluate}, timeout_s=None))

    # even clients went through the batch (-10), odd ones trained alone (10 + id)
    trained = {cid: float(reply.weights["id"][0]) for cid, reply in replies.items()}  # type: ignore[union-attr]
    assert trained == {"0": -10.0, "1": 11.0, "2": -10.0, "3": 13.0}
    assert _FakeVectorizedFit.calls == [["0", "2"], ["0", "2"]]
    assert len(evaluations) == 2
    messages = [record.getMessage() for record in caplog.records]
    assert sum("odd clients do not batch" in m for m in messages) == 1
    assert sum("EvaluateIns tasks run one client at a time" in m for m in messages) == 1


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {here!r})
    import numpy as np
    from fedloom import simulate
    from fedloom.client import GradientClient
    from fedloom.data import IID
    from fedloom.strategies import fedavg

    NUM_CLIENTS = {num_clients}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1_000_000, 8)).astype(np.float32)  # 10 samples a client
    Y = X.sum(axis=1)

    def client_fn(context):
        rows = context.partition(Y)  # the split is computed once, kept as two arrays
        x, y = X[rows], Y[rows]  # materialized now: this client is active
        def grad_fn(w, rng):
            error = x @ w["w"] - y
            return 0.5 * float(error @ error) / len(y), {{"w": x.T @ error / len(y)}}
        return GradientClient({{"w": np.zeros(8, np.float32)}}, grad_fn,
                              num_examples=len(y), local_steps=2)

    result = simulate(
        client_fn, num_clients=NUM_CLIENTS, rounds=3, partitioner=IID(),
        strategy=fedavg(fraction_fit=100 / NUM_CLIENTS, fraction_evaluate=0.0), device="cpu",
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"peak_mb": peak_mb, "rounds": len(result.history),
                      "results": [r.num_results for r in result.history]}}))
    """
)


def _peak(num_clients: int) -> dict[str, object]:
    script = _MEMORY_SCRIPT.format(here=str(HERE), num_clients=num_clients)
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    report: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


def test_100k_client_federation_runs_3_rounds_in_bounded_memory() -> None:
    """Memory grows with the 100 clients of a round, not with the 100,000 registered."""
    small = _peak(1_000)
    large = _peak(100_000)

    assert large["rounds"] == 3
    assert large["results"] == [100, 100, 100]
    assert isinstance(large["peak_mb"], float)
    assert isinstance(small["peak_mb"], float)
    assert large["peak_mb"] < 2048
    # 99,000 more registered clients may cost the split's offsets (8 bytes each), not
    # an object per client: 100 bytes a client would already be 10 MB.
    assert large["peak_mb"] - small["peak_mb"] < 30
