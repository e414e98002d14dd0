"""What every offline dataset loader shares: the `Dataset` arrays and the missing-file error."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.errors import ConfigError, DatasetNotFound, did_you_mean

__all__ = ["Dataset", "package_file"]


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """One set of samples as NumPy arrays, with a natural client key per sample when it has one.

    Attributes:
        x: the features, one row per sample (its dtype and shape are the loader's).
        y: the targets, shape ``(n,)``.
        classes: the name of each class label ``0..k-1`` (empty for regression).
        feature_names: the name of each column of a 2-D `x` (empty when not meaningful).
        groups: the natural owner of each sample, shape ``(n,)`` of ``str`` (a hospital,
            a speaking role), or None when the data has no natural split. Pass it to
            ``ByKey`` (``[data] partitioner = "by_key"``) for one client per group.

    Example:
        >>> data = Dataset(x=np.zeros((3, 2)), y=np.array([0, 1, 0]), classes=("a", "b"))
        >>> data.subset([0, 2]).y.tolist(), len(data)
        ([0, 0], 3)
    """

    x: NDArray[Any]
    y: NDArray[Any]
    classes: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    groups: NDArray[np.str_] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: ArrayLike) -> Dataset:
        """The samples at `indices` (e.g. one client's partition), groups included."""
        index = np.asarray(indices)
        return Dataset(
            x=self.x[index],
            y=self.y[index],
            classes=self.classes,
            feature_names=self.feature_names,
            groups=None if self.groups is None else self.groups[index],
        )

    def group(self, key: str) -> Dataset:
        """The samples whose natural group is `key` (e.g. one hospital).

        Raises:
            ConfigError: the dataset has no groups, or none is called `key`.
        """
        if self.groups is None:
            raise ConfigError(
                "this dataset has no natural groups; split it with a partitioner such as "
                "Dirichlet(alpha=0.5) instead.",
                field="key",
                value=key,
            )
        names = sorted({str(name) for name in self.groups})
        if key not in names:
            raise ConfigError(
                f"no group {key!r} in this dataset; its groups are: {', '.join(names)}."
                f"{did_you_mean(key, names)}",
                field="key",
                value=key,
            )
        return self.subset(np.flatnonzero(self.groups == key))


def package_file(package: str, parts: Sequence[str], *, install: str) -> Path:
    """The path of a data file shipped inside an installed package, found without importing it.

    Raises:
        DatasetNotFound: the package is not installed, or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound(
            f"the package {package!r}, which ships this dataset, is not installed. "
            f"Install it with: {install}",
            path=None,
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*parts)
        if path.is_file():
            return path
    where = ", ".join(str(Path(loc).joinpath(*parts)) for loc in spec.submodule_search_locations)
    raise DatasetNotFound(
        f"the package {package!r} is installed but has no data file at {where}. "
        f"Reinstall it with: {install}",
        path=where,
    )
