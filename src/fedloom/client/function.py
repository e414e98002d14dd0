"""A client made of plain functions over NumPy arrays: no class to write."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from numpy.typing import ArrayLike

from fedloom.core import Config, EvaluateRes, FitRes, Metrics, Weights, WeightsLike
from fedloom.errors import ConfigError

__all__ = ["FitFn", "FunctionClient"]

FitFn = Callable[[Weights, Config], tuple[WeightsLike, int, Metrics]]
"""``fit(weights, config) -> (new_weights, num_examples, metrics)``."""
EvaluateFn = Callable[[Weights, Config], tuple[float, int, Metrics]]
"""``evaluate(weights, config) -> (loss, num_examples, metrics)``."""


class FunctionClient:
    """A client from functions: any object with get_weights/fit/evaluate is a client too.

    Args:
        weights: the initial weights (tensor name -> array); they define the model.
        fit: trains locally and returns ``(new_weights, num_examples, metrics)``.
        evaluate: optional; returns ``(loss, num_examples, metrics)``.

    Example:
        >>> client = FunctionClient(
        ...     weights={"x": [0.0]},
        ...     fit=lambda w, config: ({"x": w["x"] + 1}, 10, {}),
        ... )
        >>> client.fit(client.get_weights(), {}).num_examples
        10
    """

    def __init__(
        self,
        *,
        weights: Mapping[str, ArrayLike],
        fit: FitFn,
        evaluate: EvaluateFn | None = None,
    ) -> None:
        self._weights = Weights(weights)
        self._fit = fit
        self._evaluate = evaluate

    def get_weights(self) -> Weights:
        return self._weights

    def fit(self, weights: Weights, config: Config) -> FitRes:
        new_weights, num_examples, metrics = self._fit(weights, config)
        return FitRes(new_weights, num_examples, metrics)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        if self._evaluate is None:
            raise ConfigError(
                "this FunctionClient was built without an evaluate function. Pass "
                "evaluate=... or set fraction_evaluate=0 in the strategy.",
                field="evaluate",
            )
        loss, num_examples, metrics = self._evaluate(weights, config)
        return EvaluateRes(float(loss), num_examples, metrics)
