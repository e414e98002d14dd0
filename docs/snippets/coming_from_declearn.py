"""declearn's job in fedloom: a scikit-learn linear model across hospitals, from TOML.

declearn's ``SklearnSGDModel``, its ``FLRunConfig`` (registration, training,
evaluation, early stopping) and its optimizer plug-ins become a `SklearnClient`
in ``client_fn``, a server-side ``evaluate`` and the TOML file
``coming_from_declearn.toml`` beside this file, which names them. The data is
scikit-learn's bundled breast-cancer set split over four "hospitals".

Run it: ``fedloom simulate docs/snippets/coming_from_declearn.toml``.
"""

# --8<-- [start:task]
from functools import cache

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

from fedloom import ClientContext, Weights
from fedloom.client import SklearnClient


@cache
def data() -> tuple[np.ndarray, ...]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:450], order[450:]
    return x[train], y[train], x[test], y[test]


def client_fn(context: ClientContext) -> SklearnClient:
    """One hospital: its share of the training rows, a LASSO-penalised logistic model."""
    x, y, _, _ = data()
    rows = context.partition(y)
    model = SGDClassifier(
        loss="log_loss",
        penalty="l1",
        alpha=1e-3,
        learning_rate="constant",
        eta0=0.05,
        random_state=0,
    )
    return SklearnClient(model, x[rows], y[rows], classes=[0, 1])


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """The server's test set: declearn's evaluation round, run centrally."""
    _, _, x, y = data()
    logits = x @ weights["coef"].T[:, 0] + weights["intercept"][0]
    probability = 1.0 / (1.0 + np.exp(-logits))
    accuracy = float(np.mean((probability > 0.5) == y))
    return {"loss": float(log_loss(y, probability, labels=[0, 1])), "accuracy": accuracy}


# --8<-- [end:task]
