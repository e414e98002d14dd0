"""SklearnClient: weights layout, local training, evaluation, validation, and a tiny federation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.datasets import load_digits, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor

from fedloom.client.sklearn import SklearnClient
from fedloom.core import Client, FitRes, Weights
from fedloom.errors import ConfigError, ShapeMismatch

Data = tuple[NDArray[np.float64], NDArray[Any]]


def _blobs(n_classes: int, *, n_samples: int = 120, seed: int = 0) -> Data:
    """Well-separated classes in 4 features."""
    x, y = make_classification(
        n_samples=n_samples,
        n_features=4,
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=2.0,
        random_state=seed,
    )
    return x, y


def _linear(n_samples: int = 100) -> Data:
    """y = x @ [1, -2, 0.5] + 3 with small noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_samples, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 3.0 + 0.01 * rng.normal(size=n_samples)
    return x, y


def _weights(result: FitRes) -> Weights:
    assert isinstance(result.weights, Weights)
    return result.weights


def _average(results: list[FitRes]) -> Weights:
    """FedAvg by hand: the example-weighted mean of each tensor."""
    total = sum(r.num_examples for r in results)
    averaged = {}
    for name in ("coef", "intercept"):
        tensors = [_weights(r)[name] * r.num_examples for r in results]
        averaged[name] = np.sum(tensors, axis=0) / total
    return Weights(averaged)


# Weights layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "n_classes", "coef_shape", "intercept_shape"),
    [
        (SGDClassifier(), 2, (1, 4), (1,)),
        (SGDClassifier(), 3, (3, 4), (3,)),
        (LogisticRegression(), 2, (1, 4), (1,)),
        (LogisticRegression(), 3, (3, 4), (3,)),
        (SGDRegressor(), None, (4,), (1,)),
    ],
)
def test_sklearn_client_get_weights_is_zeros_of_model_shape(
    model: Any, n_classes: int | None, coef_shape: tuple[int, ...], intercept_shape: tuple[int, ...]
) -> None:
    x, y = _blobs(n_classes or 2)
    client = SklearnClient(model, x, y if n_classes else y.astype(float))

    weights = client.get_weights()

    assert list(weights) == ["coef", "intercept"]
    assert weights["coef"].shape == coef_shape
    assert weights["intercept"].shape == intercept_shape
    assert weights.spec.dtype == "float64"
    assert not weights.flat.any()


def test_sklearn_client_is_a_client() -> None:
    x, y = _blobs(2)

    client = SklearnClient(SGDClassifier(), x, y)

    assert isinstance(client, Client)


def test_sklearn_client_leaves_the_given_model_untouched() -> None:
    x, y = _blobs(2)
    model = SGDClassifier()
    client = SklearnClient(model, x, y)

    client.fit(client.get_weights(), {"seed": 0})

    assert not hasattr(model, "coef_")
    assert client.model is not model
    assert hasattr(client.model, "coef_")


# Local training ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [SGDClassifier(loss="log_loss", alpha=1e-3), LogisticRegression()], ids=repr
)
def test_sklearn_client_fit_returns_changed_weights_of_same_spec(model: Any) -> None:
    x, y = _blobs(3)
    client = SklearnClient(model, x, y)
    start = client.get_weights()

    result = client.fit(start, {"seed": 0})

    assert _weights(result).spec == start.spec
    assert not _weights(result).equals(start)
    assert result.num_examples == len(x)
    assert set(result.metrics) == {"loss"}


@pytest.mark.parametrize(
    "model",
    [SGDClassifier(loss="log_loss", alpha=1e-3), LogisticRegression(), SGDRegressor()],
    ids=repr,
)
def test_sklearn_client_loss_decreases_over_repeated_fits(model: Any) -> None:
    """Each fit starts from the last one's weights, as a one-client federation would."""
    x, y = _linear() if isinstance(model, SGDRegressor) else _blobs(2)
    client = SklearnClient(model, x, y)
    weights = client.get_weights()
    losses = []

    for server_round in range(6):
        result = client.fit(weights, {"seed": server_round})
        weights = _weights(result)
        losses.append(float(result.metrics["loss"]))

    assert losses[-1] < losses[0]


def test_sklearn_client_fit_with_same_seed_is_identical() -> None:
    """Fresh clients (model random_state unset) given the same seed train bit-identically."""
    x, y = _blobs(3)

    def train(seed: int) -> Weights:
        client = SklearnClient(SGDClassifier(), x, y)
        return _weights(client.fit(client.get_weights(), {"seed": seed, "local_epochs": 2}))

    assert train(7).equals(train(7))
    assert not train(7).equals(train(8))


