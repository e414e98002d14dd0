"""A client's share of a dataset, materialized only when the client is active.

Partitioners compute indices, never copies. `take` turns a client's indices
into its data at the moment its client is built: the rows of a NumPy array (a
memory-mapped array reads only those rows from disk), or a lazy
``torch.utils.data.Subset`` of a torch ``Dataset`` that reads a sample only
when the client's loader asks for it. `labels_of` finds the labels a
partitioner needs in a torch dataset without reading its samples.

Example:
    >>> import numpy as np
    >>> from fedloom.data import IID
    >>> x, y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 0, 1])
    >>> rows = IID().split(y, 3, seed=0)[1]
    >>> take((x, y), rows)[1].shape
    (2,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.errors import ConfigError

__all__ = ["labels_of", "take"]


def take(data: Any, indices: ArrayLike) -> Any:
    """The samples of `data` at `indices`: one client's share, made now.

    Args:
        data: a NumPy array (or memory map), a torch tensor, a torch ``Dataset``,
            or a tuple or list of these (e.g. ``(x, y)``), indexed along the first axis.
        indices: the client's sample indices (``context.partition(labels)``).

    Returns:
        Arrays and tensors: their rows at `indices` (a copy of this client's rows
        only). A torch ``Dataset``: a ``Subset`` of it (no copy; samples are read
        when iterated). A tuple or list: the same for each item.

    Raises:
        ConfigError: `data` is none of these.
    """
    rows = np.asarray(indices, dtype=np.int64)
    if isinstance(data, tuple | list):
        return type(data)(take(item, rows) for item in data)
    if isinstance(data, np.ndarray):
        return data[rows]
    torch = _torch()
    if torch is not None:
        if isinstance(data, torch.Tensor):
            return data[torch.from_numpy(rows).to(data.device)]
        if isinstance(data, torch.utils.data.Dataset):
            return torch.utils.data.Subset(data, rows.tolist())
    raise ConfigError(
        f"take() splits NumPy arrays, torch tensors and torch Datasets (or tuples of them), "
        f"got {type(data).__name__}. Convert it with np.asarray(...) or wrap it in a torch "
        "Dataset.",
        field="data",
        value=type(data).__name__,
    )


def labels_of(dataset: Any) -> NDArray[Any]:
    """The labels of a torch dataset (its ``targets`` or ``labels``), without reading samples.

    CPU tensors and arrays are shared, not copied. A ``Subset`` gives its
    dataset's labels at its indices.

    Raises:
        ConfigError: the dataset has neither attribute.
    """
    torch = _torch()
    if torch is not None and isinstance(dataset, torch.utils.data.Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for name in ("targets", "labels"):
        labels = getattr(dataset, name, None)
        if labels is None:
            continue
        if torch is not None and isinstance(labels, torch.Tensor):
            return np.asarray(labels.detach().cpu().numpy())
        return np.asarray(labels)
    raise ConfigError(
        f"{type(dataset).__name__} has no 'targets' or 'labels' attribute to partition by. "
        "Pass the labels to context.partition(...) yourself (one per sample, in order).",
        field="dataset",
        value=type(dataset).__name__,
    )


def _torch() -> Any:
    """torch when it is installed (only then can data be a tensor or Dataset), else None."""
    try:
        import torch
        import torch.utils.data
    except ImportError:
        return None
    return torch
