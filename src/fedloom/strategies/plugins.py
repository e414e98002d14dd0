"""Client plug-ins: what changes in local training, and the server half each one needs.

A plug-in is configured once, on the strategy. Its client half travels by
name in the fit config (``config["plugins"] = "fedprox,scaffold"`` plus
``"<plugin>.<param>"`` keys), so the same strategy drives clients in this
process or across the network; clients that apply plug-ins (TorchClient,
GradientClient) read those keys. The server half may keep state in
`StrategyState.plugins`, send vectors with each fit (`tensors`), and adjust
each result's update before it is folded (`start_round`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedloom.aggregators.mean import WeightedMean
from fedloom.core import Scalar, Vector
from fedloom.errors import ConfigError, InvalidResult, did_you_mean
from fedloom.privacy.local import DPSGDBudget

__all__ = [
    "Elastic",
    "FedNova",
    "FedProx",
    "Lasso",
    "LocalDP",
    "LocalOptimizer",
    "Plugin",
    "PluginRound",
    "Ridge",
    "Scaffold",
]


class PluginRound:
    """A plug-in's view of one round's aggregation; the default changes nothing."""

    def add(
        self,
        update: Vector,
        weight: float,
        *,
        tensors: Mapping[str, Vector],
        metrics: Mapping[str, Scalar],
    ) -> tuple[Vector, float]:
        """Adjust one client's update and weight before it is folded."""
        return update, weight

    def finish(self, update: Vector) -> tuple[Vector, dict[str, Vector]]:
        """Adjust the combined update; return it and the plug-in's new server state."""
        return update, {}


class Plugin(ABC):
    """Base of client plug-ins: a name, client-side parameters, and an optional server half."""

    name: ClassVar[str]
    required_tensors: ClassVar[tuple[str, ...]] = ()
    """Tensors every client result must carry (checked before aggregation)."""
    required_metrics: ClassVar[tuple[str, ...]] = ()
    """Finite numeric metrics every client result must carry (checked before aggregation)."""
    reads_metrics_only: ClassVar[bool] = False
    """Whether the server half only reads metrics: its rounds' ``add`` and ``finish``
    return the update and weight unchanged. Such a plug-in composes with secure
    aggregation when its required metrics are privacy accounting
    (`fedloom.privacy.local.ACCOUNTING_METRICS`), which clients then send in the clear."""

    def client_config(self) -> dict[str, Scalar]:
        """The ``"<name>.<param>"`` keys the client half reads."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f"{self.name}.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}

    def init(self, params: Vector) -> dict[str, Vector]:
        """Server state before round 1."""
        return {}

    def tensors(self, state: Mapping[str, Vector]) -> dict[str, Vector]:
        """Vectors sent to every client with its fit task."""
        return {}

    def start_round(
        self,
        state: Mapping[str, Vector],
        *,
        dim: int,
        dtype: np.dtype[np.floating],
        num_available: int,
    ) -> PluginRound:
        """Begin aggregating one round."""
        return PluginRound()

    def metrics(self, state: Mapping[str, Vector]) -> dict[str, Scalar]:
        """Round metrics the plug-in reads from its server state (recorded as they are)."""
        return {}


def _positive(value: float, name: str, hint: str) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value > 0
        and np.isfinite(value)
    ):
        raise ConfigError(
            f"{name} must be a positive number, got {value!r}. {hint}", field=name, value=value
        )


def _non_negative(value: float, name: str, hint: str) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value >= 0
        and np.isfinite(value)
    ):
        raise ConfigError(
            f"{name} must be a number >= 0, got {value!r}. {hint}", field=name, value=value
        )


@dataclass(frozen=True, kw_only=True)
class FedProx(Plugin):
    """FedProx's proximal term (Li et al. 2020, https://arxiv.org/abs/1812.06127).

    Each client minimises ``F_k(w) + mu/2 * ||w - w_global||^2``: its gradient
    gains ``mu * (w - w_global)``, pulling local training back towards the
    global model. ``mu = 0`` is FedAvg.
    """

    name: ClassVar[str] = "fedprox"
    mu: float

    def __post_init__(self) -> None:
        _non_negative(self.mu, "mu", "Typical values are 0.001 to 1.")


@dataclass(frozen=True, kw_only=True)
class Ridge(Plugin):
    """L2 regularizer (declearn's ridge): the local loss gains ``strength/2 * ||w||^2``."""

    name: ClassVar[str] = "ridge"
    strength: float

    def __post_init__(self) -> None:
        _non_negative(self.strength, "strength", "Use e.g. 1e-4.")


@dataclass(frozen=True, kw_only=True)
class Lasso(Plugin):
    """L1 regularizer (declearn's lasso): the local loss gains ``strength * ||w||_1``."""

    name: ClassVar[str] = "lasso"
    strength: float

    def __post_init__(self) -> None:
        _non_negative(self.strength, "strength", "Use e.g. 1e-4.")


LOCAL_OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True, kw_only=True)
class LocalOptimizer(Plugin):
    """The clients' local optimizer, chosen by the server: sgd, momentum or adam."""

    name: ClassVar[str] = "optimizer"
    kind: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9

    def client_config(self) -> dict[str, Scalar]:
        config = super().client_config()
        if self.kind != "momentum":
            del config["optimizer.momentum"]
        return config

    def __post_init__(self) -> None:
        if self.kind not in LOCAL_OPTIMIZERS:
            raise ConfigError(
                f"unknown local optimizer {self.kind!r}; choose one of: "
                f"{', '.join(LOCAL_OPTIMIZERS)}.{did_you_mean(str(self.kind), LOCAL_OPTIMIZERS)}",
                field="kind",
                value=self.kind,
            )
        _positive(self.lr, "lr", "Pass the clients' local learning rate, e.g. 0.01.")
        momentum_ok = isinstance(self.momentum, int | float) and not isinstance(self.momentum, bool)
        if not (momentum_ok and 0 <= self.momentum < 1):
            raise ConfigError(
                f"momentum must be a number in [0, 1), got {self.momentum!r}. Use 0 for plain "
                "SGD or e.g. 0.9.",
                field="momentum",
                value=self.momentum,
            )


