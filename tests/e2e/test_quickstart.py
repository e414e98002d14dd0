"""The quickstart example end to end: digits over 10 Dirichlet-skewed clients."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import fedloom
from fedloom.data import Dirichlet

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

pytestmark = pytest.mark.e2e


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/quickstart/task.py, imported fresh from its folder."""
    monkeypatch.syspath_prepend(str(QUICKSTART))
    monkeypatch.delitem(sys.modules, "task", raising=False)
    # Tiny models train fastest on one thread (and do not fight other processes for cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    module = importlib.import_module("task")
    assert Path(module.__file__ or "").parent == QUICKSTART
    yield module
    torch.set_num_threads(threads)
    sys.modules.pop("task", None)


def _simulate(task: ModuleType, rounds: int, **engine: object) -> fedloom.RunResult:
    return fedloom.simulate(
        task.client_fn,
        num_clients=10,
        rounds=rounds,
        partitioner=Dirichlet(alpha=0.5),
        evaluate_fn=task.evaluate,
        seed=0,
        **engine,  # type: ignore[arg-type]
    )


def test_quickstart_learns_digits(task: ModuleType) -> None:
    result = _simulate(task, rounds=5)

    accuracy = dict(result.history.series("central.accuracy"))
    assert sorted(accuracy) == [0, 1, 2, 3, 4, 5]
    # An untrained 10-class model is at chance, about 0.1.
    assert accuracy[0] < 0.2
    assert accuracy[5] > 0.85  # so it rose by at least 0.65
    assert result.stop_reason == "completed 5 rounds"


def test_quickstart_same_seed_gives_bit_identical_weights(task: ModuleType) -> None:
    first = _simulate(task, rounds=2)
    second = _simulate(task, rounds=2)

    assert first.weights.equals(second.weights)
    assert first.history.series("central.accuracy") == second.history.series("central.accuracy")


def test_quickstart_process_pool_gives_the_sequential_weights(task: ModuleType) -> None:
    """Two worker processes, each importing task.py once, reach the same model."""
    sequential = _simulate(task, rounds=3, device="cpu")

    pooled = _simulate(task, rounds=3, engine="process", workers=2, device="cpu")

    np.testing.assert_allclose(pooled.weights.flat, sequential.weights.flat, rtol=0, atol=1e-5)
    assert dict(pooled.history.series("central.accuracy")) == pytest.approx(
        dict(sequential.history.series("central.accuracy")), abs=1e-5
    )


def test_quickstart_runs_on_a_local_ray_instance(task: ModuleType) -> None:
    """No address: the engine starts Ray on 2 CPUs and shuts it down at the end."""
    ray = pytest.importorskip("ray")  # a guard only: the dev extra installs Ray, CI runs this
    sequential = _simulate(task, rounds=3, device="cpu")

    result = _simulate(task, rounds=3, engine="ray", workers=2, device="cpu")

    np.testing.assert_allclose(result.weights.flat, sequential.weights.flat, rtol=0, atol=1e-5)
    assert result.stop_reason == "completed 3 rounds"
    assert not ray.is_initialized()
