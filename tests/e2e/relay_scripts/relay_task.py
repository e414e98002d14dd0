"""The relay tests' task: linear regression whose clients differ in data size and seed use.

Client ``i`` holds ``20 + 5 i`` samples, so FedAvg's weighting by num_examples matters,
and shuffles its minibatches with ``config["seed"]``, so a client that got another seed
(one derived from its relay's name, say) would train differently. The config and the
test both import it.

A client started with ``RELAY_TASK_STALL=PATH`` in its environment creates PATH when
its first fit starts and then stalls for 120 s, so a test can kill its relay mid-round.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Weights, WeightsLike

DIM = 5


def client_fn(context: ClientContext) -> FunctionClient:
    partition = int(context.partition_id)
    data_rng = np.random.default_rng(100 + partition)
    size = 20 + 5 * partition
    features = data_rng.normal(size=(size, DIM))
    target = features @ np.linspace(-1, 1, DIM) + 0.3 * partition

    def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        stall = os.environ.get("RELAY_TASK_STALL")
        if stall:
            Path(stall).touch()
            time.sleep(120)
        w = np.array(weights["w"], dtype=np.float64)
        order = np.random.default_rng(int(config["seed"])).permutation(size)
        for _ in range(int(config.get("local_epochs", 1))):
            for start in range(0, size, 8):
                batch = order[start : start + 8]
                error = features[batch] @ w - target[batch]
                w -= 0.05 * features[batch].T @ error / len(batch)
        loss = float(np.mean((features @ w - target) ** 2))
        return {"w": w.astype(np.float32)}, size, {"loss": loss}

    def evaluate(weights: Weights, config: Config) -> tuple[float, int, Metrics]:
        error = features @ np.asarray(weights["w"], dtype=np.float64) - target
        return float(np.mean(error**2)), size, {"mae": float(np.mean(np.abs(error)))}

    return FunctionClient(weights={"w": np.zeros(DIM, np.float32)}, fit=fit, evaluate=evaluate)
