"""`GradientClient`: a NumPy model given as a loss-and-gradient function, trained by local SGD.

The model is its weights plus ``grad_fn(weights, rng) -> (loss, gradients)``;
the client runs the local optimizer itself, so it can apply every client
plug-in (FedProx, SCAFFOLD, FedNova, regularizers, a server-chosen local
optimizer, elastic sensitivity) without a deep-learning framework.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.client.plugins import LocalPlugins, OptimizerChoice, parse_plugins
from fedloom.core import Config, EvaluateRes, FitRes, Scalar, Vector, VectorSpec, Weights
from fedloom.errors import ConfigError

__all__ = ["GradFn", "GradientClient", "LossFn"]

GradFn = Callable[[Weights, np.random.Generator], tuple[float, Mapping[str, NDArray[np.floating]]]]
"""``grad_fn(weights, rng) -> (loss, gradients by tensor name)``; `rng` draws minibatches."""
LossFn = Callable[[Weights], tuple[float, Mapping[str, Scalar]]]
"""``evaluate_fn(weights) -> (loss, metrics)`` on the client's evaluation data."""

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class GradientClient:
    """A client whose model is a loss-and-gradient function over NumPy weights.

    ``fit`` runs ``config["local_steps"]`` (default `local_steps`) steps of SGD
    with learning rate ``config["lr"]`` (default `lr`); ``fit_plugins`` runs
    the same steps with the plug-ins of ``config["plugins"]``. Minibatches come
    from ``rng = np.random.default_rng(config["seed"])``, handed to `grad_fn`,
    so a fit is reproducible. After a fit, `get_weights` returns its result.

    Args:
        weights: the initial weights (tensor name -> array); they define the model.
        grad_fn: ``(weights, rng) -> (loss, gradients)``, a gradient for every tensor.
        num_examples: the size of the local data set (the client's aggregation weight).
        lr: the local learning rate.
        local_steps: local steps per fit.
        evaluate_fn: optional ``weights -> (loss, metrics)``.

    Example:
        >>> client = GradientClient(
        ...     {"w": [0.0]},
        ...     lambda w, rng: (0.5 * float(((w["w"] - 1) ** 2).sum()), {"w": w["w"] - 1}),
        ...     num_examples=1,
        ...     local_steps=1,
        ... )
        >>> client.fit(client.get_weights(), {"seed": 0}).weights["w"]
        array([0.1])
    """

    def __init__(
        self,
        weights: Mapping[str, ArrayLike],
        grad_fn: GradFn,
        *,
        num_examples: int,
        lr: float = 0.1,
        local_steps: int = 10,
        evaluate_fn: LossFn | None = None,
    ) -> None:
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
            raise ConfigError(
                f"num_examples must be an int >= 0, got {num_examples!r}. Pass the size of the "
                "client's local data.",
                field="num_examples",
                value=num_examples,
            )
        self._weights = Weights(weights)
        self._grad_fn = grad_fn
        self.num_examples = num_examples
        self.lr = _learning_rate(lr, "lr")
        self.local_steps = _steps(local_steps, "local_steps")
        self._evaluate_fn = evaluate_fn

    def get_weights(self) -> Weights:
        return self._weights

    def fit(self, weights: Weights, config: Config) -> FitRes:
        result, _ = self._train(weights, config, LocalPlugins(), {}, {})
        return result

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        """Train like `fit`, applying the plug-ins named in ``config["plugins"]``.

        Args:
            weights: the global weights.
            config: the fit config with the plug-ins' names and parameters.
            tensors: the server's plug-in tensors (SCAFFOLD's ``scaffold.c``).
            state: what this client kept from its last fit.

        Returns:
            The result (with the plug-ins' tensors and metrics) and the state to keep.

        Raises:
            ConfigError: an unknown plug-in, a bad parameter, or a local optimizer
                a plug-in is not defined for.
            ProtocolError: a plug-in's tensor is missing.
        """
        return self._train(weights, config, parse_plugins(config), tensors, state)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        if self._evaluate_fn is None:
            raise ConfigError(
                "this GradientClient was built without an evaluate function. Pass "
                "evaluate_fn=... or set evaluate_sampler=None in the strategy.",
                field="evaluate_fn",
            )
        loss, metrics = self._evaluate_fn(weights)
        return EvaluateRes(float(loss), self.num_examples, metrics)

    def _train(
        self,
        weights: Weights,
        config: Config,
        plugins: LocalPlugins,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        if plugins.dpsgd is not None:
            raise ConfigError(
                "the dpsgd plug-in (local DP) trains with Opacus' DP-SGD on a torch model, "
                "which a GradientClient is not. Use a TorchClient, or drop LocalDP from the "
                "strategy's plug-ins.",
                field="plugins",
                value="dpsgd",
            )
        steps = _steps(config.get("local_steps", self.local_steps), "local_steps")
        choice = plugins.optimizer or OptimizerChoice(
            kind="sgd", lr=_learning_rate(config.get("lr", self.lr), "lr")
        )
        plugins.check_optimizer(choice)
        start = weights.flat
        local = plugins.begin(start, tensors, state)
        optimizer = _NumpyOptimizer(choice)
        rng = np.random.default_rng(int(config.get("seed", 0)))
        abs_grad_sum = np.zeros_like(start) if plugins.elastic else None
        current: Vector = start  # read-only; every step makes a new array
        total_loss = 0.0
        for _ in range(steps):
            loss, gradients = self._grad_fn(Weights.from_flat(weights.spec, current), rng)
            grad = _flatten(gradients, weights.spec)
            total_loss += float(loss)
            if abs_grad_sum is not None:
                abs_grad_sum += np.abs(grad)
            term = plugins.correction(current, anchor=start, control=local.control, sign=np.sign)
            if term is not None:
                grad = grad + term
            current = optimizer.step(current, grad)
        trained = Weights.from_flat(weights.spec, current)
        self._weights = trained
        outputs = local.finish(
            trained.flat, steps=steps, optimizer=choice, abs_grad_sum=abs_grad_sum
        )
        metrics: dict[str, Scalar] = {"loss": total_loss / steps, **outputs.metrics}
        return FitRes(trained, self.num_examples, metrics, outputs.tensors), outputs.state


class _NumpyOptimizer:
    """The local update rules, as in torch.optim: SGD, heavy-ball momentum, Adam."""

    def __init__(self, choice: OptimizerChoice) -> None:
        self._choice = choice
        self._velocity: Vector | None = None
        self._second: Vector | None = None
        self._count = 0

    def step(self, weights: Vector, grad: Vector) -> Vector:
        """New weights after one step on `grad` (neither input is modified)."""
        lr = self._choice.lr
        if self._choice.kind == "momentum":  # v <- rho v + g (v = g at first); w <- w - lr v
            rho = self._choice.momentum
            velocity = grad.copy() if self._velocity is None else rho * self._velocity + grad
            self._velocity = velocity
            return weights - lr * velocity
        if self._choice.kind == "adam":  # bias-corrected first and second moments
            beta1, beta2 = _ADAM_BETAS
            self._count += 1
            first = (1 - beta1) * grad
            second = (1 - beta2) * grad * grad
            if self._velocity is not None and self._second is not None:
                first = beta1 * self._velocity + first
                second = beta2 * self._second + second
            self._velocity, self._second = first, second
            first_hat = first / (1 - beta1**self._count)
            second_hat = second / (1 - beta2**self._count)
            return weights - lr * first_hat / (np.sqrt(second_hat) + _ADAM_EPS)
        return weights - lr * grad


def _flatten(gradients: Mapping[str, ArrayLike], spec: VectorSpec) -> Vector:
    """The gradients as one flat vector in `spec` order, checked against the weights."""
    if not isinstance(gradients, Mapping):
        raise ConfigError(
            f"grad_fn must return (loss, gradients by tensor name), got gradients of type "
            f"{type(gradients).__name__}.",
            field="grad_fn",
        )
    missing = [name for name in spec.names if name not in gradients]
    extra = [str(name) for name in gradients if name not in spec.names]
    if missing or extra:
        raise ConfigError(
            f"grad_fn returned gradients that differ from the weights: missing {missing}, "
            f"unexpected {extra}. Return one gradient per weight tensor: "
            f"{', '.join(spec.names)}.",
            field="grad_fn",
        )
    flat = np.empty(spec.size, dtype=spec.dtype)
    offset = 0
    for name, shape, size in zip(spec.names, spec.shapes, spec.sizes, strict=True):
        array = np.asarray(gradients[name])
        if array.shape != shape:
            raise ConfigError(
                f"grad_fn returned a gradient of shape {array.shape} for {name!r}; expected "
                f"{shape}, the shape of the weight.",
                field="grad_fn",
            )
        flat[offset : offset + size] = array.reshape(-1)
        offset += size
    if not np.isfinite(flat).all():
        raise ConfigError(
            "grad_fn returned NaN or Inf gradients. Lower the learning rate or check the data.",
            field="grad_fn",
        )
    return flat


def _steps(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name} must be an int >= 1, got {value!r}. It is the number of local SGD steps "
            "per fit.",
            field=name,
            value=value,
        )
    return value


def _learning_rate(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(
            f"{name} must be a positive number, got {value!r}. Pass the local learning rate, "
            "e.g. 0.1.",
            field=name,
            value=value,
        )
    return float(value)
