"""GradientClient: local SGD on a loss-and-gradient function, with and without client plug-ins.

Most checks train the quadratic f(w) = 0.5 * ||w - t||^2, whose gradient is
w - t, with lr 0.1, so every expected number is a line of arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom import ClientContext, Strategy, simulate
from fedloom.client import GradientClient
from fedloom.client.gradient import GradFn
from fedloom.core import Config, FitRes, Vector, Weights
from fedloom.errors import ConfigError, ProtocolError
from fedloom.strategies.plugins import Scaffold

Gradients = tuple[float, Mapping[str, NDArray[np.floating]]]


def _quadratic(target: float | list[float]) -> GradFn:
    """grad_fn of f(w) = 0.5 * ||w - t||^2: the loss and the gradient w - t."""
    t = np.asarray(target, dtype=np.float64)

    def grad_fn(weights: Weights, rng: np.random.Generator) -> Gradients:
        error = weights["w"] - t
        return 0.5 * float((error**2).sum()), {"w": error}

    return grad_fn


def _client(
    target: float | list[float] = 1.0,
    start: float | list[float] = 0.0,
    *,
    lr: float = 0.1,
    local_steps: int = 2,
) -> GradientClient:
    weights = {"w": np.atleast_1d(np.asarray(start, dtype=np.float64))}
    return GradientClient(
        weights, _quadratic(target), num_examples=4, lr=lr, local_steps=local_steps
    )


def _fit_plugins(
    client: GradientClient,
    config: Config,
    tensors: Mapping[str, Vector] | None = None,
    state: Mapping[str, Vector] | None = None,
) -> tuple[FitRes, dict[str, Vector]]:
    return client.fit_plugins(client.get_weights(), config, tensors or {}, state or {})


def _w(result: FitRes) -> list[float]:
    assert isinstance(result.weights, Weights)
    return [float(value) for value in result.weights["w"]]


# Plain fit -------------------------------------------------------------------------------------


def test_gradient_client_one_sgd_step_moves_towards_the_target() -> None:
    client = _client(local_steps=1)

    result = client.fit(client.get_weights(), {"seed": 0})

    # g = 0 - 1 = -1; w <- 0 - 0.1 * -1 = 0.1. The loss is measured before the step: 0.5 * 1.
    assert _w(result) == pytest.approx([0.1])
    assert result.num_examples == 4
    assert result.metrics == {"loss": pytest.approx(0.5)}


def test_gradient_client_fit_reports_the_mean_loss_over_the_steps() -> None:
    client = _client(local_steps=2)

    result = client.fit(client.get_weights(), {"seed": 0})

    # Step 1 at w = 0: loss 0.5, w -> 0.1. Step 2 at w = 0.1: g = -0.9, loss 0.5 * 0.81 = 0.405,
    # w -> 0.1 + 0.09 = 0.19. Mean loss (0.5 + 0.405) / 2 = 0.4525.
    assert _w(result) == pytest.approx([0.19])
    assert result.metrics["loss"] == pytest.approx(0.4525)


def test_gradient_client_config_overrides_local_steps_and_lr() -> None:
    client = _client(lr=0.5, local_steps=5)

    result = client.fit(client.get_weights(), {"seed": 0, "local_steps": 1, "lr": 0.25})

    # One step of lr 0.25 (not five of lr 0.5): 0 + 0.25 * 1 = 0.25.
    assert _w(result) == pytest.approx([0.25])


def test_gradient_client_get_weights_returns_the_last_fit() -> None:
    client = _client(local_steps=1)

    client.fit(client.get_weights(), {"seed": 0})

    assert client.get_weights()["w"].tolist() == pytest.approx([0.1])


def test_gradient_client_fit_leaves_the_received_weights_alone() -> None:
    client = _client(local_steps=3)
    weights = client.get_weights()

    client.fit(weights, {"seed": 0})

    assert weights["w"].tolist() == [0.0]


def test_gradient_client_seeds_the_minibatch_rng_from_the_config() -> None:
    draws: list[float] = []

    def grad_fn(weights: Weights, rng: np.random.Generator) -> Gradients:
        draws.append(float(rng.random()))
        return 0.0, {"w": np.zeros(1)}

    client = GradientClient({"w": [0.0]}, grad_fn, num_examples=1, local_steps=2)

    client.fit(client.get_weights(), {"seed": 5})
    client.fit(client.get_weights(), {"seed": 5})

    assert draws[:2] == draws[2:]
    assert draws[:2] == np.random.default_rng(5).random(2).tolist()


def test_gradient_client_evaluate_uses_evaluate_fn() -> None:
    client = GradientClient(
        {"w": [2.0]},
        _quadratic(1.0),
        num_examples=7,
        evaluate_fn=lambda w: (float(w["w"][0]) * 3, {"accuracy": 0.5}),
    )

    result = client.evaluate(client.get_weights(), {})

    assert result.loss == 6.0
    assert result.num_examples == 7
    assert result.metrics == {"accuracy": 0.5}


def test_gradient_client_evaluate_without_evaluate_fn_raises_config_error() -> None:
    client = _client()

    with pytest.raises(ConfigError, match="built without an evaluate function"):
        client.evaluate(client.get_weights(), {})


def test_gradient_client_rejects_gradients_for_other_tensors() -> None:
    client = GradientClient({"w": [0.0]}, lambda w, rng: (0.0, {"v": np.zeros(1)}), num_examples=1)

    with pytest.raises(ConfigError, match=r"missing \['w'\], unexpected \['v'\]"):
        client.fit(client.get_weights(), {})


def test_gradient_client_rejects_a_gradient_of_another_shape() -> None:
    client = GradientClient(
        {"w": [0.0, 0.0]}, lambda w, rng: (0.0, {"w": np.zeros(3)}), num_examples=1
    )

    with pytest.raises(ConfigError, match=r"shape \(3,\) for 'w'; expected \(2,\)"):
        client.fit(client.get_weights(), {})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_examples": -1}, "num_examples must be an int >= 0"),
        ({"num_examples": 1, "lr": 0.0}, "lr must be a positive number"),
        ({"num_examples": 1, "local_steps": 0}, "local_steps must be an int >= 1"),
    ],
)
def test_gradient_client_validates_its_arguments(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GradientClient({"w": [0.0]}, _quadratic(1.0), **options)  # type: ignore[arg-type]


# Plug-ins --------------------------------------------------------------------------------------


def test_gradient_client_fit_plugins_without_plugins_equals_fit_and_keeps_the_state() -> None:
    kept = {"scaffold.c_i": np.ones(1)}

    plain = _client(local_steps=3).fit(_client().get_weights(), {"seed": 1})
    result, state = _fit_plugins(_client(local_steps=3), {"seed": 1}, state=kept)

    assert isinstance(result.weights, Weights)
    assert isinstance(plain.weights, Weights)
    assert result.weights.equals(plain.weights)
    assert result.metrics == plain.metrics
    assert state == kept


def test_gradient_client_fedprox_pulls_towards_the_received_weights() -> None:
    client = _client(start=0.5)

    result, _ = _fit_plugins(client, {"plugins": "fedprox", "fedprox.mu": 0.5})

    # g = (w - 1) + 0.5 * (w - 0.5). Step 1 at w = 0.5: g = -0.5 + 0 -> w = 0.55.
    # Step 2: g = -0.45 + 0.5 * 0.05 = -0.425 -> w = 0.55 + 0.0425 = 0.5925 (plain SGD: 0.595).
    assert _w(result) == pytest.approx([0.5925])


def test_gradient_client_ridge_adds_strength_times_w() -> None:
    client = _client(start=0.5)

    result, _ = _fit_plugins(client, {"plugins": "ridge", "ridge.strength": 0.5})

    # g = (w - 1) + 0.5 w. Step 1 at 0.5: g = -0.5 + 0.25 = -0.25 -> w = 0.525.
    # Step 2: g = -0.475 + 0.2625 = -0.2125 -> w = 0.525 + 0.02125 = 0.54625.
    assert _w(result) == pytest.approx([0.54625])


def test_gradient_client_lasso_adds_strength_times_sign_w() -> None:
    client = _client(start=-0.5)

    result, _ = _fit_plugins(client, {"plugins": "lasso", "lasso.strength": 0.2})

    # g = (w - 1) + 0.2 sign(w), w < 0 throughout. Step 1 at -0.5: g = -1.5 - 0.2 = -1.7
    # -> w = -0.33. Step 2: g = -1.33 - 0.2 = -1.53 -> w = -0.33 + 0.153 = -0.177.
    assert _w(result) == pytest.approx([-0.177])


def test_gradient_client_scaffold_corrects_steps_and_returns_the_control_delta() -> None:
    client = _client()
    tensors = {"scaffold.c": np.array([0.5])}
    state = {"scaffold.c_i": np.array([0.2])}

    result, new_state = _fit_plugins(client, {"plugins": "scaffold"}, tensors, state)

    # Every gradient gains c - c_i = 0.3. Step 1 at 0: g = -1 + 0.3 = -0.7 -> w = 0.07.
    # Step 2: g = -0.93 + 0.3 = -0.63 -> w = 0.07 + 0.063 = 0.133.
    # c_i+ = c_i - c + (x - y) / (K lr) = 0.2 - 0.5 + (0 - 0.133) / 0.2 = -0.3 - 0.665 = -0.965,
    # the mean raw gradient (-1 - 0.93) / 2, as option II intends. delta_c = -0.965 - 0.2.
    assert _w(result) == pytest.approx([0.133])
    assert result.tensors["scaffold.delta_c"].tolist() == pytest.approx([-1.165])
    assert new_state["scaffold.c_i"].tolist() == pytest.approx([-0.965])


def test_gradient_client_scaffold_starts_from_zero_c_i() -> None:
    client = _client()

    result, new_state = _fit_plugins(
        client, {"plugins": "scaffold"}, {"scaffold.c": np.array([0.5])}
    )

    # c_i = 0, so steps gain 0.5: -1 + 0.5 -> w = 0.05; -0.95 + 0.5 = -0.45 -> w = 0.095.
    # c_i+ = 0 - 0.5 + (0 - 0.095) / 0.2 = -0.975 = delta_c (the mean of -1 and -0.95).
    assert _w(result) == pytest.approx([0.095])
    assert result.tensors["scaffold.delta_c"].tolist() == pytest.approx([-0.975])
    assert new_state["scaffold.c_i"].tolist() == pytest.approx([-0.975])


def test_gradient_client_scaffold_does_not_write_to_the_server_tensor() -> None:
    c = np.array([0.5])
    c.setflags(write=False)

    _fit_plugins(_client(), {"plugins": "scaffold"}, {"scaffold.c": c})

    assert c.tolist() == [0.5]


def test_gradient_client_scaffold_without_the_server_tensor_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"needs the server's control variate, tensor 'scaff"):
        _fit_plugins(_client(), {"plugins": "scaffold"})


def test_gradient_client_scaffold_with_momentum_raises_config_error() -> None:
    config = {
        "plugins": "scaffold,optimizer",
        "optimizer.kind": "momentum",
        "optimizer.lr": 0.1,
        "optimizer.momentum": 0.9,
    }

    with pytest.raises(ConfigError, match="SCAFFOLD option II needs plain SGD"):
        _fit_plugins(_client(), config, {"scaffold.c": np.zeros(1)})


def test_gradient_client_fednova_reports_the_local_steps_for_sgd() -> None:
    result, _ = _fit_plugins(_client(local_steps=3), {"plugins": "fednova"})

    # Plain SGD: a_i = K = 3; training itself is unchanged (0 -> 0.1 -> 0.19 -> 0.271).
    assert result.metrics["fednova.a"] == 3.0
    assert _w(result) == pytest.approx([0.271])


def test_gradient_client_momentum_optimizer_two_steps_and_its_fednova_a() -> None:
    config = {
        "plugins": "optimizer,fednova",
        "optimizer.kind": "momentum",
        "optimizer.lr": 0.1,
        "optimizer.momentum": 0.9,
    }

    result, _ = _fit_plugins(_client(), config)

    # Step 1: g = -1, v = -1, w = 0.1. Step 2: g = -0.9, v = 0.9 * -1 - 0.9 = -1.8,
    # w = 0.1 + 0.18 = 0.28. a_i = (K - rho (1 - rho^K) / (1 - rho)) / (1 - rho)
    # = (2 - 0.9 * 0.19 / 0.1) / 0.1 = (2 - 1.71) / 0.1 = 2.9: g1 counts 1 + 0.9, g2 counts 1.
    assert _w(result) == pytest.approx([0.28])
    assert result.metrics["fednova.a"] == pytest.approx(2.9)


def test_gradient_client_adam_optimizer_first_step_is_lr_times_sign() -> None:
    config = {"plugins": "optimizer", "optimizer.kind": "adam", "optimizer.lr": 0.1}

    result, _ = _fit_plugins(_client(local_steps=1), config)

    # m = 0.1 g, v = 0.001 g^2; bias-corrected m^ = g, v^ = g^2, so the step is
    # lr * g / (|g| + 1e-8) = 0.1 * -1 / (1 + 1e-8): w = 0.1 / (1 + 1e-8).
    assert _w(result) == pytest.approx([0.1 / (1 + 1e-8)], rel=1e-12)


def test_gradient_client_sgd_optimizer_sets_the_learning_rate() -> None:
    config = {"plugins": "optimizer", "optimizer.kind": "sgd", "optimizer.lr": 0.5, "lr": 0.01}

    result, _ = _fit_plugins(_client(local_steps=1), config)

    # The plug-in's lr 0.5 wins over config["lr"]: w = 0 + 0.5 * 1.
    assert _w(result) == pytest.approx([0.5])


def test_gradient_client_fednova_with_adam_raises_config_error() -> None:
    config = {"plugins": "fednova,optimizer", "optimizer.kind": "adam", "optimizer.lr": 0.1}

    with pytest.raises(ConfigError, match="FedNova's normalization is defined for SGD"):
        _fit_plugins(_client(), config)


def test_gradient_client_elastic_reports_the_mean_absolute_gradient() -> None:
    client = _client(target=[1.0, -2.0], start=[0.0, 0.0])

    result, _ = _fit_plugins(client, {"plugins": "elastic", "elastic.tau": 0.5})

    # Step 1: g = [-1, 2] -> w = [0.1, -0.2]. Step 2: g = [-0.9, 1.8].
    # Mean |g| = [(1 + 0.9) / 2, (2 + 1.8) / 2] = [0.95, 1.9].
    assert result.tensors["elastic.sensitivity"].tolist() == pytest.approx([0.95, 1.9])


def test_gradient_client_unknown_plugin_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown client plug-in 'fedprx'.*'fedprox'"):
        _fit_plugins(_client(), {"plugins": "fedprx"})


# Through the in-process channel ----------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    client_id: str
    server_round: object
    c: Vector
    state_in: dict[str, Vector]
    state_out: dict[str, Vector]


class _Recording:
    """A GradientClient that notes what each fit_plugins call received and returned."""

    def __init__(self, inner: GradientClient, calls: list[_Call], client_id: str) -> None:
        self._inner = inner
        self._calls = calls
        self._client_id = client_id

    def get_weights(self) -> Weights:
        return self._inner.get_weights()

    def fit(self, weights: Weights, config: Config) -> FitRes:
        return self._inner.fit(weights, config)

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        result, new_state = self._inner.fit_plugins(weights, config, tensors, state)
        call = _Call(
            client_id=self._client_id,
            server_round=config["server_round"],
            c=np.array(tensors["scaffold.c"]),
            state_in=dict(state),
            state_out=new_state,
        )
        self._calls.append(call)
        return result, new_state


def test_gradient_client_scaffold_state_persists_between_rounds_in_simulate() -> None:
    """The channel keeps each client's c_i although it builds the client afresh per task."""
    calls: list[_Call] = []
    built: list[str] = []

    def client_fn(context: ClientContext) -> _Recording:
        built.append(context.client_id)
        inner = _client(target=float(context.partition_id), local_steps=2)
        return _Recording(inner, calls, context.client_id)

    strategy = Strategy(plugins=(Scaffold(),), evaluate_sampler=None)

    simulate(client_fn, num_clients=3, rounds=3, strategy=strategy)

    by_round = {(call.client_id, call.server_round): call for call in calls}
    assert len(built) == 11  # the plug-in check, the initial weights, then once per fit task
    assert all(by_round[(client_id, 1)].state_in == {} for client_id in "012")
    for client_id in "012":
        for server_round in (2, 3):
            before = by_round[(client_id, server_round - 1)].state_out
            after = by_round[(client_id, server_round)].state_in
            assert np.array_equal(after["scaffold.c_i"], before["scaffold.c_i"])
    # Round 1 from w = 0 with c = c_i = 0 is plain SGD on client t's quadratic:
    # w = 0 -> 0.1 t -> 0.19 t, so c_i+ = (0 - 0.19 t) / (2 * 0.1) = -0.95 t (the mean of the
    # raw gradients -t and -0.9 t). All 3 of 3 clients took part with 4 examples each, so the
    # server's c = 0 + mean_t(-0.95 t) = -0.95 * (0 + 1 + 2) / 3 = -0.95.
    assert by_round[("0", 1)].c.tolist() == [0.0]
    assert by_round[("2", 2)].state_in["scaffold.c_i"].tolist() == pytest.approx([-1.9])
    assert by_round[("0", 2)].c.tolist() == pytest.approx([-0.95])