class _MeanOf:
    """Example-weighted running mean of one named tensor across a round's results."""

    def __init__(self, key: str, dim: int, dtype: np.dtype[np.floating]) -> None:
        self.key = key
        self.fold = WeightedMean().fold(dim, dtype)

    def add(self, tensors: Mapping[str, Vector], weight: float) -> None:
        self.fold.add(tensors[self.key], weight)


@dataclass(frozen=True, kw_only=True)
class Scaffold(Plugin):
    """SCAFFOLD control variates, option II (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378).

    The server keeps ``c`` and sends it each round. A client corrects every local
    gradient step to ``g - c_i + c``; after K local steps of learning rate
    ``lr_local`` it sets ``c_i+ = c_i - c + (x - y_i) / (K * lr_local)`` and
    returns ``delta_c = c_i+ - c_i`` with its weights. The server moves ``x``
    with the mean update (times the server learning rate, as the paper's
    ``eta_g``) and ``c <- c + |S| / N * mean(delta_c)``.

    Departure: the mean of ``delta_c`` is example-weighted like the model
    update (the paper averages uniformly); with equal-sized clients they agree.
    Clients must train with plain SGD: option II's ``(x - y_i) / (K lr)`` is a
    gradient estimate only for SGD steps.
    """

    name: ClassVar[str] = "scaffold"
    required_tensors: ClassVar[tuple[str, ...]] = ("scaffold.delta_c",)

    def init(self, params: Vector) -> dict[str, Vector]:
        return {"scaffold.c": np.zeros_like(params)}

    def tensors(self, state: Mapping[str, Vector]) -> dict[str, Vector]:
        return {"scaffold.c": state["scaffold.c"]}

    def start_round(
        self,
        state: Mapping[str, Vector],
        *,
        dim: int,
        dtype: np.dtype[np.floating],
        num_available: int,
    ) -> PluginRound:
        return _ScaffoldRound(state["scaffold.c"], dim, dtype, num_available)


