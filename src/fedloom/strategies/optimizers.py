"""Server optimizers: how the aggregated update moves the global weights.

The server sees one aggregated update per round, ``delta`` (the mean of client
deltas, new minus old weights, so ``x + delta`` is FedAvg), and treats it as a
pseudo-gradient that already points downhill. `SGD` applies it as is;
`Momentum` is FedAvgM (Hsu et al. 2019, https://arxiv.org/abs/1909.06335);
`Adagrad`, `Adam` and `Yogi` are FedAdagrad, FedAdam and FedYogi from
Algorithm 2 of Reddi et al. 2021, "Adaptive Federated Optimization"
(https://arxiv.org/abs/2003.00295). `SERVER_OPTIMIZERS` maps config names to
the classes.

State is a mapping of name -> array, passed in and returned, never kept on the
optimizer (so it can be checkpointed and compared). Every step computes in the
params' dtype and returns new arrays; inputs are never modified.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from fedloom.core import Vector
from fedloom.errors import ConfigError

__all__ = [
    "SERVER_OPTIMIZERS",
    "SGD",
    "Adagrad",
    "Adam",
    "Momentum",
    "OptimizerState",
    "ServerOptimizer",
    "Yogi",
]

OptimizerState: TypeAlias = Mapping[str, Vector]


class ServerOptimizer(ABC):
    """Base class: subclass it and implement `step` (and `init` if it keeps state)."""

    def init(self, params: Vector) -> OptimizerState:
        """The optimizer's state before the first round."""
        return {}

    @abstractmethod
    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        """New global params from the aggregated `update` (new minus old weights)."""


@dataclass(frozen=True, kw_only=True)
class SGD(ServerOptimizer):
    """``x <- x + lr * update``; with ``lr = 1`` this is FedAvg's plain apply."""

    lr: float = 1.0

    def __post_init__(self) -> None:
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError(
                f"lr must be a positive number, got {self.lr}. Use 1.0 for FedAvg.",
                field="lr",
                value=self.lr,
            )

    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        if self.lr == 1.0:
            return params + update, state
        return params + params.dtype.type(self.lr) * update, state


@dataclass(frozen=True, kw_only=True)
class Momentum(ServerOptimizer):
    """FedAvgM: server momentum over the aggregated update.

    Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification",
    https://arxiv.org/abs/1909.06335. With ``delta_t`` the aggregated update::

        v_{-1} = 0
        v_t     = momentum * v_{t-1} + delta_t
        x_{t+1} = x_t + lr * v_t

    With ``momentum = 0`` this is `SGD`. State: ``{"velocity": v}``.

    Where fedloom departs from / follows the paper: the paper writes the update
    as old minus new weights and steps ``x - v``; fedloom's update is new minus
    old, so the same rule reads ``x + lr * v`` (``lr = 1`` is the paper's).

    Args:
        lr: the server learning rate, > 0.
        momentum: the decay of the velocity, in [0, 1).
    """

    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr, "Use 1.0 for FedAvgM as in Hsu et al. 2019.")
        _check_decay(
            "momentum",
            self.momentum,
            "Use 0.9 as in Hsu et al. 2019, or 0 for plain FedAvg; 1 or more never "
            "forgets an update and diverges.",
        )

    def init(self, params: Vector) -> OptimizerState:
        return {"velocity": np.zeros_like(params)}

    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        dtype = params.dtype
        delta = np.asarray(update, dtype=dtype)
        velocity_prev = _state_vector(state, "velocity", params, "Momentum")
        velocity = dtype.type(self.momentum) * velocity_prev + delta
        return params + dtype.type(self.lr) * velocity, {"velocity": velocity}


