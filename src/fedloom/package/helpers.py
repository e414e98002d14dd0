"""File helpers for entry points: FEDn's ``get_helper``, ``save_metadata`` and ``save_metrics``.

A FEDn entry point runs here with one line changed::

    from fedloom.package.helpers import get_helper, save_metadata, save_metrics

Models are written as safetensors (never pickles), whatever the helper's name;
``helper.save`` takes numpy arrays or anything with ``.numpy()`` (torch tensors,
Keras variables), and ``helper.load`` returns numpy arrays in their saved order.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from fedloom.core import Weights
from fedloom.errors import ConfigError, did_you_mean
from fedloom.transport.codec import save_weights

__all__ = ["ModelHelper", "get_helper", "save_metadata", "save_metrics"]

_NAMES = ("numpyhelper", "pytorchhelper", "kerashelper", "numpy", "pytorch", "torch", "keras")


class ModelHelper:
    """Saves and loads a model's named arrays as one safetensors file."""

    def save(self, weights: Mapping[str, object], path: str | os.PathLike[str]) -> str:
        """Write `weights` (name -> array or tensor) to `path`; returns the path."""
        arrays = {name: _as_array(name, value) for name, value in weights.items()}
        dtypes = {array.dtype for array in arrays.values()}
        dtype = str(np.result_type(*dtypes)) if dtypes else None
        save_weights(path, Weights(arrays, dtype=dtype))
        return os.fspath(path)

    def load(self, path: str | os.PathLike[str]) -> OrderedDict[str, NDArray[np.floating]]:
        """Read a model file (safetensors or .npz) as name -> numpy array, in order."""
        from fedloom.package.client import read_model_file

        weights = read_model_file(path)
        return OrderedDict((name, np.array(array)) for name, array in weights.items())


def get_helper(name: str) -> ModelHelper:
    """The model-file helper; every framework's helper writes the same safetensors files.

    Raises:
        ConfigError: `name` is not a known helper.
    """
    if name not in _NAMES:
        raise ConfigError(
            f"unknown helper {name!r}; expected one of {', '.join(_NAMES)}."
            f"{did_you_mean(name, _NAMES)}",
            field="helper",
        )
    return ModelHelper()


def save_metadata(metadata: Mapping[str, object], filename: str | os.PathLike[str]) -> None:
    """Write the training metadata (``num_examples`` and any numbers) next to the model file."""
    _write_json(metadata, f"{os.fspath(filename)}-metadata")


def save_metrics(metrics: Mapping[str, object], filename: str | os.PathLike[str]) -> None:
    """Write validation metrics as the JSON the client reads back."""
    _write_json(metrics, os.fspath(filename))


def _write_json(values: Mapping[str, object], path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({key: _plain(value) for key, value in values.items()}, handle)


def _plain(value: object) -> object:
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _as_array(name: str, value: object) -> NDArray[np.floating]:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
    if not isinstance(value, np.ndarray) and hasattr(value, "numpy"):
        value = value.numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        if np.issubdtype(array.dtype, np.integer):  # e.g. BatchNorm's counters
            return array.astype(np.float32)
        raise ConfigError(f"tensor {name!r} has dtype {array.dtype}; models hold numbers.")
    return array
