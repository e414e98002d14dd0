"""The client halves of the client plug-ins: read the fit config, correct gradients, report back.

A strategy names its plug-ins in ``config["plugins"]`` (``"fedprox,scaffold"``)
with ``"<plugin>.<param>"`` keys beside it, and sends the vectors a plug-in
needs in ``FitIns.tensors`` (the server halves are in
``fedloom.strategies.plugins``). `parse_plugins` reads the config into a
`LocalPlugins` value; `LocalPlugins.correction` is the term every local
gradient gains, written with plain arithmetic so the same code runs on NumPy
arrays (`GradientClient`) and torch tensors (`TorchClient`);
`LocalPlugins.begin` checks the server's tensors and the client's kept state
and returns a `LocalRound`, whose `finish` computes what goes back after
training: SCAFFOLD's ``delta_c`` and new ``c_i``, FedNova's ``a_i`` and the
elastic sensitivity. Every vector is flat, in the order of the model's
`Weights`.

Plug-ins and the term each adds to a local gradient ``g`` of weights ``w``:

- ``fedprox`` (Li et al. 2020): ``mu * (w - w_global)``, ``w_global`` the weights received.
- ``ridge``: ``strength * w``; ``lasso``: ``strength * sign(w)`` (a subgradient).
- ``scaffold`` (Karimireddy et al. 2020, option II): ``c - c_i``.
- ``optimizer``: no term; it replaces the client's local optimizer for the fit.
- ``fednova`` (Wang et al. 2020) and ``elastic`` (Chen et al. 2023): no term; they report.
- ``dpsgd`` (local DP): no term; `TorchClient` trains with DP-SGD through Opacus
  (`fedloom.privacy.dpsgd`) under the budget in ``LocalPlugins.dpsgd``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from fedloom.core import Config, Scalar, Vector
from fedloom.errors import ConfigError, ProtocolError, ShapeMismatch, did_you_mean
from fedloom.privacy.local import DPSGDBudget

__all__ = [
    "KNOWN_PLUGINS",
    "OPTIMIZER_KINDS",
    "LocalPlugins",
    "LocalRound",
    "OptimizerChoice",
    "PluginOutputs",
    "elastic_sensitivity",
    "fednova_steps",
    "parse_plugins",
    "scaffold_control",
]

KNOWN_PLUGINS: tuple[str, ...] = (
    "dpsgd",
    "elastic",
    "fednova",
    "fedprox",
    "lasso",
    "optimizer",
    "ridge",
    "scaffold",
)
"""The plug-ins a client can apply, as they are named in ``config["plugins"]``."""

OPTIMIZER_KINDS: tuple[str, ...] = ("sgd", "momentum", "adam")
"""The local optimizers the ``optimizer`` plug-in can choose."""


class _Arithmetic(Protocol):
    """What the gradient correction needs of an array: NumPy arrays and torch tensors both fit."""

    def __add__(self, other: Any, /) -> Any: ...

    def __sub__(self, other: Any, /) -> Any: ...

    def __mul__(self, other: Any, /) -> Any: ...

    def __rmul__(self, other: Any, /) -> Any: ...


ArrayT = TypeVar("ArrayT", bound=_Arithmetic)


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizerChoice:
    """The local optimizer a fit trains with: its kind, learning rate and momentum.

    `kind` is ``"sgd"``, ``"momentum"`` (heavy ball: ``v <- momentum * v + g;
    w <- w - lr * v``) or ``"adam"`` for the optimizers fedloom knows. A client
    that trains with something else describes it by name (``"AdamW"``); the
    plug-ins that need SGD then refuse it.
    """

    kind: str
    lr: float
    momentum: float = 0.0

    def describe(self) -> str:
        """The optimizer in words, for error messages."""
        if self.kind == "sgd":
            return f"plain SGD (lr {self.lr})"
        if self.kind == "momentum":
            return f"SGD with momentum {self.momentum} (lr {self.lr})"
        if self.kind == "adam":
            return f"Adam (lr {self.lr})"
        return self.kind


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginOutputs:
    """What the plug-ins add to a fit's result, and the client state to keep for next time."""

    tensors: dict[str, Vector] = field(default_factory=dict)
    metrics: dict[str, Scalar] = field(default_factory=dict)
    state: dict[str, Vector] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalPlugins:
    """The plug-ins of one fit, read from its config by `parse_plugins`.

    Args:
        names: the plug-ins to apply, in the order the server listed them.
        fedprox_mu: FedProx's ``mu`` (``config["fedprox.mu"]``).
        ridge_strength: the L2 strength (``config["ridge.strength"]``).
        lasso_strength: the L1 strength (``config["lasso.strength"]``).
        optimizer: the local optimizer the server chose, or None to keep the client's own.
        dpsgd: the local DP budget (``config["dpsgd.*"]``), or None without local DP.
    """

    names: tuple[str, ...] = ()
    fedprox_mu: float = 0.0
    ridge_strength: float = 0.0
    lasso_strength: float = 0.0
    optimizer: OptimizerChoice | None = None
    dpsgd: DPSGDBudget | None = None

    @property
    def scaffold(self) -> bool:
        """Whether SCAFFOLD's control variates correct the gradients."""
        return "scaffold" in self.names

    @property
    def fednova(self) -> bool:
        """Whether the fit reports FedNova's ``a_i``."""
        return "fednova" in self.names

    @property
    def elastic(self) -> bool:
        """Whether the fit reports the elastic sensitivity (mean absolute gradient)."""
        return "elastic" in self.names

    def check_optimizer(self, optimizer: OptimizerChoice) -> None:
        """Refuse a local optimizer the plug-ins are not defined for.

        Raises:
            ConfigError: SCAFFOLD with anything but plain SGD, or FedNova with
                anything but SGD or momentum SGD.
        """
        if self.scaffold and optimizer.kind != "sgd":
            raise ConfigError(
                "SCAFFOLD option II needs plain SGD local steps (its control update "
                f"(x - y) / (K * lr) estimates the gradient only then), but this fit trains "
                f"with {optimizer.describe()}. Use LocalOptimizer(kind='sgd') in the "
                "strategy's plug-ins, or give the client plain SGD without momentum.",
                field="plugins",
                value=optimizer.kind,
            )
        if self.scaffold and not optimizer.lr > 0:
            raise ConfigError(
                f"SCAFFOLD needs a positive local learning rate, got {optimizer.lr}.",
                field="lr",
                value=optimizer.lr,
            )
        if self.fednova and (
            optimizer.kind not in ("sgd", "momentum") or not 0 <= optimizer.momentum < 1
        ):
            raise ConfigError(
                "FedNova's normalization is defined for SGD and momentum SGD (momentum in "
                f"[0, 1)) local steps, but this fit trains with {optimizer.describe()}. Use "
                "LocalOptimizer(kind='sgd') or kind='momentum' in the strategy's plug-ins.",
                field="plugins",
                value=optimizer.kind,
            )

    def correction(
        self,
        weight: ArrayT,
        *,
        anchor: ArrayT,
        control: ArrayT | None,
        sign: Callable[[ArrayT], ArrayT],
    ) -> ArrayT | None:
        """The term the plug-ins add to the local gradient of `weight`, or None when there is none.

        Args:
            weight: the current local value of one weight tensor (or the flat vector).
            anchor: the same tensor's global value, received this round (FedProx's centre).
            control: SCAFFOLD's ``c - c_i`` for it, or None without SCAFFOLD.
            sign: elementwise sign for this array type (``np.sign``, ``torch.sign``).
        """
        terms: list[ArrayT] = []
        if "fedprox" in self.names and self.fedprox_mu:
            terms.append(self.fedprox_mu * (weight - anchor))
        if "ridge" in self.names and self.ridge_strength:
            terms.append(self.ridge_strength * weight)
        if "lasso" in self.names and self.lasso_strength:
            terms.append(self.lasso_strength * sign(weight))
        if self.scaffold and control is not None:
            terms.append(control)
        if not terms:
            return None
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def begin(
        self, start: Vector, tensors: Mapping[str, Vector], state: Mapping[str, Vector]
    ) -> LocalRound:
        """Check the server's tensors and the kept state, and prepare the fit's flat vectors.

        Args:
            start: the global weights received, flat (never written to).
            tensors: the fit's plug-in tensors (``FitIns.tensors``).
            state: what this client kept from its last fit (empty the first time).

        Raises:
            ProtocolError: SCAFFOLD is on but the server sent no ``scaffold.c``.
            ShapeMismatch: ``scaffold.c`` or the kept ``scaffold.c_i`` has another size.
        """
        if not self.scaffold:
            return LocalRound(plugins=self, start=start, state=dict(state))
        if "scaffold.c" not in tensors:
            raise ProtocolError(
                "the scaffold plug-in needs the server's control variate, tensor 'scaffold.c', "
                f"with the fit task, but the task carries {sorted(tensors) or 'no tensors'}. "
                "Use a strategy with the Scaffold plug-in (it sends c every round)."
            )
        c = _flat_vector(tensors["scaffold.c"], start, "scaffold.c", "the server's tensor")
        if "scaffold.c_i" in state:
            c_i = _flat_vector(state["scaffold.c_i"], start, "scaffold.c_i", "the kept state")
        else:
            c_i = np.zeros_like(start)  # first participation
        return LocalRound(
            plugins=self, start=start, state=dict(state), c=c, c_i=c_i, control=c - c_i
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRound:
    """The flat vectors of one fit with plug-ins, from `LocalPlugins.begin`.

    Attributes:
        plugins: the fit's plug-ins.
        start: the global weights received (``x`` in SCAFFOLD, ``w_global`` in FedProx).
        state: the client state kept from its last fit.
        c: SCAFFOLD's server control variate, or None without SCAFFOLD.
        c_i: this client's control variate before the fit, or None without SCAFFOLD.
        control: ``c - c_i``, the term every local gradient gains, or None without SCAFFOLD.
    """

    plugins: LocalPlugins
    start: Vector
    state: dict[str, Vector]
    c: Vector | None = None
    c_i: Vector | None = None
    control: Vector | None = None

    def finish(
        self,
        trained: Vector,
        *,
        steps: int,
        optimizer: OptimizerChoice,
        trainable: NDArray[np.bool_] | None = None,
        abs_grad_sum: Vector | None = None,
    ) -> PluginOutputs:
        """What goes back to the server, and the state to keep, after `steps` local steps.

        Args:
            trained: the local weights after training, flat.
            steps: how many local optimizer steps ran (K).
            optimizer: the optimizer they ran with.
            trainable: True where a weight had a gradient; elsewhere (float buffers
                such as BatchNorm statistics) ``c_i`` stays as it was. None: everywhere.
            abs_grad_sum: the sum over the steps of each weight's absolute gradient
                (needed by ``elastic``).
        """
        tensors: dict[str, Vector] = {}
        metrics: dict[str, Scalar] = {}
        state = dict(self.state)
        if self.c is not None and self.c_i is not None:
            c_i_plus = scaffold_control(
                self.c_i,
                self.c,
                start=self.start,
                trained=np.asarray(trained, dtype=self.start.dtype),
                steps=steps,
                lr=optimizer.lr,
                trainable=trainable,
            )
            tensors["scaffold.delta_c"] = c_i_plus - self.c_i
            state["scaffold.c_i"] = c_i_plus
        if self.plugins.fednova:
            metrics["fednova.a"] = fednova_steps(steps, optimizer)
        if self.plugins.elastic:
            if abs_grad_sum is None:
                raise ValueError("the elastic plug-in needs abs_grad_sum")  # a client's bug
            tensors["elastic.sensitivity"] = elastic_sensitivity(abs_grad_sum, steps).astype(
                self.start.dtype, copy=False
            )
        return PluginOutputs(tensors=tensors, metrics=metrics, state=state)


def scaffold_control(
    c_i: Vector,
    c: Vector,
    *,
    start: Vector,
    trained: Vector,
    steps: int,
    lr: float,
    trainable: NDArray[np.bool_] | None = None,
) -> Vector:
    """SCAFFOLD's new client control variate, option II: ``c_i - c + (x - y) / (K * lr)``.

    With plain SGD this is the mean raw gradient over the K local steps. Where
    `trainable` is False, and when no step ran, ``c_i`` is kept.
    """
    if steps < 1:
        return c_i.copy()
    value = c_i - c + (start - trained) / (steps * lr)
    if trainable is not None:
        value = np.where(trainable, value, c_i)
    return value.astype(c_i.dtype, copy=False)


def fednova_steps(steps: int, optimizer: OptimizerChoice) -> float:
    """FedNova's ``a_i``: how much the K local gradients count in the client's update.

    Plain SGD: ``a_i = K``. Momentum ``rho`` (``v <- rho v + g``): gradient k counts
    ``(1 - rho^(K-k+1)) / (1 - rho)`` times, so
    ``a_i = (K - rho (1 - rho^K) / (1 - rho)) / (1 - rho)``.
    """
    rho = optimizer.momentum if optimizer.kind == "momentum" else 0.0
    if rho == 0:
        return float(steps)
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def elastic_sensitivity(abs_grad_sum: Vector, steps: int) -> Vector:
    """The elastic sensitivity: each weight's mean absolute gradient over `steps` local steps."""
    if steps < 1:
        return np.zeros_like(abs_grad_sum)
    return abs_grad_sum / steps


def parse_plugins(config: Config) -> LocalPlugins:
    """Read the plug-ins of a fit from its config.

    Keys other than those of the named plug-ins are ignored.

    Example:
        >>> parse_plugins({"plugins": "fedprox,fednova", "fedprox.mu": 0.1}).fedprox_mu
        0.1

    Raises:
        ConfigError: an unknown plug-in, a missing or invalid parameter, or a
            local optimizer the other plug-ins are not defined for.
    """
    listed = config.get("plugins", "")
    if not isinstance(listed, str):
        raise ConfigError(
            f'config["plugins"] must be a comma-separated string of plug-in names, got {listed!r}.',
            field="plugins",
            value=listed,
        )
    names: list[str] = []
    for raw in listed.split(","):
        name = raw.strip()
        if not name or name in names:
            continue
        if name not in KNOWN_PLUGINS:
            raise ConfigError(
                f'unknown client plug-in {name!r} in config["plugins"] ({listed!r}); this '
                f"client knows: {', '.join(KNOWN_PLUGINS)}.{did_you_mean(name, KNOWN_PLUGINS)} "
                "Remove it from the strategy's plug-ins, or update fedloom on the client.",
                field="plugins",
                value=name,
            )
        names.append(name)
    plugins = LocalPlugins(
        names=tuple(names),
        fedprox_mu=_number(config, "fedprox.mu") if "fedprox" in names else 0.0,
        ridge_strength=_number(config, "ridge.strength") if "ridge" in names else 0.0,
        lasso_strength=_number(config, "lasso.strength") if "lasso" in names else 0.0,
        optimizer=_optimizer(config) if "optimizer" in names else None,
        dpsgd=_dpsgd(config) if "dpsgd" in names else None,
    )
    if plugins.optimizer is not None:
        plugins.check_optimizer(plugins.optimizer)
    return plugins


def _optimizer(config: Config) -> OptimizerChoice:
    kind = config.get("optimizer.kind", "sgd")
    if kind not in OPTIMIZER_KINDS:
        raise ConfigError(
            f'unknown local optimizer {kind!r} in config["optimizer.kind"]; choose one of: '
            f"{', '.join(OPTIMIZER_KINDS)}.",
            field="optimizer.kind",
            value=kind,
        )
    lr = _number(config, "optimizer.lr")
    if lr == 0:
        raise ConfigError(
            'config["optimizer.lr"] must be > 0, got 0. Pass the local learning rate, e.g. 0.01.',
            field="optimizer.lr",
            value=lr,
        )
    momentum = 0.0
    if kind == "momentum":
        momentum = _number(config, "optimizer.momentum")
        if momentum >= 1:
            raise ConfigError(
                f'config["optimizer.momentum"] must be in [0, 1), got {momentum}.',
                field="optimizer.momentum",
                value=momentum,
            )
    return OptimizerChoice(kind=str(kind), lr=lr, momentum=momentum)


def _dpsgd(config: Config) -> DPSGDBudget:
    """The local DP budget the server sent (``dpsgd.epsilon``, ``.delta``, ``.clip_norm``, ...)."""
    rounds = _number(config, "dpsgd.rounds")
    if not rounds.is_integer():
        raise ConfigError(
            f'config["dpsgd.rounds"] must be a whole number of fits, got {rounds}.',
            field="dpsgd.rounds",
            value=rounds,
        )
    try:
        return DPSGDBudget(
            epsilon=_number(config, "dpsgd.epsilon"),
            delta=_number(config, "dpsgd.delta"),
            clip_norm=_number(config, "dpsgd.clip_norm"),
            rounds=int(rounds),
        )
    except ConfigError as exc:  # name the config key it came from
        key = f"dpsgd.{exc.field}"
        raise ConfigError(f'config["{key}"]: {exc}', field=key, value=exc.value) from exc


def _number(config: Config, key: str) -> float:
    """A finite number >= 0 that a named plug-in needs from the config."""
    plugin = key.split(".")[0]
    if key not in config:
        raise ConfigError(
            f"the {plugin} plug-in needs config[{key!r}], which the fit config does not "
            f"carry. Configure the plug-in on the strategy (it sends its parameters), or add "
            f"{key!r} to the config.",
            field=key,
        )
    value = config[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(
            f"config[{key!r}] must be a finite number >= 0, got {value!r}.",
            field=key,
            value=value,
        )
    return float(value)


def _flat_vector(value: object, start: Vector, name: str, what: str) -> Vector:
    """`value` as a flat float vector of the model's size and dtype (a copy when cast)."""
    vector = np.asarray(value)
    if vector.shape != start.shape or not np.issubdtype(vector.dtype, np.floating):
        raise ShapeMismatch(
            f"{what} {name!r} has shape {vector.shape} {vector.dtype}; expected {start.shape} "
            "floats, one "
            "per model weight. Does the server run the same model? (A client whose model "
            "changed must start again without its kept state.)",
            tensor=name,
        )
    return vector.astype(start.dtype, copy=False)
