"""The task of the kill-and-resume tests: NumPy only, so a process starts fast.

``client_fn``: a `GradientClient` pulling w toward its own target with minibatch
noise drawn from the task's seed (so SCAFFOLD's control variates and the
sampler all matter). ``pull_client_fn``: a `FunctionClient` that moves x halfway
to its target (for the gRPC runs). ``evaluate``: the squared distance to the mean.
"""

from __future__ import annotations

import numpy as np

from fedloom.client import FunctionClient, GradientClient

TARGETS = np.array(
    [[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [-1.0, 1.0, 2.0], [0.0, 2.0, 1.0], [2.0, -1.0, 0.0]]
)


def client_fn(context):
    target = TARGETS[context.partition_id]

    def grad_fn(weights, rng):
        diff = weights["w"] - target + rng.normal(scale=0.1, size=3)
        return 0.5 * float((diff * diff).sum()), {"w": diff}

    return GradientClient(
        {"w": np.zeros(3)}, grad_fn, num_examples=1 + context.partition_id, lr=0.1, local_steps=3
    )


def pull_client_fn(context):
    target = TARGETS[context.partition_id]

    def fit(weights, config):
        return {"w": weights["w"] + 0.5 * (target - weights["w"])}, 1 + context.partition_id, {}

    return FunctionClient(weights={"w": np.zeros(3)}, fit=fit)


def evaluate(weights, server_round):
    return {"loss": float(((weights["w"] - TARGETS.mean(axis=0)) ** 2).sum())}
