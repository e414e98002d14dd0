"""Flower's quickstart job on Fashion-MNIST: a small CNN, the data, and the client, for fedloom.

The 60,000 training images (`fedloom.data.fashion_mnist`, read offline from the
IDX files of Debian's dataset-fashion-mnist) are spread over the clients by a
Dirichlet(alpha) label skew ([data] in fedloom.toml); the server scores the
global model on the 10,000 test images after every round.

``PYTORCH_CNN_TRAIN_SIZE=N`` keeps only the first N training images (and N / 6
test images) for a quick run, as the CI smoke test does.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch
from torch import nn

from fedloom import ClientContext, Weights
from fedloom.client import TorchClient
from fedloom.data import fashion_mnist

# Small convolutions on 28x28 images: one thread per process does not fight the others.
torch.set_num_threads(int(os.environ.get("PYTORCH_CNN_THREADS", "1")))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@cache
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays: (n, 1, 28, 28) float32 pixels in [0, 1], int64 labels 0-9."""
    train, test = fashion_mnist("train"), fashion_mnist("test")
    size = int(os.environ.get("PYTORCH_CNN_TRAIN_SIZE", len(train)))
    test_size = len(test) if size >= len(train) else max(1, size // 6)

    def pixels(x: np.ndarray) -> np.ndarray:
        return (x[:, None, :, :] / np.float32(255.0)).astype(np.float32)

    return (
        pixels(train.x[:size]),
        train.y[:size],
        pixels(test.x[:test_size]),
        test.y[:test_size],
    )


def make_model(seed: int = 0) -> nn.Module:
    """Two 3x3 convolutions with max pooling, then two dense layers (~110k weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 14 x 14
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 7 x 7
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip


def make_optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


@cache
def client_data(context: ClientContext) -> tuple[torch.Tensor, ...]:
    """The client's Dirichlet share: 90% to train on, 10% to evaluate on."""
    x_train, y_train, _, _ = load_data()
    indices = context.partition(y_train)
    x, y = torch.from_numpy(x_train[indices]), torch.from_numpy(y_train[indices])
    holdout = max(1, len(indices) // 10)
    return x[holdout:], y[holdout:], x[:holdout], y[:holdout]


def client_fn(context: ClientContext) -> TorchClient:
    """Client `context.client_id`: 1 local epoch of SGD on its share (per round)."""
    x, y, x_test, y_test = client_data(context)
    return TorchClient(
        make_model(),
        train=(x, y),
        test=(x_test, y_test),
        optimizer=make_optimizer,
        local_epochs=1,
        batch_size=32,
        device=DEVICE,
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and loss of the global weights on the Fashion-MNIST test set."""
    _, _, x_test, y_test = load_data()
    model = make_model().to(DEVICE)
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in weights.items()})
    model.eval()  # safe: nn.Module.eval() switches to inference mode; nothing is executed
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y_test), 2000):
            x = torch.from_numpy(x_test[start : start + 2000]).to(DEVICE)
            y = torch.from_numpy(y_test[start : start + 2000]).to(DEVICE)
            logits = model(x)
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    return {"loss": loss / len(y_test), "accuracy": correct / len(y_test)}
