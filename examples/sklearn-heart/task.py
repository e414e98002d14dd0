"""Heart disease across four hospitals: LASSO logistic regression, each hospital one client.

The data is UCI heart disease as `fedloom.data.heart_disease` loads it (920
patients: Cleveland, Hungary, Switzerland, VA Long Beach). Each hospital keeps a
stratified 25% of its patients as its own test set; the server's `evaluate`
scores the global model on all four test sets together, the population the
federation serves. Features are scaled with constants every hospital knows in
advance (no statistic leaves a hospital).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split

from fedloom import ClientContext, Weights
from fedloom.client import SklearnClient
from fedloom.data import ByKey
from fedloom.data.datasets import HEART_FEATURES, Dataset, heart_disease

TEST_SHARE = 0.25
SPLIT_SEED = 7
CLASSES = np.array([0, 1])
L1_STRENGTH = 1e-3  # scikit-learn's alpha: the LASSO term alpha * ||w||_1 in each local loss

# Shared scaling: (value - center) / scale for the clinical columns, in their units;
# the 0/1 columns stay as they are.
SCALE = {
    "age": (54.0, 9.0),
    "trestbps": (132.0, 18.0),
    "chol": (240.0, 55.0),
    "thalch": (138.0, 25.0),
    "oldpeak": (0.9, 1.1),
    "ca": (0.7, 0.9),
}


def scale(x: np.ndarray) -> np.ndarray:
    """`x` with the clinical columns centred and scaled by the shared constants."""
    out = x.copy()
    for name, (center, spread) in SCALE.items():
        column = HEART_FEATURES.index(name)
        present = out[:, HEART_FEATURES.index(name + "_missing")] == 0 if name != "age" else True
        out[:, column] = np.where(present, (out[:, column] - center) / spread, 0.0)
    return out


@cache
def hospitals() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each hospital's (x_train, y_train, x_test, y_test), scaled."""
    data: Dataset = heart_disease()
    assert data.groups is not None
    splits = {}
    for index, hospital in enumerate(ByKey().keys(data.groups).tolist()):
        part = data.subset(ByKey().split(data.groups, 4, seed=0)[index])
        x_train, x_test, y_train, y_test = train_test_split(
            scale(part.x), part.y, test_size=TEST_SHARE, random_state=SPLIT_SEED, stratify=part.y
        )
        splits[hospital] = (x_train, y_train, x_test, y_test)
    return splits


@cache
def pooled_test() -> tuple[np.ndarray, np.ndarray]:
    """All four hospitals' test sets together."""
    parts = hospitals().values()
    return np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])


def make_model() -> SGDClassifier:
    """Logistic regression with an L1 (LASSO) penalty, fitted by SGD."""
    return SGDClassifier(
        loss="log_loss", penalty="l1", alpha=L1_STRENGTH, learning_rate="constant", eta0=0.02
    )


def client_fn(context: ClientContext) -> SklearnClient:
    """The hospital of this client's partition ([data] by_key: one hospital per client)."""
    data = heart_disease()
    assert data.groups is not None
    hospital = str(data.groups[context.partition(data.groups)[0]])
    x_train, y_train, x_test, y_test = hospitals()[hospital]
    return SklearnClient(
        make_model(), x_train, y_train, x_test=x_test, y_test=y_test, classes=CLASSES
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and log loss of the global model on the four hospitals' test sets."""
    x_test, y_test = pooled_test()
    client = SklearnClient(
        make_model(), x_test[:4], y_test[:4], x_test=x_test, y_test=y_test, classes=CLASSES
    )
    result = client.evaluate(weights, {})
    return {"loss": result.loss, **result.metrics}
