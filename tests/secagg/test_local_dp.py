"""Local DP (DP-SGD on the clients) under secure aggregation: the two compose.

The server never sees one client's update, yet the unmasked sum is the clients'
DP-trained updates (within the quantization step), and the epsilon each client
sent in the clear is what ``privacy.local_epsilon`` reports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from fedloom import simulate  # noqa: E402
from fedloom.client import TorchClient  # noqa: E402
from fedloom.core import ClientContext, Config, FitRes, Vector, Weights  # noqa: E402
from fedloom.errors import ConfigError  # noqa: E402
from fedloom.secagg import SecAggPlus  # noqa: E402
from fedloom.secagg.quantize import quantization_error_bound  # noqa: E402
from fedloom.strategies import FedNova, LocalDP, Plugin, Strategy  # noqa: E402

logging.getLogger("fedloom").setLevel(logging.ERROR)

NUM_CLIENTS = 4
EXAMPLES = 64  # per client: all clients share one sample rate, so one noise search
BUDGET = LocalDP(epsilon=4.0, delta=1e-3, clip_norm=1.0, rounds=2)
SECAGG = SecAggPlus(clipping_range=1.0)


class _Recording(TorchClient):
    """A TorchClient that keeps what each of its fits returned (the test's ground truth)."""

    results: ClassVar[dict[str, list[FitRes]]] = {}

    def __init__(self, client_id: str, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.client_id = client_id

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        result, kept = super().fit_plugins(weights, config, tensors, state)
        self.results.setdefault(self.client_id, []).append(result)
        return result, kept


def _client_fn(context: ClientContext) -> TorchClient:
    """Client i: a linear 4 -> 2 model on its own 64 points of a separable problem."""
    rng = np.random.default_rng(context.partition_id)
    x = rng.normal(size=(EXAMPLES, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return _Recording(
        context.client_id,
        model,
        train=(torch.from_numpy(x), torch.from_numpy(y)),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        batch_size=16,
    )


@pytest.mark.e2e
def test_secure_sum_is_the_clients_dp_trained_updates_and_epsilon_is_reported() -> None:
    _Recording.results = {}
    initial = Weights({"weight": np.zeros((2, 4), np.float32), "bias": np.zeros(2, np.float32)})
    strategy = Strategy(evaluate_sampler=None, plugins=(BUDGET,), secure_aggregation=SECAGG)

    result = simulate(
        _client_fn, num_clients=NUM_CLIENTS, rounds=1, strategy=strategy, initial_weights=initial
    )

    fits = {cid: runs[0] for cid, runs in _Recording.results.items()}
    assert len(fits) == NUM_CLIENTS
    # FedAvg's weighted mean of the DP-trained updates, computed from what each client returned
    start = initial.flat.astype(np.float64)
    total = sum(f.num_examples * (f.weights.flat.astype(np.float64) - start) for f in fits.values())
    expected = start + total / sum(f.num_examples for f in fits.values())
    step = quantization_error_bound(clipping_range=1.0, bits=24, stochastic=True)
    error = np.abs(result.weights.flat.astype(np.float64) - expected).max()
    assert error <= step + 1e-7  # + float32 rounding of the new weights
    assert np.abs(expected).max() > 100 * step  # the clients did move the model
    # every client's epsilon came in the clear: the round reports the largest of them
    spent = [float(f.metrics["dpsgd.epsilon"]) for f in fits.values()]
    assert result.history.last("privacy.local_epsilon") == pytest.approx(max(spent))
    assert 0 < max(spent) < BUDGET.epsilon  # one of 2 planned fits: part of the budget
    assert result.history.last("privacy.local_delta") == BUDGET.delta


@pytest.mark.e2e
def test_secure_local_dp_spends_at_most_the_budget_over_the_planned_rounds() -> None:
    _Recording.results = {}
    strategy = Strategy(evaluate_sampler=None, plugins=(BUDGET,), secure_aggregation=SECAGG)

    result = simulate(_client_fn, num_clients=NUM_CLIENTS, rounds=2, strategy=strategy)

    spent = dict(result.history.series("privacy.local_epsilon"))
    assert 0 < spent[1] < spent[2] <= BUDGET.epsilon * (1 + 1e-9)
    assert spent[2] == pytest.approx(BUDGET.epsilon, rel=0.05)  # the budget is used, not wasted
    assert all(r.failures == {} for r in result.history)


def test_secure_aggregation_accepts_local_dp_but_still_refuses_update_changing_plugins() -> None:
    strategy = Strategy(plugins=(BUDGET,), secure_aggregation=SECAGG)
    assert strategy.clear_metrics == ("dpsgd.epsilon",)
    assert Strategy(plugins=(BUDGET,)).clear_metrics == ()  # without SecAgg, metrics as usual

    with pytest.raises(ConfigError, match="fednova plug-in adjusts each client's update"):
        Strategy(plugins=(FedNova(),), secure_aggregation=SECAGG)


class _ReadsLoss(Plugin):
    """A metrics-only plug-in that wants a metric secure aggregation must not reveal."""

    name = "reads_loss"
    required_metrics = ("loss",)
    reads_metrics_only = True


def test_secure_aggregation_refuses_metrics_only_plugins_needing_non_accounting_metrics() -> None:
    with pytest.raises(ConfigError, match=r"needs each client's metrics \['loss'\]") as caught:
        Strategy(plugins=(_ReadsLoss(),), secure_aggregation=SECAGG)

    assert "dpsgd.epsilon" in str(caught.value)
    assert caught.value.field == "plugins"
