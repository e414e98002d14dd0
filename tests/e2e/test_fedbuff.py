"""FedBuff on the quickstart task: K = 3 of 10 clients reaches the quickstart's accuracy."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fedloom
from fedloom.data import Dirichlet
from fedloom.strategies import STRATEGIES

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

pytestmark = pytest.mark.e2e


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/quickstart/task.py, imported fresh from its folder, on one torch thread."""
    monkeypatch.syspath_prepend(str(QUICKSTART))
    monkeypatch.delitem(sys.modules, "task", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = importlib.import_module("task")
        assert Path(module.__file__ or "").parent == QUICKSTART
        yield module
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("task", None)


def test_fedbuff_reaches_quickstart_accuracy(task: ModuleType) -> None:
    """FedBuff with K = 3 of 10 clients reaches the quickstart's 0.92 within 60 versions."""
    # All 10 clients train at once; every 3 arrivals make a version, each update scaled by
    # (1 + staleness)^-0.5, and the server applies 0.3 times their mean.
    strategy = STRATEGIES["fedbuff"](buffer_size=3, concurrency=10, server_lr=0.3)

    result = fedloom.simulate(
        task.client_fn,
        num_clients=10,
        rounds=60,
        partitioner=Dirichlet(alpha=0.5),
        evaluate_fn=task.evaluate,
        strategy=strategy,
        seed=0,
    )

    accuracy = [value for _, value in result.history.series("central.accuracy")]
    assert len(accuracy) == 61  # versions 0..60
    assert accuracy[0] < 0.2  # an untrained 10-class model is at chance, about 0.1
    assert max(accuracy) >= 0.92
    staleness = [value for _, value in result.history.series("staleness.max")]
    assert len(staleness) == 60
    assert max(staleness) > 0  # 10 clients in flight, 3 per version: updates arrive stale
    assert not any(name.startswith("evaluate.") for name in result.history[-1].metrics)
