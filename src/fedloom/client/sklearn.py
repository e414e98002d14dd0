"""A fedloom client for scikit-learn linear models, trained locally from the global weights.

`SklearnClient` wraps an estimator such as ``SGDClassifier``, ``SGDRegressor`` or
``LogisticRegression`` and exposes its ``coef_`` and ``intercept_`` as `Weights`.
Each round it loads the server's weights into its own clone of the estimator,
trains a few local epochs (``partial_fit`` or a short ``warm_start`` fit), and
returns the new weights. Needs the ``sklearn`` extra: ``pip install fedloom[sklearn]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

from fedloom.core import Config, EvaluateRes, FitRes, Metrics, Scalar, Weights, derive_seed
from fedloom.errors import ConfigError, ShapeMismatch

__all__ = ["SklearnClient"]

_NAMES = ("coef", "intercept")


class SklearnClient:
    """Adapt a scikit-learn linear model to the fedloom `Client` protocol.

    The weights are ``{"coef": coef_, "intercept": intercept_}`` in float64:

    - a binary classifier has ``coef`` of shape (1, n_features) and ``intercept`` (1,);
    - a classifier of k > 2 classes has (k, n_features) and (k,);
    - a regressor has (n_features,) and (1,).

    Before the first fit the weights are zeros, so the server can start from
    `get_weights`. Each `fit` loads the given weights and trains for
    ``config["local_epochs"]`` epochs (default: the constructor's `local_epochs`):

    - models with ``partial_fit`` (``SGDClassifier``, ``SGDRegressor``, ``Perceptron``)
      call it once per epoch; the step counter ``t_`` carries over between rounds,
      so the learning-rate schedule keeps decaying as in centralised training;
    - models with ``warm_start`` (``LogisticRegression``, ``ElasticNet``) refit from
      the loaded weights with ``max_iter`` set to the number of epochs, that is
      solver iterations. Sklearn's ``ConvergenceWarning`` is silenced, since short
      local fits are the point.

    ``config["seed"]`` (the orchestrator always sends one) seeds the model's
    shuffling, so a fit is reproducible from (client state, weights, config).

    Classes: a client may hold only some labels of the federation, so pass
    ``classes=`` with every label of the federation; otherwise it defaults to the
    labels in `y_train` and clients may disagree on the model's shape.
    ``partial_fit`` models train on a subset of the classes fine; ``warm_start``
    classifiers relearn their classes from each fit, so they need every class on
    every client: use ``SGDClassifier(loss="log_loss")`` for label-skewed federations.

    Example:
        >>> from sklearn.linear_model import SGDClassifier
        >>> client = SklearnClient(SGDClassifier(), [[0.0, 1.0], [1.0, 0.0]], [0, 1])
        >>> client.get_weights()
        Weights({coef: shape (1, 2) float64, intercept: shape (1,) float64})
    """

    def __init__(
        self,
        model: Any,
        x_train: ArrayLike,
        y_train: ArrayLike,
        *,
        x_test: ArrayLike | None = None,
        y_test: ArrayLike | None = None,
        classes: ArrayLike | None = None,
        local_epochs: int = 1,
    ) -> None:
        """Check the model and data, and initialise the model's weights to zeros.

        Args:
            model: an unfitted scikit-learn linear model; the client trains a clone of it.
            x_train: local training features, shape (n_samples, n_features).
            y_train: local training targets, shape (n_samples,).
            x_test: local test features for `evaluate`; pass it together with `y_test`.
            y_test: local test targets for `evaluate`.
            classes: every class label of the federation (classifiers only); by
                default the labels found in `y_train`.
            local_epochs: epochs per `fit` when the config has no ``local_epochs``.

        Raises:
            ConfigError: the model is not a supported linear model, the data has the
                wrong shape, or labels are outside `classes`.
        """
        self._model = _clone_linear_model(model)
        self._is_classifier = bool(is_classifier(self._model))
        self._is_incremental = hasattr(self._model, "partial_fit")
        self._local_epochs = _check_epochs(local_epochs, field="local_epochs")
        numeric = not self._is_classifier
        self._x_train = _features(x_train, field="x_train")
        self._y_train = _targets(y_train, len(self._x_train), field="y_train", numeric=numeric)
        n_features = self._x_train.shape[1]
        self._test = _test_data(x_test, y_test, n_features, numeric=numeric)
        self._classes = self._check_classes(classes)
        self._shapes = _weight_shapes(self._is_classifier, self._classes, n_features)
        if not self._is_incremental:
            self._model.set_params(warm_start=True)
        coef_shape, intercept_shape = self._shapes
        self._load(Weights({"coef": np.zeros(coef_shape), "intercept": np.zeros(intercept_shape)}))
        self._model.n_features_in_ = n_features

    @property
    def model(self) -> Any:
        """The client's own estimator, holding the weights of the last `fit` or `evaluate`."""
        return self._model

    def get_weights(self) -> Weights:
        """The model's current ``coef`` and ``intercept`` (zeros before the first fit)."""
        coef = np.asarray(self._model.coef_, dtype=np.float64).reshape(self._shapes[0])
        intercept = np.asarray(self._model.intercept_, dtype=np.float64).reshape(self._shapes[1])
        return Weights({"coef": coef, "intercept": intercept})

    def fit(self, weights: Weights, config: Config) -> FitRes:
        """Train locally from `weights` and return the new weights.

        Args:
            weights: the global ``coef`` and ``intercept``.
            config: may hold ``local_epochs`` (a positive int) and ``seed`` (an int >= 0).

        Returns:
            The new weights, the number of training examples, and ``{"loss": ...}``:
            the training loss after local training (see `evaluate` for which loss).

        Raises:
            ShapeMismatch: `weights` do not fit this client's model.
            ConfigError: ``local_epochs`` or ``seed`` in `config` is invalid.
        """
        epochs = _check_epochs(config.get("local_epochs", self._local_epochs), field="local_epochs")
        seed = _check_seed(config.get("seed"))
        self._load(weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self._is_incremental:
                self._train_incremental(epochs, seed)
            else:
                self._train_warm_start(epochs, seed)
        loss, _ = self._score(self._x_train, self._y_train)
        return FitRes(self.get_weights(), len(self._x_train), {"loss": loss})

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        """Evaluate `weights` on the test data given at construction.

        The loss is the log loss over all `classes` for classifiers with
        ``predict_proba``, the hinge loss for other classifiers, and the mean
        squared error for regressors. Metrics hold ``accuracy`` for classifiers,
        and ``mse`` and (with two or more samples) ``r2`` for regressors.

        Raises:
            ConfigError: the client was built without ``x_test`` and ``y_test``.
            ShapeMismatch: `weights` do not fit this client's model.
        """
        if self._test is None:
            raise ConfigError(
                "SklearnClient.evaluate needs test data, got none. Pass x_test= and y_test= "
                "when building the client, or do not ask this client to evaluate.",
                field="x_test",
            )
        self._load(weights)
        x_test, y_test = self._test
        loss, metrics = self._score(x_test, y_test)
        return EvaluateRes(loss, len(x_test), metrics)

    def _check_classes(self, classes: ArrayLike | None) -> NDArray[Any] | None:
        name = type(self._model).__name__
        if not self._is_classifier:
            if classes is not None:
                raise ConfigError(
                    f"classes is only for classifiers; {name} is a regressor, got "
                    f"classes={classes!r}. Drop classes=.",
                    field="classes",
                    value=classes,
                )
            return None
        labels = np.unique(self._y_train) if classes is None else np.asarray(classes)
        if labels.ndim != 1 or len(labels) < 2 or len(np.unique(labels)) != len(labels):
            raise ConfigError(
                f"classes must be 2 or more distinct labels, got {labels.tolist()!r}. Pass every "
                "class label of the federation once, e.g. classes=range(10).",
                field="classes",
                value=classes,
            )
        labels = np.unique(labels)
        targets = {"y_train": self._y_train}
        if self._test is not None:
            targets["y_test"] = self._test[1]
        for field, y in targets.items():
            if not np.isin(y, labels).all():
                unknown = np.setdiff1d(y, labels).tolist()
                raise ConfigError(
                    f"{field} holds labels {unknown} that are not in classes {labels.tolist()}. "
                    "Pass classes= with every label of the federation.",
                    field=field,
                    value=unknown,
                )
        missing = np.setdiff1d(labels, self._y_train).tolist()
        if missing and not self._is_incremental:
            raise ConfigError(
                f"{name} relearns its classes on every fit, so each client needs examples of "
                f"every class; this client's y_train lacks {missing} of classes "
                f'{labels.tolist()}. Use SGDClassifier(loss="log_loss") for label-skewed '
                "federations, or give this client examples of every class.",
                field="y_train",
                value=missing,
            )
        return labels

    def _load(self, weights: Weights) -> None:
        shapes = tuple(tuple(np.shape(weights[n])) if n in weights else None for n in _NAMES)
        if tuple(weights) != _NAMES or shapes != self._shapes:
            got = ", ".join(f"{n}: {np.shape(weights[n])}" for n in weights)
            expected = ", ".join(f"{n}: {s}" for n, s in zip(_NAMES, self._shapes, strict=True))
            raise ShapeMismatch(
                f"{type(self._model).__name__} client got weights {{{got}}}; its model has "
                f"{{{expected}}}. Build every client with the same features and classes= "
                "(all labels of the federation).",
                tensor="coef" if shapes[0] != self._shapes[0] else "intercept",
            )
        self._model.coef_ = np.array(weights["coef"], dtype=np.float64)
        intercept = np.array(weights["intercept"], dtype=np.float64)
        if self._is_classifier:
            self._model.classes_ = self._classes
        if not self._is_classifier and not self._is_incremental:
            # Coordinate-descent and GLM regressors keep a scalar intercept.
            self._model.intercept_ = float(intercept[0])
        else:
            self._model.intercept_ = intercept

    def _train_incremental(self, epochs: int, seed: int | None) -> None:
        for epoch in range(epochs):
            if seed is not None:
                self._seed_model(derive_seed(seed, "sklearn", epoch))
            if self._is_classifier:
                self._model.partial_fit(self._x_train, self._y_train, classes=self._classes)
            else:
                self._model.partial_fit(self._x_train, self._y_train)

    def _train_warm_start(self, epochs: int, seed: int | None) -> None:
        self._model.set_params(max_iter=epochs)
        if seed is not None:
            self._seed_model(derive_seed(seed, "sklearn"))
        self._model.fit(self._x_train, self._y_train)

    def _seed_model(self, seed: int) -> None:
        if "random_state" in self._model.get_params():
            self._model.set_params(random_state=seed)

    def _score(self, x: NDArray[np.float64], y: NDArray[Any]) -> tuple[float, Metrics]:
        model = self._model
        if not self._is_classifier:
            predictions = model.predict(x)
            mse = float(mean_squared_error(y, predictions))
            metrics: dict[str, Scalar] = {"mse": mse}
            if len(y) >= 2:
                metrics["r2"] = float(r2_score(y, predictions))
            return mse, metrics
        accuracy = float(accuracy_score(y, model.predict(x)))
        if hasattr(model, "predict_proba"):
            loss = float(log_loss(y, model.predict_proba(x), labels=self._classes))
        else:
            loss = _hinge_loss(np.asarray(model.decision_function(x)), y, self._classes)
        return loss, {"accuracy": accuracy}


def _clone_linear_model(model: Any) -> Any:
    name = type(model).__name__
    is_linear = any(c.__module__.startswith("sklearn.linear_model") for c in type(model).__mro__)
    if not is_linear or not (is_classifier(model) or is_regressor(model)):
        raise ConfigError(
            f"SklearnClient adapts scikit-learn linear classifiers and regressors (coef_ and "
            f"intercept_), got {name}. Use SGDClassifier, SGDRegressor or LogisticRegression, "
            "or write a Client for other models.",
            field="model",
            value=name,
        )
    params: Mapping[str, Any] = model.get_params()
    if not hasattr(model, "partial_fit") and "warm_start" not in params:
        raise ConfigError(
            f"{name} cannot continue training from given weights: it has neither partial_fit "
            "nor warm_start. Use SGDClassifier, SGDRegressor or LogisticRegression.",
            field="model",
            value=name,
        )
    if params.get("solver") == "liblinear" or params.get("average", False) not in (False, 0):
        raise ConfigError(
            f"{name} with solver='liblinear' or average= keeps state that the federated "
            "weights do not carry, so it cannot start from the global weights. Use the "
            "default solver and average=False.",
            field="model",
            value=name,
        )
    return clone(model)


def _features(x: ArrayLike, *, field: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{field} must be a numeric array of shape (n_samples, n_features), got values "
            f"that do not convert to float ({exc}). Encode categorical features as numbers.",
            field=field,
        ) from exc
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ConfigError(
            f"{field} must be a non-empty 2-D array of shape (n_samples, n_features), got shape "
            f"{array.shape}. Reshape a single feature with x.reshape(-1, 1).",
            field=field,
            value=array.shape,
        )
    return array


def _targets(y: ArrayLike, n_samples: int, *, field: str, numeric: bool) -> NDArray[Any]:
    array = np.asarray(y)
    if numeric:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{field} must hold numbers for a regressor, got dtype {array.dtype}. Use a "
                "classifier for labels, or convert the targets to float.",
                field=field,
            ) from exc
    if array.ndim != 1 or len(array) != n_samples:
        raise ConfigError(
            f"{field} must be a 1-D array with one target per sample ({n_samples}), got shape "
            f"{array.shape}. Flatten column vectors with y.ravel().",
            field=field,
            value=array.shape,
        )
    return array


def _test_data(
    x_test: ArrayLike | None, y_test: ArrayLike | None, n_features: int, *, numeric: bool
) -> tuple[NDArray[np.float64], NDArray[Any]] | None:
    if x_test is None and y_test is None:
        return None
    if x_test is None or y_test is None:
        missing = "x_test" if x_test is None else "y_test"
        raise ConfigError(
            f"{missing} is missing while its pair is given; evaluation needs both. Pass x_test= "
            "and y_test= together, or neither.",
            field=missing,
        )
    x = _features(x_test, field="x_test")
    if x.shape[1] != n_features:
        raise ConfigError(
            f"x_test has {x.shape[1]} features, got shape {x.shape}; x_train has {n_features}. "
            "Preprocess test data the same way as training data.",
            field="x_test",
            value=x.shape,
        )
    return x, _targets(y_test, len(x), field="y_test", numeric=numeric)


def _weight_shapes(
    is_classifier: bool, classes: NDArray[Any] | None, n_features: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not is_classifier or classes is None:
        return (n_features,), (1,)
    rows = 1 if len(classes) == 2 else len(classes)
    return (rows, n_features), (rows,)


def _check_epochs(value: object, *, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{field} must be a positive int, got {value!r}. Pass the number of local passes "
            "over the data per round, e.g. 1.",
            field=field,
            value=value,
        )
    return value


def _check_seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"config['seed'] must be a non-negative int, got {value!r}. Let the orchestrator "
            "set it, or pass an int such as 0.",
            field="seed",
            value=value,
        )
    return value


def _hinge_loss(decision: NDArray[Any], y: NDArray[Any], classes: NDArray[Any] | None) -> float:
    """Mean hinge loss; multiclass uses the margin of the true class over the best other."""
    assert classes is not None, "classifiers always have classes"
    decision = decision.astype(np.float64)
    if decision.ndim == 1:
        margins = np.where(y == classes[1], 1.0, -1.0) * decision
    else:
        rows = np.arange(len(y))
        true_class = np.searchsorted(classes, y)
        true_score = decision[rows, true_class]
        decision[rows, true_class] = -np.inf
        margins = true_score - decision.max(axis=1)
    return float(np.mean(np.maximum(0.0, 1.0 - margins)))