def test_sklearn_client_config_local_epochs_overrides_constructor() -> None:
    x, y = _blobs(2)

    def train(config: dict[str, int]) -> Weights:
        client = SklearnClient(SGDClassifier(), x, y, local_epochs=1)
        return _weights(client.fit(client.get_weights(), config))

    assert not train({"seed": 0, "local_epochs": 3}).equals(train({"seed": 0}))


def test_sklearn_client_missing_classes_keep_full_coef_shape() -> None:
    """An SGD client that only sees classes 0 and 1 of {0, 1, 2} still returns 3 coef rows."""
    x, y = _blobs(3)
    seen = y != 2
    client = SklearnClient(
        SGDClassifier(loss="log_loss"), x[seen], y[seen], x_test=x, y_test=y, classes=[0, 1, 2]
    )

    result = client.fit(client.get_weights(), {"seed": 0})
    evaluation = client.evaluate(client.get_weights(), {})

    assert _weights(result)["coef"].shape == (3, 4)
    assert _weights(result)["intercept"].shape == (3,)
    assert math.isfinite(evaluation.loss)


def test_sklearn_client_trains_on_a_single_class_of_a_binary_task() -> None:
    x, y = _blobs(2)
    only_zeros = y == 0
    client = SklearnClient(SGDClassifier(), x[only_zeros], y[only_zeros], classes=[0, 1])

    result = client.fit(client.get_weights(), {"seed": 0})

    assert _weights(result)["coef"].shape == (1, 4)


# Evaluation --------------------------------------------------------------------------------------


def test_sklearn_client_evaluate_reports_accuracy_and_num_examples() -> None:
    x, y = _blobs(3)
    client = SklearnClient(LogisticRegression(), x[:90], y[:90], x_test=x[90:], y_test=y[90:])
    weights = _weights(client.fit(client.get_weights(), {"seed": 0}))

    result = client.evaluate(weights, {})

    assert result.num_examples == 30
    assert set(result.metrics) == {"accuracy"}
    assert 0.0 <= float(result.metrics["accuracy"]) <= 1.0


def test_sklearn_client_evaluate_of_zero_weights_gives_uninformed_losses() -> None:
    """Zero weights: softmax is uniform, so log loss = ln(3); every decision is 0, so hinge = 1."""
    x, y = _blobs(3)
    probabilistic = SklearnClient(SGDClassifier(loss="log_loss"), x, y, x_test=x, y_test=y)
    margin = SklearnClient(SGDClassifier(loss="hinge"), x, y, x_test=x, y_test=y)

    log_loss = probabilistic.evaluate(probabilistic.get_weights(), {}).loss
    hinge = margin.evaluate(margin.get_weights(), {}).loss

    assert log_loss == pytest.approx(math.log(3))
    assert hinge == pytest.approx(1.0)


def test_sklearn_client_evaluate_regressor_reports_mse_and_r2() -> None:
    """Zero weights predict 0, so the mse is the mean of y squared."""
    x, y = _linear()
    client = SklearnClient(SGDRegressor(), x, y, x_test=x, y_test=y)

    result = client.evaluate(client.get_weights(), {})

    assert result.loss == pytest.approx(float(np.mean(y**2)))
    assert result.metrics["mse"] == result.loss
    assert "r2" in result.metrics
    assert result.num_examples == len(x)


def test_sklearn_client_evaluate_without_test_data_raises() -> None:
    x, y = _blobs(2)
    client = SklearnClient(SGDClassifier(), x, y)

    with pytest.raises(ConfigError, match=r"needs test data.*Pass x_test= and y_test="):
        client.evaluate(client.get_weights(), {})


def test_sklearn_client_rejects_weights_of_another_shape() -> None:
    x, y = _blobs(3)
    client = SklearnClient(SGDClassifier(), x, y)
    wrong = Weights({"coef": np.zeros((2, 4)), "intercept": np.zeros(2)})

    with pytest.raises(ShapeMismatch, match=r"its model has .*same features and classes="):
        client.fit(wrong, {})


