"""Federated digit classification: the model, the data, and the client, for fedloom.

scikit-learn's bundled digits (1,797 8x8 images, offline) are split into a
training set, spread over the clients by a Dirichlet(alpha) label skew, and a
held-out test set that the server evaluates on after every round.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fedloom import ClientContext, Weights
from fedloom.client import TorchClient

# A 64-64-10 MLP on 8x8 images: intra-op threads cost more than they give.
torch.set_num_threads(1)

TEST_SHARE = 0.2
SPLIT_SEED = 42


@cache
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays: pixels scaled to [0, 1], labels 0-9."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SHARE, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test


def make_model(seed: int = 0) -> nn.Module:
    """A small MLP: 64 -> 64 -> 10, initialised from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator alone: cheap
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def make_optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


@cache
def client_data(context: ClientContext) -> tuple[torch.Tensor, ...]:
    """The client's share as tensors: 90% to train on, 10% to evaluate on (kept per process)."""
    x_train, y_train, _, _ = load_data()
    indices = context.partition(y_train)
    x, y = torch.from_numpy(x_train[indices]), torch.from_numpy(y_train[indices])
    holdout = max(1, len(indices) // 10)
    return x[holdout:], y[holdout:], x[:holdout], y[:holdout]


@cache
def _process_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = make_model()
    return model, {name: value.clone() for name, value in model.state_dict().items()}


def shared_model() -> nn.Module:
    """The process's one model, reset to its initial weights.

    Clients built in one process run one after another, so they can share a
    model (as a hand-written loop does) instead of building one per task;
    resetting it is cheaper than initialising a new one, and every client
    still starts as a freshly built one would.
    """
    model, initial = _process_model()
    model.load_state_dict(initial)
    return model


def client_fn(context: ClientContext) -> TorchClient:
    """Client `context.client_id`: its Dirichlet share of the training set.

    It trains on the simulation's device (``[simulation].device``: a GPU when
    torch sees one, else the CPU); the clients of a process share it.
    """
    x, y, x_test, y_test = client_data(context)
    return TorchClient(
        shared_model(),
        device=context.device,
        train=(x, y),
        test=(x_test, y_test),
        optimizer=make_optimizer,
        local_epochs=2,
        batch_size=16,
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and loss of the global weights on the held-out test split."""
    _, _, x_test, y_test = load_data()
    model = make_model()
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in weights.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y_test))
        accuracy = (logits.argmax(dim=1) == torch.from_numpy(y_test)).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}
