"""Robust aggregation on the quickstart with 20% of clients sending sign-flipped, 10x updates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fedloom import simulate
from fedloom.core import ClientContext, Config, FitRes, Weights
from fedloom.data import Dirichlet
from fedloom.errors import NotEnoughResults
from fedloom.server import Callback, RoundRecord
from fedloom.strategies import STRATEGIES, Strategy

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
ATTACKERS = {"3", "7"}  # 2 of 10 clients
ROUNDS = 20


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(QUICKSTART))
    threads = torch.get_num_threads()
    import task as quickstart_task

    yield quickstart_task
    torch.set_num_threads(threads)


class SignFlip:
    """A Byzantine client: trains honestly, then sends ``global - 10 * (trained - global)``."""

    def __init__(self, honest: object) -> None:
        self.honest = honest

    def get_weights(self) -> Weights:
        return self.honest.get_weights()  # type: ignore[attr-defined, no-any-return]

    def fit(self, weights: Weights, config: Config) -> FitRes:
        result: FitRes = self.honest.fit(weights, config)  # type: ignore[attr-defined]
        trained = result.weights
        flipped = {name: weights[name] - 10.0 * (trained[name] - weights[name]) for name in weights}  # type: ignore[index]
        return FitRes(flipped, result.num_examples, result.metrics)


class Accuracy(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        value = record.metrics.get("central.accuracy")
        if isinstance(value, float):
            self.values.append(value)
        return False


def run(task: ModuleType, strategy: Strategy, *, attacked: bool) -> list[float]:
    def client_fn(context: ClientContext) -> object:
        client = task.client_fn(context)
        return SignFlip(client) if attacked and context.client_id in ATTACKERS else client

    accuracy = Accuracy()
    # a diverged model turns NaN and every result is rejected: the run stops early
    with contextlib.suppress(NotEnoughResults):
        simulate(
            client_fn,
            num_clients=10,
            rounds=ROUNDS,
            strategy=strategy,
            partitioner=Dirichlet(alpha=0.5),
            evaluate_fn=task.evaluate,
            callbacks=[accuracy],
            seed=0,
        )
    return accuracy.values


@pytest.mark.e2e
def test_multikrum_keeps_quickstart_accuracy_under_sign_flip_attack_where_mean_collapses(
    task: ModuleType,
) -> None:
    """Multi-Krum (f=2) stays within 3 points of the clean run; the plain mean drops below 0.5."""
    clean = run(task, STRATEGIES["fedavg"](fraction_evaluate=0), attacked=False)
    robust = run(task, STRATEGIES["multikrum"](f=2, fraction_evaluate=0), attacked=True)
    plain = run(task, STRATEGIES["fedavg"](fraction_evaluate=0), attacked=True)

    assert clean[-1] >= 0.92
    assert robust[-1] >= clean[-1] - 0.03
    assert plain[-1] < 0.5