# A tiny federation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "dataset"),
    [
        (SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0), "digits"),
        (LogisticRegression(), "blobs"),
    ],
    ids=["sgd-digits", "logistic-blobs"],
)
def test_sklearn_client_federated_averaging_learns(model: Any, dataset: str) -> None:
    """3 clients on iid splits, 5 rounds of FedAvg computed by hand, reach > 80% test accuracy."""
    if dataset == "digits":
        x, y = load_digits(return_X_y=True)
        x = x / 16.0
    else:
        x, y = _blobs(3, n_samples=600)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    split = len(x) * 2 // 3
    x_test, y_test = x[split:], y[split:]
    classes = np.unique(y)
    clients = [
        SklearnClient(
            model, x[i:split:3], y[i:split:3], x_test=x_test, y_test=y_test, classes=classes
        )
        for i in range(3)
    ]
    weights = clients[0].get_weights()

    for server_round in range(5):
        results = [c.fit(weights, {"seed": server_round}) for c in clients]
        weights = _average(results)
    evaluation = clients[0].evaluate(weights, {})

    assert float(evaluation.metrics["accuracy"]) > 0.8


# Validation --------------------------------------------------------------------------------------


def test_sklearn_client_logistic_regression_with_missing_classes_raises() -> None:
    x, y = _blobs(3)
    seen = y != 2

    with pytest.raises(
        ConfigError, match=r"lacks \[2\].*SGDClassifier\(loss=\"log_loss\"\)"
    ) as err:
        SklearnClient(LogisticRegression(), x[seen], y[seen], classes=[0, 1, 2])

    assert err.value.field == "y_train"


@pytest.mark.parametrize(
    ("model", "phrase"),
    [
        (
            RandomForestClassifier(),
            r"linear classifiers and regressors.*got RandomForestClassifier",
        ),
        (LogisticRegression(solver="liblinear"), r"solver='liblinear'.*cannot start from"),
        (SGDClassifier(average=True), r"average=.*Use the default solver and average=False"),
    ],
    ids=["not-linear", "liblinear", "average"],
)
def test_sklearn_client_rejects_unsupported_models(model: Any, phrase: str) -> None:
    x, y = _blobs(2)

    with pytest.raises(ConfigError, match=phrase) as err:
        SklearnClient(model, x, y)

    assert err.value.field == "model"


@pytest.mark.parametrize(
    ("kwargs", "field", "phrase"),
    [
        ({"x_train": np.zeros(5)}, "x_train", r"non-empty 2-D array.*got shape \(5,\)"),
        ({"x_train": np.zeros((0, 4)), "y_train": []}, "x_train", r"non-empty 2-D array"),
        ({"y_train": np.zeros(3)}, "y_train", r"one target per sample \(120\), got shape \(3,\)"),
        ({"x_test": np.zeros((2, 4))}, "y_test", r"y_test is missing.*together, or neither"),
        (
            {"x_test": np.zeros((2, 3)), "y_test": [0, 1]},
            "x_test",
            r"x_test has 3 features.*x_train has 4",
        ),
        ({"classes": [0, 5]}, "y_train", r"labels \[1\] that are not in classes \[0, 5\]"),
        ({"classes": [0, 0, 1]}, "classes", r"2 or more distinct labels"),
        ({"local_epochs": 0}, "local_epochs", r"positive int, got 0"),
    ],
)
def test_sklearn_client_rejects_invalid_input(
    kwargs: dict[str, Any], field: str, phrase: str
) -> None:
    x, y = _blobs(2)
    arguments: dict[str, Any] = {"x_train": x, "y_train": y, **kwargs}

    with pytest.raises(ConfigError, match=phrase) as err:
        SklearnClient(SGDClassifier(), **arguments)

    assert err.value.field == field


def test_sklearn_client_rejects_classes_for_a_regressor() -> None:
    x, y = _linear()

    with pytest.raises(ConfigError, match=r"only for classifiers; SGDRegressor is a regressor"):
        SklearnClient(SGDRegressor(), x, y, classes=[0, 1])


@pytest.mark.parametrize(
    ("config", "phrase"),
    [
        ({"local_epochs": 1.5}, r"local_epochs must be a positive int, got 1.5"),
        ({"seed": -1}, r"config\['seed'\] must be a non-negative int, got -1"),
    ],
)
def test_sklearn_client_fit_rejects_invalid_config(config: dict[str, Any], phrase: str) -> None:
    x, y = _blobs(2)
    client = SklearnClient(SGDClassifier(), x, y)

    with pytest.raises(ConfigError, match=phrase):
        client.fit(client.get_weights(), config)