@dataclass(frozen=True, kw_only=True)
class Adagrad(ServerOptimizer):
    """FedAdagrad: Algorithm 2 of Reddi et al. 2021 with the Adagrad second moment.

    Reddi et al. 2021, "Adaptive Federated Optimization",
    https://arxiv.org/abs/2003.00295. With ``delta_t`` the aggregated update
    and all operations per coordinate::

        m_{-1} = 0,  v_{-1} = tau**2
        m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
        v_t     = v_{t-1} + delta_t**2
        x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

    State: ``{"m": m, "v": v}``; ``v`` never decreases.

    Where fedloom departs from / follows the paper: it follows Algorithm 2
    exactly. The paper asks for ``v_{-1} >= tau**2``; fedloom starts at exactly
    ``tau**2``. There is no bias correction (the paper has none). ``beta1``
    defaults to 0.9, the value of the paper's experiments.

    Args:
        lr: the server learning rate ``eta``, > 0 (no default: the paper tunes it per task).
        beta1: the decay of the update average ``m``, in [0, 1).
        tau: the adaptivity ``tau`` > 0; smaller is more adaptive.
    """

    lr: float
    beta1: float = 0.9
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr, _LR_HINT)
        _check_decay("beta1", self.beta1, _BETA1_HINT)
        _check_positive("tau", self.tau, _TAU_HINT)

    def init(self, params: Vector) -> OptimizerState:
        return _adaptive_init(params, self.tau)

    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        delta, m, v_prev = _first_moment(params, update, state, self.beta1, "Adagrad")
        v = v_prev + np.square(delta)
        return _adaptive_apply(params, m, v, self.lr, self.tau)


@dataclass(frozen=True, kw_only=True)
class Adam(ServerOptimizer):
    """FedAdam: Algorithm 2 of Reddi et al. 2021 with the Adam second moment.

    Reddi et al. 2021, "Adaptive Federated Optimization",
    https://arxiv.org/abs/2003.00295. With ``delta_t`` the aggregated update
    and all operations per coordinate::

        m_{-1} = 0,  v_{-1} = tau**2
        m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
        v_t     = beta2 * v_{t-1} + (1 - beta2) * delta_t**2
        x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

    State: ``{"m": m, "v": v}``.

    Where fedloom departs from / follows the paper: it follows Algorithm 2
    exactly, so unlike Adam in deep-learning libraries there is **no bias
    correction** of ``m`` or ``v``, and ``tau`` is added outside the square
    root. The paper asks for ``v_{-1} >= tau**2``; fedloom starts at exactly
    ``tau**2`` (not 0).

    Args:
        lr: the server learning rate ``eta``, > 0 (no default: the paper tunes it per task).
        beta1: the decay of the update average ``m``, in [0, 1).
        beta2: the decay of the squared-update average ``v``, in [0, 1).
        tau: the adaptivity ``tau`` > 0; smaller is more adaptive.

    Example:
        >>> adam = Adam(lr=0.1, tau=0.1)
        >>> params = np.zeros(2)
        >>> params, state = adam.step(params, np.array([4.9, -0.1]), adam.init(params))
        >>> state["v"]  # 0.99 * 0.1**2 + 0.01 * [4.9**2, 0.1**2]
        array([0.25, 0.01])
    """

    lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr, _LR_HINT)
        _check_decay("beta1", self.beta1, _BETA1_HINT)
        _check_decay("beta2", self.beta2, _BETA2_HINT)
        _check_positive("tau", self.tau, _TAU_HINT)

    def init(self, params: Vector) -> OptimizerState:
        return _adaptive_init(params, self.tau)

    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        delta, m, v_prev = _first_moment(params, update, state, self.beta1, "Adam")
        dtype = params.dtype
        v = dtype.type(self.beta2) * v_prev + dtype.type(1.0 - self.beta2) * np.square(delta)
        return _adaptive_apply(params, m, v, self.lr, self.tau)


