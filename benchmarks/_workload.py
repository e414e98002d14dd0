"""The simulation benchmark's workload, shared by fedloom's and Flower's runs of it.

1,000 clients each holding 60 samples of 784 features in 10 classes (MNIST-sized,
synthetic and seeded: 60,000 samples in all), a 784-100-10 MLP, 1 local epoch at
batch size 10 with SGD (lr 0.05, 6 steps per client), 100 clients per round.
Client i holds rows [60 i, 60 i + 60) of ``dataset()``.

This module imports only numpy and torch, so that the same workload runs under
fedloom (``simulation.py``) and under Flower in a virtual environment of its own
(``flower_simulation.py``), which has no fedloom.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn

__all__ = [
    "BATCH_SIZE",
    "CLASSES",
    "CLIENTS_PER_ROUND",
    "FEATURES",
    "HIDDEN",
    "LR",
    "NUM_CLIENTS",
    "SAMPLES",
    "SEED",
    "STEPS_PER_ROUND",
    "dataset",
    "make_model",
    "make_optimizer",
]

NUM_CLIENTS = 1_000
SAMPLES = 60
FEATURES = 784
CLASSES = 10
HIDDEN = 100
BATCH_SIZE = 10
CLIENTS_PER_ROUND = 100
LR = 0.05
SEED = 0
STEPS_PER_ROUND = SAMPLES // BATCH_SIZE


@cache
def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """60,000 seeded samples: Gaussian features, labels from a random linear teacher."""
    rng = np.random.default_rng(SEED)
    inputs = rng.standard_normal((NUM_CLIENTS * SAMPLES, FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((FEATURES, CLASSES), dtype=np.float32)
    labels = (inputs @ teacher).argmax(axis=1).astype(np.int64)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def make_model() -> nn.Module:
    """The 784-100-10 MLP, with the same seeded initial weights every time."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(SEED)
        return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def make_optimizer(parameters: object) -> torch.optim.Optimizer:
    """Plain SGD at the workload's learning rate."""
    return torch.optim.SGD(parameters, lr=LR)  # type: ignore[arg-type]
