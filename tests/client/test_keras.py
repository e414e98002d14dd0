"""KerasClient: Keras 3 models (torch backend here) as fedloom clients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")  # in the dev extra, so CI always runs these

import fedloom  # noqa: E402
from fedloom.client import KerasClient  # noqa: E402
from fedloom.core import ClientContext, Weights  # noqa: E402
from fedloom.errors import ConfigError  # noqa: E402

# Keras's own fit/evaluate warnings are ignored in pyproject.toml (module keras.*);
# KerasClient's own conversions must not warn: test_keras_client_get_weights_emits_no_deprecation_warning.


def _model(momentum: float = 0.9) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                4, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(0)
            ),
            keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(1)),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _data(seed: int = 0, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, 3)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def test_keras_client_weights_round_trip_by_variable_path() -> None:
    x, y = _data()
    client = KerasClient(_model(), x, y)
    weights = client.get_weights()
    shifted = Weights({name: array + 1.0 for name, array in weights.items()})

    client.set_weights(shifted)

    assert [name.rsplit("/", 1)[-1] for name in weights] == ["kernel", "bias", "kernel", "bias"]
    assert client.get_weights().equals(shifted)


def test_keras_client_get_weights_emits_no_deprecation_warning() -> None:
    """Keras's torch backend warns on np.array(tensor); get_weights copies with .numpy()."""
    x, y = _data()
    client = KerasClient(_model(), x, y)
    trained = client.fit(client.get_weights(), {"seed": 0}).weights

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        weights = client.get_weights()

    assert weights.equals(trained)
    assert all(isinstance(array, np.ndarray) for array in weights.values())
    # The arrays are copies: training again does not move weights already handed out.
    snapshot = {name: array.copy() for name, array in weights.items()}
    client.fit(weights, {"seed": 1, "lr": 0.5})
    assert all(np.array_equal(weights[name], snapshot[name]) for name in snapshot)


def test_keras_client_fit_is_reproducible_from_the_seed_and_restarts_the_optimizer() -> None:
    """Same weights and seed: the same result, even after other fits moved the momentum."""
    x, y = _data()
    client = KerasClient(_model(), x, y, local_epochs=2, batch_size=8)
    start = client.get_weights()

    first = client.fit(start, {"seed": 1})
    other = client.fit(start, {"seed": 2})
    again = client.fit(start, {"seed": 1})

    assert first.num_examples == 40
    assert Weights(again.weights).equals(Weights(first.weights))
    assert not Weights(other.weights).equals(Weights(first.weights))  # the order of batches differs
    assert not Weights(first.weights).equals(start)  # it trained


def test_keras_client_config_sets_epochs_and_learning_rate() -> None:
    x, y = _data()
    client = KerasClient(_model(momentum=0.0), x, y, batch_size=40)
    start = client.get_weights()

    still = client.fit(start, {"seed": 0, "lr": 0.0, "local_epochs": 3})

    assert Weights(still.weights).equals(start)  # lr 0: no step moves a weight


def test_keras_client_evaluate_reports_loss_and_accuracy() -> None:
    x, y = _data()
    client = KerasClient(_model(), x, y, x_test=x[:10], y_test=y[:10])

    result = client.evaluate(client.get_weights(), {})

    assert result.num_examples == 10
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert result.loss > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"y": np.zeros(3)}, r"x and y must hold the same number \(> 0\) of samples, got 40 and 3"),
        ({"x_test": np.zeros((2, 3))}, r"pass both x_test and y_test"),
        ({"local_epochs": 0}, r"local_epochs must be >= 1"),
    ],
)
def test_keras_client_bad_arguments_raise_config_error(
    kwargs: dict[str, object], message: str
) -> None:
    x, y = _data()
    arguments: dict[str, object] = {"x": x, "y": y, **kwargs}

    with pytest.raises(ConfigError, match=message):
        KerasClient(_model(), **arguments)  # type: ignore[arg-type]


def test_keras_client_needs_a_compiled_model() -> None:
    x, y = _data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    with pytest.raises(ConfigError, match=r"needs a compiled model: call model.compile"):
        KerasClient(model, x, y)


def test_keras_client_without_test_data_refuses_to_evaluate() -> None:
    x, y = _data()
    client = KerasClient(_model(), x, y)

    with pytest.raises(ConfigError, match="has no test data"):
        client.evaluate(client.get_weights(), {})


def test_keras_clients_learn_together_in_a_simulation() -> None:
    """Four clients with different data: FedAvg of Keras models beats the initial model."""
    model = _model()

    def client_fn(context: ClientContext) -> KerasClient:
        x, y = _data(seed=context.partition_id)
        return KerasClient(model, x, y, x_test=x, y_test=y, local_epochs=2, batch_size=8)

    result = fedloom.simulate(client_fn, num_clients=4, rounds=4)

    accuracy = result.history.series("evaluate.accuracy")
    assert accuracy[-1][1] > 0.85
    assert accuracy[-1][1] > accuracy[0][1]
