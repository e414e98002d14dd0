"""Clients for the engine tests, in a module that worker processes import by name.

NumPy only (no torch, no pytest), so a worker starts in a fraction of a second.
Each client fits a linear model to its share of one synthetic regression set.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np

from fedloom import ClientContext
from fedloom.client import GradientClient
from fedloom.core import Config, FitRes, Vector, Weights

NUM_SAMPLES = 2_000
NUM_FEATURES = 5


@cache
def dataset(num_samples: int = NUM_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """A fixed regression set ``y = x @ w_true + noise`` (the same in every process)."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((num_samples, NUM_FEATURES)).astype(np.float32)
    w_true = np.arange(1, NUM_FEATURES + 1, dtype=np.float32)
    y = x @ w_true + 0.1 * rng.standard_normal(num_samples).astype(np.float32)
    return x, y


class _Linear(GradientClient):
    """A GradientClient that also reports whether it was handed SCAFFOLD's kept c_i."""

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        result, new_state = super().fit_plugins(weights, config, tensors, state)
        kept = state.get("scaffold.c_i")
        metrics = {
            **result.metrics,
            "had_c_i": float(kept is not None),
            "c_i_norm": 0.0 if kept is None else float(np.linalg.norm(kept)),
        }
        return FitRes(result.weights, result.num_examples, metrics, result.tensors), new_state


def linear_client(context: ClientContext) -> GradientClient:
    """Client `context.partition_id`: least squares on its share of `dataset()`."""
    x, y = dataset()
    indices = context.partition(y)
    x_local, y_local = x[indices], y[indices]

    def grad_fn(
        weights: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> tuple[float, dict[str, np.ndarray]]:
        batch = rng.choice(len(y_local), size=min(8, len(y_local)), replace=False)
        error = x_local[batch] @ weights["w"] + weights["b"] - y_local[batch]
        loss = 0.5 * float(np.mean(error**2))
        return loss, {
            "w": x_local[batch].T @ error / len(batch),
            "b": np.array([error.mean()], dtype=np.float32),
        }

    return _Linear(
        {"w": np.zeros(NUM_FEATURES, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)},
        grad_fn,
        num_examples=len(indices),
        lr=0.05,
        local_steps=5,
    )


def failing_client(context: ClientContext) -> GradientClient:
    """Client "1" cannot be built; the others are `linear_client`s."""
    if context.client_id == "1":
        raise RuntimeError("no data on this device")
    return linear_client(context)


def dying_client(context: ClientContext) -> GradientClient:
    """Client "2" takes its whole process down (as a segfault or the OOM killer would)."""
    if context.client_id == "2":
        import os

        os._exit(3)
    return linear_client(context)
