"""Each "coming from X" page's fedloom code is a file in docs/snippets; each runs here, small."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import fedloom
from fedloom.config import load_config

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"


@pytest.fixture
def snippet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(SNIPPETS))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


def test_coming_from_flower_trains_a_torch_classifier(snippet) -> None:
    module = snippet("coming_from_flower")

    result = module.main(rounds=3, num_clients=5)

    losses = [loss for _, loss in result.history.series("evaluate.loss")]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    assert result.history.last("evaluate.accuracy") > 0.7


def test_coming_from_declearn_toml_runs_with_early_stopping_and_best_model(snippet) -> None:
    snippet("coming_from_declearn")
    federation = load_config(SNIPPETS / "coming_from_declearn.toml").build()

    result = fedloom.simulate(
        federation.client_fn,
        num_clients=federation.num_clients,
        rounds=federation.rounds,
        seed=federation.seed,
        strategy=federation.strategy,
        partitioner=federation.partitioner,
        evaluate_fn=federation.evaluate_fn,
        callbacks=federation.callbacks,
    )

    assert federation.num_clients == 4
    assert max(acc for _, acc in result.history.series("central.accuracy")) > 0.9
    assert federation.keep_best is not None
    assert federation.keep_best.weights is not None
    assert federation.keep_best.value <= result.history.last("central.loss")


def test_coming_from_fedn_runs_a_signed_compute_package(snippet) -> None:
    module = snippet("coming_from_fedn")

    result = module.main(rounds=2, num_clients=2)

    # The zero model's error on y = x @ [1, -2, 3] + 0.5 is about 15; two rounds learn it.
    assert result.history.last("evaluate.mse") < 0.2
    np.testing.assert_allclose(result.weights["w"], [1.0, -2.0, 3.0], atol=0.2)


def test_coming_from_openfed_async_and_hooks(snippet) -> None:
    module = snippet("coming_from_openfed")

    asynchronous = module.main_async(versions=6, num_clients=4)
    result, uploads = module.main_hooks(versions=3, num_clients=2)

    assert asynchronous.stop_reason == "completed 6 rounds"
    assert abs(float(asynchronous.weights["weight"][0, 0]) - 2.0) < 0.6
    assert result.stop_reason == "completed 3 rounds"
    assert [record.server_round for record in result.history] == [1, 2, 3]
    assert all(record.num_results == 2 for record in result.history)  # FedBuff's K = 2
    assert "staleness.max" in result.history[-1].metrics  # asynchronous over gRPC
    # StopAtVersion(3) stops a client after its upload for version 3; the other may be
    # stopped by the server instead, if version 3 filled up with its older update.
    assert any(line.endswith("uploaded for version 3") for line in uploads)
    assert {line.split()[0] for line in uploads} == {"rank1", "rank2"}


def test_coming_from_pyfed_keras_with_server_test_and_tensorboard(snippet, tmp_path) -> None:
    module = snippet("coming_from_pyfed")

    result = module.main(rounds=2, num_clients=3, run_dir=str(tmp_path / "run"))

    assert result.history.last("central.accuracy") > 0.6
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
