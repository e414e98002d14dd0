"""`KerasClient`: a compiled Keras 3 model and its data, as a fedloom Client (PyFed's users).

It works with any Keras backend (JAX, TensorFlow, PyTorch): choose one as Keras
does, with the ``KERAS_BACKEND`` environment variable set before Keras is first
imported. The federated weights are the model's variables (``model.weights``:
trainable ones and non-trainable state such as BatchNorm statistics), named by
their Keras path. The model must be compiled: its optimizer, loss and metrics
are the user's, as in ``model.fit``.

Each fit starts the optimizer afresh (its slots and step count are zeroed, as a
newly built optimizer would be), and shuffles the data with a generator seeded
by ``config["seed"]``, so the order of batches is reproducible without touching
Keras's global seed. Layers that draw random numbers while training (dropout)
use the backend's generator and are not reseeded.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.core import Config, EvaluateRes, FitRes, Scalar, Weights
from fedloom.errors import ConfigError

__all__ = ["KerasClient"]


class KerasClient:
    """Train and evaluate a compiled Keras 3 model on local arrays.

    Args:
        model: a compiled ``keras.Model`` (``model.compile(optimizer=..., loss=...)``).
        x: the training inputs (an array, first axis = samples).
        y: the training targets, one per input.
        x_test: optional evaluation inputs; without them the client is not evaluated.
        y_test: the evaluation targets.
        local_epochs: epochs per round; ``config["local_epochs"]`` overrides it.
        batch_size: the batch size of training and evaluation.

    ``config["lr"]``, when the server sends it, sets the optimizer's learning rate.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> client = KerasClient(model, np.zeros((4, 2)), np.zeros((4, 1)))
        >>> sorted(client.get_weights())  # doctest: +ELLIPSIS
        ['dense.../bias', 'dense.../kernel']
    """

    def __init__(
        self,
        model: keras.Model,
        x: ArrayLike,
        y: ArrayLike,
        *,
        x_test: ArrayLike | None = None,
        y_test: ArrayLike | None = None,
        local_epochs: int = 1,
        batch_size: int = 32,
    ) -> None:
        if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
            raise ConfigError(
                "KerasClient needs a compiled model: call model.compile(optimizer=..., "
                "loss=..., metrics=[...]) before building the client.",
                field="model",
            )
        if local_epochs < 1:
            raise ConfigError(
                f"local_epochs must be >= 1, got {local_epochs}.", field="local_epochs"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.", field="batch_size")
        self.model = model
        self.x, self.y = _pair(x, y, "x", "y")
        self.test: tuple[NDArray[Any], NDArray[Any]] | None = None
        if x_test is not None or y_test is not None:
            if x_test is None or y_test is None:
                raise ConfigError(
                    "pass both x_test and y_test to evaluate, or neither.", field="x_test"
                )
            self.test = _pair(x_test, y_test, "x_test", "y_test")
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self._names = _variable_names(model)

    def get_weights(self) -> Weights:
        """The model's variables, copied into NumPy arrays, by Keras path."""
        return Weights(
            {
                name: _to_numpy(variable)
                for name, variable in zip(self._names, self.model.weights, strict=True)
            }
        )

    def set_weights(self, weights: Weights) -> None:
        """Load `weights` into the model's variables."""
        self.model.set_weights([weights[name] for name in self._names])

    def fit(self, weights: Weights, config: Config) -> FitRes:
        self.set_weights(weights)
        self._reset_optimizer(config)
        epochs = int(config.get("local_epochs", self.local_epochs))
        rng = np.random.default_rng(int(config.get("seed", 0)))
        loss = 0.0
        for _ in range(epochs):
            order = rng.permutation(len(self.y))
            history = self.model.fit(
                self.x[order],
                self.y[order],
                batch_size=self.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
            loss = float(history.history["loss"][-1])
        return FitRes(self.get_weights(), len(self.y), {"loss": loss})

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        if self.test is None:
            raise ConfigError(
                "this KerasClient has no test data. Pass x_test=... and y_test=..., or set "
                "fraction_evaluate=0 in the strategy.",
                field="x_test",
            )
        self.set_weights(weights)
        x_test, y_test = self.test
        results = self.model.evaluate(
            x_test, y_test, batch_size=self.batch_size, verbose=0, return_dict=True
        )
        metrics: dict[str, Scalar] = {
            name: float(value) for name, value in results.items() if name != "loss"
        }
        return EvaluateRes(float(results["loss"]), len(y_test), metrics)

    def _reset_optimizer(self, config: Config) -> None:
        """Zero the optimizer's slots and step count; apply ``config["lr"]`` if sent."""
        optimizer = self.model.optimizer
        for variable in optimizer.variables:
            if variable.name != "learning_rate":  # a hyperparameter, not state
                variable.assign(keras.ops.zeros(variable.shape, dtype=variable.dtype))
        if "lr" in config:
            optimizer.learning_rate = float(config["lr"])


def _to_numpy(variable: keras.Variable) -> NDArray[Any]:
    """A NumPy copy of the variable's value.

    On the torch backend, ``keras.ops.convert_to_numpy`` calls ``np.array(tensor)``, and
    ``torch.Tensor.__array__`` takes no ``copy`` keyword, which NumPy 2 flags with a
    DeprecationWarning; the tensor's own ``.numpy()`` does the same job without it.
    """
    value = variable.value
    if keras.backend.backend() == "torch":
        import torch

        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; the wire has none either
                tensor = tensor.float()
            return np.array(tensor.numpy(), copy=True)
    return np.array(keras.ops.convert_to_numpy(value), copy=True)


def _pair(
    x: ArrayLike, y: ArrayLike, x_name: str, y_name: str
) -> tuple[NDArray[Any], NDArray[Any]]:
    inputs, targets = np.asarray(x), np.asarray(y)
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ConfigError(
            f"{x_name} and {y_name} must hold the same number (> 0) of samples, got "
            f"{len(inputs)} and {len(targets)}.",
            field=x_name,
        )
    return inputs, targets


def _variable_names(model: keras.Model) -> list[str]:
    """Each variable's Keras path; a path used twice gets its index as a suffix."""
    paths = [str(getattr(variable, "path", variable.name)) for variable in model.weights]
    if not paths:
        raise ConfigError(
            "the Keras model has no weights yet. Build it first: give it an Input layer "
            "(keras.Input(shape)) or call model.build(input_shape).",
            field="model",
        )
    return [path if paths.count(path) == 1 else f"{path}#{i}" for i, path in enumerate(paths)]