@dataclass(frozen=True, kw_only=True)
class Yogi(ServerOptimizer):
    """FedYogi: Algorithm 2 of Reddi et al. 2021 with the Yogi second moment.

    Reddi et al. 2021, "Adaptive Federated Optimization",
    https://arxiv.org/abs/2003.00295. With ``delta_t`` the aggregated update
    and all operations per coordinate::

        m_{-1} = 0,  v_{-1} = tau**2
        m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
        v_t     = v_{t-1} - (1 - beta2) * delta_t**2 * sign(v_{t-1} - delta_t**2)
        x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

    So ``v`` moves toward ``delta**2`` by a step of ``(1 - beta2) * delta**2``:
    up where ``v_{t-1} < delta_t**2``, down where ``v_{t-1} > delta_t**2``, and
    not at all where they are equal (``sign(0) = 0``). State: ``{"m": m, "v": v}``.

    Where fedloom departs from / follows the paper: it follows Algorithm 2
    exactly, with no bias correction. The paper asks for ``v_{-1} >= tau**2``;
    fedloom starts at exactly ``tau**2`` (not 0).

    Args:
        lr: the server learning rate ``eta``, > 0 (no default: the paper tunes it per task).
        beta1: the decay of the update average ``m``, in [0, 1).
        beta2: sets the step ``(1 - beta2) * delta**2`` of ``v``, in [0, 1).
        tau: the adaptivity ``tau`` > 0; smaller is more adaptive.
    """

    lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr, _LR_HINT)
        _check_decay("beta1", self.beta1, _BETA1_HINT)
        _check_decay("beta2", self.beta2, _BETA2_HINT)
        _check_positive("tau", self.tau, _TAU_HINT)

    def init(self, params: Vector) -> OptimizerState:
        return _adaptive_init(params, self.tau)

    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        delta, m, v_prev = _first_moment(params, update, state, self.beta1, "Yogi")
        square = np.square(delta)
        step = params.dtype.type(1.0 - self.beta2) * square
        v = v_prev - step * np.sign(v_prev - square)
        return _adaptive_apply(params, m, v, self.lr, self.tau)


# --- shared pieces of Algorithm 2 ------------------------------------------------------

_LR_HINT = (
    "It scales every server step; the paper tunes it on a log grid per task (try 0.01 to 1). "
    "A negative lr would move against the clients' update."
)
_BETA1_HINT = "It is the decay of the update average m; the paper uses 0.9, and 0 turns it off."
_BETA2_HINT = "It is the decay of the squared-update average v; the paper uses 0.99."
_TAU_HINT = (
    "It keeps the step m / (sqrt(v) + tau) bounded and sets the start v = tau**2; "
    "the default is 1e-3."
)


def _check_positive(field: str, value: float, hint: str) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{field} must be a finite number > 0, got {value!r}. {hint}",
            field=field,
            value=value,
        )


def _check_decay(field: str, value: float, hint: str) -> None:
    if not (_is_real(value) and 0 <= value < 1):
        raise ConfigError(
            f"{field} must be in [0, 1), got {value!r}. {hint}", field=field, value=value
        )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _state_vector(state: OptimizerState, key: str, params: Vector, name: str) -> Vector:
    """``state[key]`` in the params' dtype, or a ConfigError if it is missing or misshapen."""
    if key not in state:
        raise ConfigError(
            f"{name} state has no {key!r} (it has {sorted(state)}); it was made by another "
            f"server optimizer. Start from {name}(...).init(params), or resume with the "
            "server_opt the state was saved with.",
            field="server_opt",
            value=name,
        )
    value = np.asarray(state[key], dtype=params.dtype)
    if value.shape != params.shape:
        raise ConfigError(
            f"{name} state {key!r} has shape {value.shape}; the params have {params.shape}. "
            "The state belongs to another model: start from init(params).",
            field="server_opt",
            value=name,
        )
    return value


def _adaptive_init(params: Vector, tau: float) -> OptimizerState:
    """Algorithm 2's start: ``m_{-1} = 0`` and ``v_{-1} = tau**2``."""
    return {"m": np.zeros_like(params), "v": np.full_like(params, tau * tau)}


def _first_moment(
    params: Vector, update: Vector, state: OptimizerState, beta1: float, name: str
) -> tuple[Vector, Vector, Vector]:
    """``(delta_t, m_t, v_{t-1})`` in the params' dtype."""
    dtype = params.dtype
    delta = np.asarray(update, dtype=dtype)
    m_prev = _state_vector(state, "m", params, name)
    v_prev = _state_vector(state, "v", params, name)
    m = dtype.type(beta1) * m_prev + dtype.type(1.0 - beta1) * delta
    return delta, m, v_prev


def _adaptive_apply(
    params: Vector, m: Vector, v: Vector, lr: float, tau: float
) -> tuple[Vector, OptimizerState]:
    """``x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)`` and the new state."""
    dtype = params.dtype
    new_params = params + dtype.type(lr) * m / (np.sqrt(v) + dtype.type(tau))
    return new_params, {"m": m, "v": v}


SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
    "yogi": Yogi,
    "adagrad": Adagrad,
}
"""Server optimizers by config name, so presets and TOML configs can name one."""