class _ScaffoldRound(PluginRound):
    def __init__(
        self, c: Vector, dim: int, dtype: np.dtype[np.floating], num_available: int
    ) -> None:
        self._c = c
        self._delta = _MeanOf("scaffold.delta_c", dim, dtype)
        self._num_available = max(num_available, 1)

    def add(
        self,
        update: Vector,
        weight: float,
        *,
        tensors: Mapping[str, Vector],
        metrics: Mapping[str, Scalar],
    ) -> tuple[Vector, float]:
        self._delta.add(tensors, weight)
        return update, weight

    def finish(self, update: Vector) -> tuple[Vector, dict[str, Vector]]:
        share = self._c.dtype.type(min(1.0, self._delta.fold.count / self._num_available))
        return update, {"scaffold.c": self._c + share * self._delta.fold.result()}


@dataclass(frozen=True, kw_only=True)
class FedNova(Plugin):
    """FedNova's normalized averaging (Wang et al. 2020, https://arxiv.org/abs/2007.07481).

    Each client reports ``a_i`` (metric ``fednova.a``: its number of local SGD
    steps, or the momentum-corrected count). The server averages the normalized
    updates ``d_i = update_i / a_i`` with weights ``p_i = n_i / n`` and scales the
    result by ``tau_eff = sum_i p_i a_i``, so clients that ran more local steps
    no longer pull the model further towards their own optimum.
    """

    name: ClassVar[str] = "fednova"
    required_metrics: ClassVar[tuple[str, ...]] = ("fednova.a",)

    def start_round(
        self,
        state: Mapping[str, Vector],
        *,
        dim: int,
        dtype: np.dtype[np.floating],
        num_available: int,
    ) -> PluginRound:
        return _FedNovaRound()


@dataclass
class _FedNovaRound(PluginRound):
    weighted_steps: float = 0.0
    total_weight: float = 0.0

    def add(
        self,
        update: Vector,
        weight: float,
        *,
        tensors: Mapping[str, Vector],
        metrics: Mapping[str, Scalar],
    ) -> tuple[Vector, float]:
        steps = metrics.get("fednova.a")
        if (
            isinstance(steps, bool)
            or not isinstance(steps, int | float)
            or not (steps > 0 and math.isfinite(steps))
        ):
            raise InvalidResult(
                f"FedNova needs each client's metric 'fednova.a' (its local steps, > 0), got "
                f"{steps!r}. Use a client that applies the fednova plug-in."
            )
        self.weighted_steps += weight * float(steps)
        self.total_weight += weight
        return update / update.dtype.type(steps), weight

    def finish(self, update: Vector) -> tuple[Vector, dict[str, Vector]]:
        tau_eff = self.weighted_steps / self.total_weight if self.total_weight else 0.0
        return update * update.dtype.type(tau_eff), {}


@dataclass(frozen=True, kw_only=True)
class Elastic(Plugin):
    """OpenFed's elastic aggregation (Chen et al. 2023, https://openaccess.thecvf.com/content/CVPR2023/html/Chen_Elastic_Aggregation_for_Federated_Optimization_CVPR_2023_paper.html).

    Clients report each parameter's sensitivity ``Omega_i`` (the mean absolute
    gradient over local training, tensor ``elastic.sensitivity``). The server
    averages them, ``Omega``, and scales each coordinate of the combined update
    by ``zeta = 1 + tau - Omega / max(Omega)``: parameters the clients' losses
    are sensitive to move less, insensitive ones move more.
    """

    name: ClassVar[str] = "elastic"
    required_tensors: ClassVar[tuple[str, ...]] = ("elastic.sensitivity",)
    tau: float = 0.5

    def __post_init__(self) -> None:
        _non_negative(self.tau, "tau", "The paper uses 0.5.")

    def start_round(
        self,
        state: Mapping[str, Vector],
        *,
        dim: int,
        dtype: np.dtype[np.floating],
        num_available: int,
    ) -> PluginRound:
        return _ElasticRound(self.tau, dim, dtype)


