"""The quickstart with a Keras 3 model (examples/quickstart/keras_task.py, torch backend)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import fedloom
from fedloom.config import load_config
from fedloom.data import Dirichlet

pytest.importorskip("keras")  # in the dev extra, so CI always runs this

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

pytestmark = pytest.mark.e2e


@pytest.fixture
def keras_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/quickstart/keras_task.py, imported fresh from its folder."""
    monkeypatch.syspath_prepend(str(QUICKSTART))
    monkeypatch.delitem(sys.modules, "keras_task", raising=False)
    module = importlib.import_module("keras_task")
    assert Path(module.__file__ or "").parent == QUICKSTART
    yield module
    sys.modules.pop("keras_task", None)


def test_quickstart_keras_learns_digits(keras_task: ModuleType) -> None:
    result = fedloom.simulate(
        keras_task.client_fn,
        num_clients=10,
        rounds=5,
        partitioner=Dirichlet(alpha=0.5),
        evaluate_fn=keras_task.evaluate,
        seed=0,
    )

    accuracy = dict(result.history.series("central.accuracy"))
    assert sorted(accuracy) == [0, 1, 2, 3, 4, 5]
    # An untrained 10-class model is at chance, about 0.1; the Keras model reaches
    # about 0.94 after 5 rounds, like the torch one.
    assert accuracy[0] < 0.2
    assert accuracy[5] > 0.85
    assert result.stop_reason == "completed 5 rounds"


def test_quickstart_keras_config_loads_and_names_the_keras_app() -> None:
    config = load_config(QUICKSTART / "fedloom-keras.toml")

    assert config.clients.app == "keras_task:client_fn"
    assert config.run.name == "quickstart-keras"
