"""The quickstart with a Keras 3 model: federated digit classification, for fedloom.

The same data and split as ``task.py`` (scikit-learn's bundled digits, offline,
a Dirichlet label skew over the clients, a held-out test set evaluated on the
server), with the model written in Keras. Any Keras backend works: set
``KERAS_BACKEND`` (jax, tensorflow or torch) before running; without it this
file picks torch, which needs no TensorFlow install.
"""

from __future__ import annotations

import os
from functools import cache

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # after choosing the backend: Keras reads it once, on import
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedloom import ClientContext, Weights
from fedloom.client import KerasClient

if keras.backend.backend() == "torch":
    import torch

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


def make_model(seed: int = 0) -> keras.Model:
    """A compiled MLP, 64 -> 64 -> 10, its initial weights drawn from `seed`."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(
                64, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed)
            ),
            keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@cache
def shared_model() -> keras.Model:
    """The process's one model: clients run one after another, and each fit loads the
    global weights and restarts the optimizer, so they can share it."""
    return make_model()


def client_fn(context: ClientContext) -> KerasClient:
    """Client `context.client_id`: its Dirichlet share of the training set, 10% held out."""
    x_train, y_train, _, _ = load_data()
    indices = context.partition(y_train)
    x, y = x_train[indices], y_train[indices]
    holdout = max(1, len(indices) // 10)
    return KerasClient(
        shared_model(),
        x[holdout:],
        y[holdout:],
        x_test=x[:holdout],
        y_test=y[:holdout],
        local_epochs=2,
        batch_size=16,
    )


@cache
def _evaluation_model() -> keras.Model:
    return make_model()


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and loss of the global weights on the held-out test split."""
    _, _, x_test, y_test = load_data()
    model = _evaluation_model()
    model.set_weights(list(weights.values()))
    results = model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)
    return {"loss": float(results["loss"]), "accuracy": float(results["accuracy"])}