class _ElasticRound(PluginRound):
    def __init__(self, tau: float, dim: int, dtype: np.dtype[np.floating]) -> None:
        self._tau = tau
        self._sensitivity = _MeanOf("elastic.sensitivity", dim, dtype)

    def add(
        self,
        update: Vector,
        weight: float,
        *,
        tensors: Mapping[str, Vector],
        metrics: Mapping[str, Scalar],
    ) -> tuple[Vector, float]:
        self._sensitivity.add(tensors, weight)
        return update, weight

    def finish(self, update: Vector) -> tuple[Vector, dict[str, Vector]]:
        omega = np.abs(self._sensitivity.fold.result())
        peak = float(omega.max()) if omega.size else 0.0
        zeta = (1.0 + self._tau) - (omega / peak if peak > 0 else omega * 0)
        return update * zeta.astype(update.dtype, copy=False), {}


@dataclass(frozen=True, kw_only=True)
class LocalDP(Plugin):
    """Local differential privacy: DP-SGD on every client, through Opacus (declearn's local DP).

    Each client trains with per-example clipping to `clip_norm`, Gaussian noise and
    Poisson sampling, the noise calibrated so that `rounds` fits spend at most
    ``(epsilon, delta)`` by Opacus' accountant (`fedloom.privacy.local`). Every client
    reports the epsilon it has spent (metric ``dpsgd.epsilon``, required); the round
    records the largest any client has reported so far as ``privacy.local_epsilon``.
    A client asked for more fits than `rounds` refuses (its task fails, the run goes on).
    Only `TorchClient` applies it.

    Its server half only reads ``dpsgd.epsilon`` (updates pass unchanged), so it
    composes with secure aggregation: each client then sends its epsilon in the clear
    next to its masked update, and ``privacy.local_epsilon`` is the same figure.

    Args:
        epsilon: each client's budget over its whole training, > 0.
        delta: the budget's delta, in (0, 1).
        clip_norm: the per-example gradient bound, > 0.
        rounds: the most fits a client runs under the budget (usually the run's rounds).
    """

    name: ClassVar[str] = "dpsgd"
    required_metrics: ClassVar[tuple[str, ...]] = ("dpsgd.epsilon",)
    reads_metrics_only: ClassVar[bool] = True
    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    rounds: int = 1

    def __post_init__(self) -> None:
        DPSGDBudget(
            epsilon=self.epsilon, delta=self.delta, clip_norm=self.clip_norm, rounds=self.rounds
        )

    def start_round(
        self,
        state: Mapping[str, Vector],
        *,
        dim: int,
        dtype: np.dtype[np.floating],
        num_available: int,
    ) -> PluginRound:
        previous = state.get("dpsgd.epsilon_max")
        return _LocalDPRound(0.0 if previous is None else float(previous[0]))

    def metrics(self, state: Mapping[str, Vector]) -> dict[str, Scalar]:
        spent = state.get("dpsgd.epsilon_max")
        if spent is None:
            return {}
        return {"privacy.local_epsilon": float(spent[0]), "privacy.local_delta": self.delta}


@dataclass
class _LocalDPRound(PluginRound):
    largest: float

    def add(
        self,
        update: Vector,
        weight: float,
        *,
        tensors: Mapping[str, Vector],
        metrics: Mapping[str, Scalar],
    ) -> tuple[Vector, float]:
        spent = metrics.get("dpsgd.epsilon")  # checked finite by the orchestrator
        if isinstance(spent, int | float) and not isinstance(spent, bool):
            self.largest = max(self.largest, float(spent))
        return update, weight

    def finish(self, update: Vector) -> tuple[Vector, dict[str, Vector]]:
        return update, {"dpsgd.epsilon_max": np.array([self.largest])}
