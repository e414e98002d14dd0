"""simulate: partitions reach clients, the run folder is written, arguments are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Partitioner, Weights, WeightsLike
from fedloom.data import IID, Dirichlet
from fedloom.errors import ConfigError
from fedloom.strategies import fedavg, scaffold
from fedloom.transport.codec import load_weights

LABELS = np.repeat(np.arange(4), 10)
"""40 samples in 4 classes of 10."""


def _step(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
    return {"x": weights["x"] + 1.0}, 1, {}


@pytest.mark.parametrize("partitioner", [IID(), Dirichlet(alpha=0.5)], ids=["iid", "dirichlet"])
def test_simulate_gives_clients_disjoint_partitions(partitioner: Partitioner) -> None:
    seen: dict[str, np.ndarray] = {}

    def client_fn(context: ClientContext) -> FunctionClient:
        seen[context.client_id] = context.partition(LABELS)
        return FunctionClient(weights={"x": [0.0]}, fit=_step)

    fedloom.simulate(
        client_fn,
        num_clients=3,
        rounds=1,
        partitioner=partitioner,
        strategy=fedavg(fraction_evaluate=0),
    )

    assert sorted(seen) == ["0", "1", "2"]
    parts = [seen[cid] for cid in ("0", "1", "2")]
    joined = np.concatenate(parts)
    assert joined.size == LABELS.size  # no index twice ...
    assert np.array_equal(np.sort(joined), np.arange(LABELS.size))  # ... and every one once


def test_simulate_without_partitioner_makes_partition_raise() -> None:
    def client_fn(context: ClientContext) -> FunctionClient:
        context.partition(LABELS)
        return FunctionClient(weights={"x": [0.0]}, fit=_step)

    with pytest.raises(ConfigError, match="needs a partitioner, but none was configured"):
        fedloom.simulate(client_fn, num_clients=2, rounds=1)


def test_simulate_run_dir_writes_history_and_weights(tmp_path: Path) -> None:
    def client_fn(context: ClientContext) -> FunctionClient:
        return FunctionClient(weights={"x": [0.0, 0.0]}, fit=_step)

    def central(weights: Weights, server_round: int) -> Metrics:
        return {"loss": float(weights["x"][0])}

    result = fedloom.simulate(
        client_fn,
        num_clients=2,
        rounds=3,
        strategy=fedavg(fraction_evaluate=0),
        evaluate_fn=central,
        run_dir=tmp_path / "run",
    )

    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [record["server_round"] for record in history["rounds"]] == [0, 1, 2, 3]
    # x starts at 0 and both clients add 1 a round: central.loss = 0, 1, 2, 3.
    assert [r["metrics"]["central.loss"] for r in history["rounds"]] == [0.0, 1.0, 2.0, 3.0]
    assert history["stop_reason"] == "completed 3 rounds"
    saved = load_weights(tmp_path / "run" / "weights.safetensors")
    assert saved.equals(result.weights)
    assert np.array_equal(saved["x"], [3.0, 3.0])


@pytest.mark.parametrize("num_clients", [0, -1, True, 2.5, "3"])
def test_simulate_rejects_invalid_num_clients(num_clients: object) -> None:
    def client_fn(context: ClientContext) -> FunctionClient:
        return FunctionClient(weights={"x": [0.0]}, fit=_step)

    with pytest.raises(ConfigError, match="num_clients must be an int >= 1, got"):
        fedloom.simulate(client_fn, num_clients=num_clients, rounds=1)  # type: ignore[arg-type]


def test_simulate_clients_pulling_toward_their_index_converge_to_the_mean() -> None:
    """The example of simulate's docstring, with FunctionClient."""

    def client_fn(context: ClientContext) -> FunctionClient:
        target = float(context.partition_id)
        return FunctionClient(
            weights={"x": [0.0]},
            fit=lambda w, config: ({"x": w["x"] + 0.5 * (target - w["x"])}, 1, {}),
        )

    result = fedloom.simulate(client_fn, num_clients=3, rounds=30)

    # One round: x <- mean_i(x + (i - x) / 2) = x + (1 - x) / 2, so 1 - x halves each round
    # and after 30 rounds from 0 it is 2**-30 ~ 9.3e-10.
    assert abs(float(result.weights["x"][0]) - 1.0) < 1e-9
    assert round(float(result.weights["x"][0]), 3) == 1.0


def test_simulate_refuses_plugins_for_clients_that_cannot_apply_them() -> None:
    """SCAFFOLD without its client half is a configuration error, before any round runs."""
    built: list[str] = []

    def client_fn(context: ClientContext) -> FunctionClient:
        built.append(context.client_id)
        return FunctionClient(weights={"x": [0.0]}, fit=lambda w, c: (w, 1, {}))

    with pytest.raises(ConfigError, match=r"plug-ins \(scaffold\) need clients that apply them"):
        fedloom.simulate(client_fn, num_clients=3, rounds=2, strategy=scaffold())

    assert built == ["0"]  # checked on one client; no task ran
