"""The quickstart with scikit-learn: multinomial logistic regression on the same digits split.

Logistic regression is trained with SGD (``SGDClassifier(loss="log_loss")``):
under a Dirichlet label skew a client may lack some digits entirely, and SGD's
``partial_fit(classes=...)`` keeps all ten rows of the model regardless.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import SGDClassifier
from task import load_data

from fedloom import ClientContext, Weights
from fedloom.client import SklearnClient

CLASSES = np.arange(10)


def make_model() -> SGDClassifier:
    """Logistic regression fitted by SGD with a constant step."""
    return SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.05, alpha=1e-4)


def client_fn(context: ClientContext) -> SklearnClient:
    """Client `context.client_id`: its Dirichlet share of the training set."""
    x_train, y_train, _, _ = load_data()
    indices = context.partition(y_train)
    holdout = max(1, len(indices) // 10)
    test, train = indices[:holdout], indices[holdout:]
    return SklearnClient(
        make_model(),
        x_train[train],
        y_train[train],
        x_test=x_train[test],
        y_test=y_train[test],
        classes=CLASSES,
        local_epochs=2,
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Accuracy and log loss of the global weights on the held-out test split."""
    x_train, y_train, x_test, y_test = load_data()
    client = SklearnClient(
        make_model(), x_train[:10], y_train[:10], x_test=x_test, y_test=y_test, classes=CLASSES
    )
    result = client.evaluate(weights, {})
    return {"loss": result.loss, **result.metrics}
