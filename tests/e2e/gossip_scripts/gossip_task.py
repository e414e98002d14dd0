"""The client of the gossip tests: each node starts elsewhere and pulls towards its own target.

Its fit depends on the config's ``seed`` (noise) and ``lr``, so a node that got another
seed or config than in simulation ends up with other weights. ``GOSSIP_FIT_SLEEP_S``
slows each fit down (the kill test needs time to kill a peer mid-run).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from fedloom.client import FunctionClient
from fedloom.core import ClientContext


def client_fn(context: ClientContext) -> FunctionClient:
    """A node's client: start = (i + 1) * arange, target 2 i; fit = noisy step to the target."""
    index = context.partition_id
    start = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3) * (index + 1),
        "b": np.full(3, float(index), dtype=np.float32),
    }
    target = 2.0 * index
    sleep_s = float(os.environ.get("GOSSIP_FIT_SLEEP_S", "0"))

    def fit(weights: Any, config: Any) -> tuple[dict[str, Any], int, dict[str, float]]:
        time.sleep(sleep_s)
        rng = np.random.default_rng(int(config["seed"]))
        lr = float(config.get("lr", 0.1))
        new = {
            name: (value - lr * (value - target) + 0.05 * rng.standard_normal(value.shape)).astype(
                np.float32
            )
            for name, value in weights.items()
        }
        return new, 10, {}

    return FunctionClient(weights=start, fit=fit)
