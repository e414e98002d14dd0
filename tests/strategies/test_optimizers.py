"""Server optimizers: FedAvgM momentum and FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021).

Every worked example follows Algorithm 2 of https://arxiv.org/abs/2003.00295 by
hand: ``m_t = beta1 m_{t-1} + (1 - beta1) delta_t``, the optimizer's ``v_t``, and
``x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)``, from ``m_{-1} = 0`` and
``v_{-1} = tau**2``, with no bias correction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from fedloom.errors import ConfigError
from fedloom.strategies.optimizers import (
    SERVER_OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    Momentum,
    OptimizerState,
    ServerOptimizer,
    Yogi,
)
from generators import FAST, FLOAT_DTYPES, finite_vectors

Array = NDArray[np.floating[Any]]

STATEFUL = [
    Momentum(lr=0.5, momentum=0.9),
    Adagrad(lr=0.1, beta1=0.9, tau=0.1),
    Adam(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1),
    Yogi(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1),
]
ALL = [SGD(lr=0.5), *STATEFUL]
IDS = [type(optimizer).__name__ for optimizer in ALL]


def _vector(values: Sequence[float], dtype: Any = np.float64) -> Array:
    return np.array(values, dtype=dtype)


def _run(
    optimizer: ServerOptimizer, params: Array, updates: Sequence[Sequence[float]]
) -> list[tuple[Array, OptimizerState]]:
    """Params and state after each of `updates`, starting from ``init(params)``."""
    state = optimizer.init(params)
    trace = []
    for update in updates:
        params, state = optimizer.step(params, _vector(update, params.dtype), state)
        trace.append((params, state))
    return trace


def _close(actual: Array, expected: Sequence[float]) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)


# --- Momentum (FedAvgM) ----------------------------------------------------------------


def test_momentum_steps_match_hand_computation() -> None:
    optimizer = Momentum(lr=0.5, momentum=0.9)

    trace = _run(optimizer, _vector([1.0, 2.0, 0.0]), [[1.0, -2.0, 0.0], [1.0, 0.0, 0.0]])

    # v_{-1} = 0. Step 1: v = 0.9 * 0 + [1, -2, 0] = [1, -2, 0];
    # x = [1, 2, 0] + 0.5 * [1, -2, 0] = [1.5, 1, 0].
    (params, state), (params_2, state_2) = trace
    _close(state["velocity"], [1.0, -2.0, 0.0])
    _close(params, [1.5, 1.0, 0.0])
    # Step 2: v = 0.9 * [1, -2, 0] + [1, 0, 0] = [1.9, -1.8, 0];
    # x = [1.5, 1, 0] + 0.5 * [1.9, -1.8, 0] = [2.45, 0.1, 0].
    _close(state_2["velocity"], [1.9, -1.8, 0.0])
    _close(params_2, [2.45, 0.1, 0.0])


def test_momentum_accumulates_repeated_updates() -> None:
    """A constant update builds speed: v_t = (1 + m + ... + m^t) delta."""
    optimizer = Momentum(lr=1.0, momentum=0.5)

    trace = _run(optimizer, _vector([0.0, 0.0]), [[1.0, -1.0]] * 3)

    # v = 1, 1.5, 1.75 (times [1, -1]); x is their running sum 1, 2.5, 4.25,
    # against 3 for plain SGD(lr=1).
    velocities = [state["velocity"][0] for _, state in trace]
    assert velocities == [1.0, 1.5, 1.75]
    _close(trace[-1][0], [4.25, -4.25])


def test_momentum_with_zero_momentum_is_sgd() -> None:
    params, update = _vector([1.0, -2.0, 3.0]), _vector([0.5, 0.25, -1.0])
    optimizer = Momentum(lr=0.5, momentum=0.0)

    new_params, _ = optimizer.step(params, update, optimizer.init(params))

    np.testing.assert_array_equal(new_params, SGD(lr=0.5).step(params, update, {})[0])


# --- Adagrad (FedAdagrad) --------------------------------------------------------------


def test_adagrad_steps_match_hand_computation() -> None:
    optimizer = Adagrad(lr=0.1, beta1=0.9, tau=0.3)

    trace = _run(optimizer, _vector([1.0, -1.0]), [[0.4, 0.0], [1.2, -0.4]])

    # m_{-1} = 0, v_{-1} = tau^2 = 0.09.
    # Step 1, delta = [0.4, 0]: m = 0.1 * delta = [0.04, 0];
    # v = 0.09 + delta^2 = [0.25, 0.09] (sqrt [0.5, 0.3]);
    # x = [1, -1] + 0.1 * [0.04 / (0.5 + 0.3), 0] = [1.005, -1].
    (params, state), (params_2, state_2) = trace
    _close(state["m"], [0.04, 0.0])
    _close(state["v"], [0.25, 0.09])
    _close(params, [1.005, -1.0])
    # Step 2, delta = [1.2, -0.4]: m = 0.9 * [0.04, 0] + 0.1 * delta = [0.156, -0.04];
    # v = [0.25 + 1.44, 0.09 + 0.16] = [1.69, 0.25] (sqrt [1.3, 0.5]);
    # x = [1.005 + 0.1 * 0.156 / 1.6, -1 + 0.1 * -0.04 / 0.8] = [1.01475, -1.005].
    _close(state_2["m"], [0.156, -0.04])
    _close(state_2["v"], [1.69, 0.25])
    _close(params_2, [1.01475, -1.005])


@FAST
@given(updates=st.lists(finite_vectors(3), min_size=1, max_size=5))
def test_adagrad_second_moment_never_decreases(updates: list[Array]) -> None:
    optimizer = Adagrad(lr=0.1)
    params: Array = np.zeros(3)
    state = optimizer.init(params)

    for update in updates:
        v_before = state["v"]
        params, state = optimizer.step(params, update, state)

        assert np.all(state["v"] >= v_before)


# --- Adam (FedAdam) --------------------------------------------------------------------


def test_adam_steps_match_hand_computation() -> None:
    optimizer = Adam(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1)

    trace = _run(optimizer, _vector([0.0, 0.0]), [[4.9, -0.1], [-0.5, 0.1], [0.0, 0.0]])

    # m_{-1} = 0, v_{-1} = tau^2 = 0.01.
    # Step 1, delta = [4.9, -0.1]: m = 0.1 * delta = [0.49, -0.01];
    # v = 0.99 * 0.01 + 0.01 * [24.01, 0.01] = [0.25, 0.01] (sqrt [0.5, 0.1]);
    # x = 0.1 * [0.49 / (0.5 + 0.1), -0.01 / (0.1 + 0.1)] = [0.049 / 0.6, -0.005].
    # (Starting from v_{-1} = 0 would give v = [0.2401, 0.0001]; bias correction
    # would turn m into m / (1 - 0.9) = delta.)
    (params, state), (params_2, state_2), (params_3, state_3) = trace
    _close(state["m"], [0.49, -0.01])
    _close(state["v"], [0.25, 0.01])
    _close(params, [0.049 / 0.6, -0.005])
    # Step 2, delta = [-0.5, 0.1]: m = 0.9 * [0.49, -0.01] + 0.1 * delta = [0.391, 0.001];
    # delta^2 = [0.25, 0.01] equals v, so v = 0.99 v + 0.01 v stays [0.25, 0.01];
    # x = [0.049 / 0.6 + 0.1 * 0.391 / 0.6, -0.005 + 0.1 * 0.001 / 0.2] = [0.0881 / 0.6, -0.0045].
    _close(state_2["m"], [0.391, 0.001])
    _close(state_2["v"], [0.25, 0.01])
    _close(params_2, [0.0881 / 0.6, -0.0045])
    # Step 3, delta = 0: both averages decay, m = 0.9 * m = [0.3519, 0.0009],
    # v = 0.99 * v = [0.2475, 0.0099], and x still moves along m.
    _close(state_3["m"], [0.3519, 0.0009])
    _close(state_3["v"], [0.2475, 0.0099])
    expected_3 = params_2 + 0.1 * np.array([0.3519, 0.0009]) / (np.sqrt([0.2475, 0.0099]) + 0.1)
    _close(params_3, list(expected_3))


# --- Yogi (FedYogi) --------------------------------------------------------------------


def test_yogi_steps_match_hand_computation() -> None:
    optimizer = Yogi(lr=1.0, beta1=0.9, beta2=0.75, tau=1.0)

    trace = _run(optimizer, _vector([0.0, 0.0, 0.0]), [[0.56, 1.5, 1.0], [2.56, 1.25, -1.5]])

    # m_{-1} = 0, v_{-1} = tau^2 = 1; v_t = v - 0.25 * delta^2 * sign(v - delta^2).
    # Step 1, delta = [0.56, 1.5, 1], delta^2 = [0.3136, 2.25, 1]:
    #   v > delta^2: v = 1 - 0.25 * 0.3136 = 0.9216 (sqrt 0.96);
    #   v < delta^2: v = 1 + 0.25 * 2.25 = 1.5625 (sqrt 1.25);
    #   v = delta^2: sign(0) = 0, v stays 1.
    # m = 0.1 * delta = [0.056, 0.15, 0.1];
    # x = [0.056 / 1.96, 0.15 / 2.25, 0.1 / 2].
    (params, state), (params_2, state_2) = trace
    _close(state["m"], [0.056, 0.15, 0.1])
    _close(state["v"], [0.9216, 1.5625, 1.0])
    _close(params, [0.056 / 1.96, 0.15 / 2.25, 0.05])
    # Step 2, delta = [2.56, 1.25, -1.5], delta^2 = [6.5536, 1.5625, 2.25]:
    #   v < delta^2: v = 0.9216 + 0.25 * 6.5536 = 2.56 (sqrt 1.6);
    #   v = delta^2: v stays 1.5625;
    #   v < delta^2: v = 1 + 0.25 * 2.25 = 1.5625 (sqrt 1.25).
    # m = 0.9 * [0.056, 0.15, 0.1] + 0.1 * delta = [0.3064, 0.26, -0.06];
    # x = x_1 + [0.3064 / 2.6, 0.26 / 2.25, -0.06 / 2.25].
    _close(state_2["m"], [0.3064, 0.26, -0.06])
    _close(state_2["v"], [2.56, 1.5625, 1.5625])
    _close(params_2, [0.056 / 1.96 + 0.3064 / 2.6, 0.41 / 2.25, 0.05 - 0.06 / 2.25])


def test_yogi_moves_v_toward_the_squared_update_by_a_fixed_step() -> None:
    """Down where v > delta^2, up where v < delta^2, still where equal; Adam mixes instead."""
    params, update = _vector([0.0, 0.0, 0.0]), _vector([0.5, 1.0, 2.0])
    yogi = Yogi(lr=1.0, beta2=0.75, tau=1.0)
    adam = Adam(lr=1.0, beta2=0.75, tau=1.0)

    _, yogi_state = yogi.step(params, update, yogi.init(params))
    _, adam_state = adam.step(params, update, adam.init(params))

    # v_{-1} = 1, delta^2 = [0.25, 1, 4].
    # Yogi: v = 1 - 0.25 * [0.25 * (+1), 1 * 0, 4 * (-1)] = [0.9375, 1, 2].
    # Adam: v = 0.75 * 1 + 0.25 * [0.25, 1, 4] = [0.8125, 1, 1.75].
    np.testing.assert_array_equal(yogi_state["v"], [0.9375, 1.0, 2.0])
    np.testing.assert_array_equal(adam_state["v"], [0.8125, 1.0, 1.75])


# --- all optimizers --------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", [Adagrad(lr=1.0, tau=0.1), Adam(lr=1.0, tau=0.1)])
def test_adaptive_init_starts_m_at_zero_and_v_at_tau_squared(optimizer: ServerOptimizer) -> None:
    state = optimizer.init(_vector([3.0, -4.0], np.float32))

    np.testing.assert_array_equal(state["m"], [0.0, 0.0])
    np.testing.assert_array_equal(state["v"], np.full(2, 0.1 * 0.1, np.float32))
    assert state["m"].dtype == state["v"].dtype == np.float32


def test_optimizers_default_to_the_papers_values() -> None:
    assert Momentum() == Momentum(lr=1.0, momentum=0.9)
    assert Adagrad(lr=0.1) == Adagrad(lr=0.1, beta1=0.9, tau=1e-3)
    assert Adam(lr=0.1) == Adam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    assert Yogi(lr=0.1) == Yogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)


@pytest.mark.parametrize(
    ("optimizer", "update_dtype"),
    [
        *[(optimizer, np.float32) for optimizer in ALL],
        # The new optimizers also cast a float64 update to the params' dtype
        # (SGD, unchanged here, would promote to float64).
        *[(optimizer, np.float64) for optimizer in STATEFUL],
    ],
    ids=[*IDS, *[f"{name}-float64-update" for name in IDS[1:]]],
)
def test_optimizers_keep_float32_params_float32(
    optimizer: ServerOptimizer, update_dtype: Any
) -> None:
    params = _vector([1.0, -2.0, 3.0], np.float32)
    state = optimizer.init(params)

    for update in ([0.5, 0.25, -1.0], [-0.5, 2.0, 0.0]):
        params, state = optimizer.step(params, _vector(update, update_dtype), state)

    assert params.dtype == np.float32
    assert all(value.dtype == np.float32 for value in state.values())


@pytest.mark.parametrize("optimizer", ALL, ids=IDS)
def test_optimizers_do_not_mutate_inputs(optimizer: ServerOptimizer) -> None:
    params = _vector([1.0, -2.0, 3.0])
    params, state = optimizer.step(params, _vector([0.5, 0.25, -1.0]), optimizer.init(params))
    update = _vector([-0.5, 2.0, 0.0])
    frozen = [params, update, *state.values()]
    copies = [array.copy() for array in frozen]
    for array in frozen:
        array.flags.writeable = False  # an in-place write would raise

    optimizer.step(params, update, state)

    for array, copy in zip(frozen, copies, strict=True):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMIZERS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@FAST
@given(data=st.data())
def test_optimizers_leave_params_still_under_a_zero_update(
    name: str, dtype: np.dtype[Any], data: st.DataObject
) -> None:
    """From the initial state (m = 0, velocity = 0), delta = 0 moves nothing, round after round."""
    optimizer_class: Any = SERVER_OPTIMIZERS[name]  # every entry takes lr
    optimizer = optimizer_class(lr=0.1)
    params = data.draw(finite_vectors(data.draw(st.integers(1, 8)), dtype=dtype))
    state = optimizer.init(params)

    new_params = params
    for _ in range(3):
        new_params, state = optimizer.step(new_params, np.zeros_like(params), state)

    np.testing.assert_array_equal(new_params, params)
    assert new_params.dtype == dtype


@pytest.mark.parametrize("optimizer", ALL, ids=IDS)
def test_optimizers_are_deterministic(optimizer: ServerOptimizer) -> None:
    updates = [[0.5, 0.25, -1.0], [-0.5, 2.0, 0.0], [0.1, -0.1, 3.0]]

    first = _run(optimizer, _vector([1.0, -2.0, 3.0]), updates)
    second = _run(optimizer, _vector([1.0, -2.0, 3.0]), updates)

    for (params_a, state_a), (params_b, state_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(params_a, params_b)
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            np.testing.assert_array_equal(state_a[key], state_b[key])


@pytest.mark.parametrize(
    ("make", "field", "value", "match"),
    [
        (lambda v: Momentum(lr=v), "lr", -1.0, r"lr must be a finite number > 0, got -1\.0"),
        (lambda v: Adam(lr=v), "lr", -0.1, r"lr must be a finite number > 0, got -0\.1\. "),
        (lambda v: Yogi(lr=v), "lr", float("inf"), r"lr must be a finite number > 0, got inf"),
        (lambda v: Adagrad(lr=v), "lr", float("nan"), r"lr must be a finite number > 0, got nan"),
        (lambda v: Adam(lr=v), "lr", "0.1", r"lr must be a finite number > 0, got '0\.1'"),
        (lambda v: Adam(lr=0.1, beta1=v), "beta1", 1.0, r"beta1 must be in \[0, 1\), got 1\.0"),
        (lambda v: Adagrad(lr=0.1, beta1=v), "beta1", -0.1, r"beta1 must be in \[0, 1\)"),
        (lambda v: Yogi(lr=0.1, beta2=v), "beta2", 1.0, r"beta2 must be in \[0, 1\), got 1\.0"),
        (lambda v: Adam(lr=0.1, tau=v), "tau", 0.0, r"tau must be a finite number > 0, got 0\.0"),
        (lambda v: Yogi(lr=0.1, tau=v), "tau", -1e-3, r"tau must be a finite number > 0"),
        (lambda v: Momentum(momentum=v), "momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ],
)
def test_optimizers_reject_invalid_hyperparameters(
    make: Any, field: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as error:
        make(value)

    assert error.value.field == field
    assert error.value.value is value


def test_adam_error_on_negative_lr_says_how_to_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"tunes it on a log grid.*negative lr would move against"
    ):
        Adam(lr=-0.1)


@pytest.mark.parametrize("optimizer", STATEFUL, ids=IDS[1:])
def test_optimizers_reject_state_from_another_optimizer(optimizer: ServerOptimizer) -> None:
    params = _vector([1.0, 2.0])

    with pytest.raises(ConfigError, match=r"state has no '\w+' \(it has \[\]\).*init\(params\)"):
        optimizer.step(params, params, SGD().init(params))


def test_adam_rejects_state_of_another_shape() -> None:
    optimizer = Adam(lr=0.1)

    with pytest.raises(
        ConfigError, match=r"Adam state 'm' has shape \(3,\); the params have \(2,\)"
    ):
        optimizer.step(_vector([1.0, 2.0]), _vector([1.0, 2.0]), optimizer.init(np.zeros(3)))


def test_server_optimizers_table_names_every_optimizer() -> None:
    assert dict(SERVER_OPTIMIZERS) == {
        "sgd": SGD,
        "momentum": Momentum,
        "adam": Adam,
        "yogi": Yogi,
        "adagrad": Adagrad,
    }
