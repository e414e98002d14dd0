"""Client adapters: turn a model and its data into a fedloom Client.

`FunctionClient` and `GradientClient` (a loss-and-gradient function trained
by local SGD, with every client plug-in) need only NumPy; `TorchClient`
(extra ``torch``), `SklearnClient` (extra ``sklearn``) and `KerasClient`
(extra ``keras``, any Keras 3 backend) are imported on first use, so
``import fedloom.client`` never pulls in a framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedloom.client.function import FunctionClient
from fedloom.client.gradient import GradientClient

if TYPE_CHECKING:
    from fedloom.client.keras import KerasClient
    from fedloom.client.sklearn import SklearnClient
    from fedloom.client.torch import TorchClient

__all__ = ["FunctionClient", "GradientClient", "KerasClient", "SklearnClient", "TorchClient"]

_LAZY = {
    "TorchClient": ("fedloom.client.torch", "torch", "torch"),
    "SklearnClient": ("fedloom.client.sklearn", "sklearn", "sklearn"),
    "KerasClient": ("fedloom.client.keras", "keras", "keras"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fedloom.client' has no attribute '{name}'")
    module_name, package, extra = _LAZY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != package:
            raise
        raise ImportError(
            f"{name} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'fedloom[{extra}]'"
        ) from exc
    return getattr(module, name)
