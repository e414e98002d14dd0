"""Partitioners: split one dataset's sample indices into disjoint sets, one per client.

Each partitioner is a small frozen dataclass of hyperparameters with one method,
``split(labels, num_partitions, *, seed)``, that returns one sorted ``int64`` index
array per partition. Together the arrays cover every sample exactly once. Only
indices are computed; the data itself is never copied. The same labels and seed
give the same split in every process, so each client can compute the split
locally and keep its own part.

Randomness comes from `fedloom.core.rng.generator(seed, "partition", <name>)`,
never from a global generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.core.rng import generator
from fedloom.errors import ConfigError

__all__ = ["PARTITIONERS", "ByKey", "Dirichlet", "IID", "Shards"]

_MAX_ATTEMPTS = 100


def _as_labels(labels: ArrayLike) -> NDArray[Any]:
    """`labels` as a 1-D array (a view when it already is one), or a ConfigError."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ConfigError(
            f"labels must be 1-D (one label or key per sample), got shape {array.shape}. "
            "Pass the label column, e.g. y, or y.argmax(axis=1) for one-hot labels.",
            field="labels",
            value=array.shape,
        )
    if array.size == 0:
        raise ConfigError(
            "labels is empty, so there is nothing to partition. "
            "Pass one label or key per sample of the dataset.",
            field="labels",
            value=array.shape,
        )
    return array


def _check_num_partitions(num_partitions: int) -> None:
    if (
        not isinstance(num_partitions, int | np.integer)
        or isinstance(num_partitions, bool)
        or num_partitions < 1
    ):
        raise ConfigError(
            f"num_partitions must be an integer >= 1, got {num_partitions!r}. "
            "Pass the number of clients to split the data across.",
            field="num_partitions",
            value=num_partitions,
        )


def _check_non_empty(name: str, num_samples: int, num_partitions: int) -> None:
    if num_partitions > num_samples:
        raise ConfigError(
            f"{name} cannot split {num_samples} samples into num_partitions="
            f"{num_partitions} non-empty partitions. Use at most {num_samples} partitions, "
            "or more data.",
            field="num_partitions",
            value=num_partitions,
        )


def _unique(labels: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """Sorted distinct labels, and each sample's position among them."""
    try:
        values, inverse = np.unique(labels, return_inverse=True)
    except TypeError as exc:
        raise ConfigError(
            f"labels must be mutually comparable so they can be sorted, got dtype "
            f"{labels.dtype} with mixed types ({exc}). Convert them to one type, "
            "e.g. np.asarray(labels, dtype=str).",
            field="labels",
            value=labels.dtype,
        ) from exc
    return values, inverse.reshape(-1).astype(np.int64, copy=False)


def _group(owner: NDArray[np.int64], num_partitions: int) -> list[NDArray[np.int64]]:
    """Indices of the samples owned by each partition, each ascending."""
    # A stable sort by owner keeps each partition's indices in ascending order.
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    counts = np.bincount(owner, minlength=num_partitions)
    return list(np.split(order, np.cumsum(counts)[:-1]))


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True, kw_only=True)
class IID:
    """Independent, identically distributed split: shuffle, then cut into near-equal parts.

    ``perm = shuffle(0..n-1)``; partition ``j`` gets the ``j``-th of ``num_partitions``
    contiguous chunks of ``perm``, so sizes differ by at most one (the first
    ``n % num_partitions`` partitions get the extra sample).

    Example:
        >>> parts = IID().split([0, 1, 0, 1, 0], 2, seed=0)
        >>> [part.size for part in parts], sorted(int(i) for part in parts for i in part)
        ([3, 2], [0, 1, 2, 3, 4])
    """

    def split(
        self, labels: ArrayLike, num_partitions: int, *, seed: int
    ) -> list[NDArray[np.int64]]:
        """Indices of each partition, sorted ascending; sizes differ by at most one.

        Args:
            labels: one label (or any value) per sample; only its length is used.
            num_partitions: how many partitions to make, at most the number of samples.
            seed: the run seed; the same seed gives the same split.

        Returns:
            One ascending ``int64`` index array per partition.

        Raises:
            ConfigError: `labels` is not 1-D or empty, or `num_partitions` is not in
                ``[1, len(labels)]``.
        """
        array = _as_labels(labels)
        _check_num_partitions(num_partitions)
        _check_non_empty("IID", array.size, num_partitions)
        rng = generator(seed, "partition", "iid")
        base, extra = divmod(array.size, num_partitions)
        sizes = np.full(num_partitions, base, dtype=np.int64)
        sizes[:extra] += 1
        owner = np.empty(array.size, dtype=np.int64)
        owner[rng.permutation(array.size)] = np.repeat(
            np.arange(num_partitions, dtype=np.int64), sizes
        )
        return _group(owner, num_partitions)


@dataclass(frozen=True, kw_only=True)
class Dirichlet:
    """Label skew: each class is spread over the partitions by Dirichlet proportions.

    Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, https://arxiv.org/abs/1909.06335::

        for each class c with shuffled indices I_c:
            p ~ Dir(alpha * 1_K)                     # K = num_partitions
            cut I_c at floor(cumsum(p) * |I_c|)       # chunk j goes to partition j
        if some partition has < min_size samples: draw again (at most 100 times)

    Small `alpha` (e.g. 0.05) gives each client few classes; large `alpha` (e.g. 100)
    approaches an IID split. As in Flower's ``DirichletPartitioner``, a split is
    redrawn from the continuing random stream until it satisfies `min_size`; we
    raise `ConfigError` after 100 attempts instead of looping forever, and we do
    not rebalance partition sizes.

    Attributes:
        alpha: concentration of the Dirichlet distribution, > 0.
        min_size: the fewest samples any partition may get; 0 allows empty partitions.

    Example:
        >>> parts = Dirichlet(alpha=0.5).split([0, 0, 1, 1, 2, 2], 2, seed=0)
        >>> sorted(int(i) for part in parts for i in part)
        [0, 1, 2, 3, 4, 5]
    """

    alpha: float
    min_size: int = 0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.alpha, int | float | np.floating | np.integer)
            or isinstance(self.alpha, bool)
            or not self.alpha > 0
            or not math.isfinite(self.alpha)
        ):
            raise ConfigError(
                f"Dirichlet alpha must be a finite number > 0, got {self.alpha!r}. Use a "
                "small alpha (e.g. 0.1) for strong label skew or a large one (e.g. 100) "
                "for a near-IID split.",
                field="alpha",
                value=self.alpha,
            )
        if not _is_count(self.min_size, 0):
            raise ConfigError(
                f"Dirichlet min_size must be an integer >= 0, got {self.min_size!r}. Pass 0 "
                "to allow empty partitions, or the fewest samples each partition needs.",
                field="min_size",
                value=self.min_size,
            )

    def split(
        self, labels: ArrayLike, num_partitions: int, *, seed: int
    ) -> list[NDArray[np.int64]]:
        """Indices of each partition, sorted ascending, with Dirichlet label skew.

        Args:
            labels: one class label per sample (any sortable dtype).
            num_partitions: how many partitions to make.
            seed: the run seed; the same seed gives the same split.

        Returns:
            One ascending ``int64`` index array per partition, each with at least
            `min_size` indices.

        Raises:
            ConfigError: `labels` is not 1-D or empty, `num_partitions` < 1, there are
                fewer than ``num_partitions * min_size`` samples, or no split met
                `min_size` within 100 attempts.
        """
        array = _as_labels(labels)
        _check_num_partitions(num_partitions)
        if num_partitions * self.min_size > array.size:
            raise ConfigError(
                f"Dirichlet(min_size={self.min_size}) needs at least num_partitions * "
                f"min_size = {num_partitions * self.min_size} samples, but labels has "
                f"{array.size}. Lower min_size or num_partitions.",
                field="min_size",
                value=self.min_size,
            )
        _, inverse = _unique(array)
        classes = [np.flatnonzero(inverse == c) for c in range(int(inverse.max()) + 1)]
        rng = generator(seed, "partition", "dirichlet")
        smallest = 0
        for _ in range(_MAX_ATTEMPTS):
            owner = self._draw(classes, array.size, num_partitions, rng)
            smallest = int(np.bincount(owner, minlength=num_partitions).min())
            if smallest >= self.min_size:
                return _group(owner, num_partitions)
        raise ConfigError(
            f"Dirichlet(alpha={self.alpha}, min_size={self.min_size}) could not give each "
            f"of {num_partitions} partitions at least {self.min_size} samples in "
            f"{_MAX_ATTEMPTS} attempts (the last draw's smallest partition had {smallest}). "
            "Lower min_size, raise alpha, or use fewer partitions.",
            field="min_size",
            value=self.min_size,
        )

    def _draw(
        self,
        classes: list[NDArray[np.intp]],
        num_samples: int,
        num_partitions: int,
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """One draw: the partition that owns each sample."""
        owner = np.empty(num_samples, dtype=np.int64)
        concentration = np.full(num_partitions, float(self.alpha))
        for indices in classes:
            shuffled = rng.permutation(indices)
            proportions = rng.dirichlet(concentration)
            if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
                # Older numpy returns NaN when every gamma draw underflows (tiny alpha);
                # the limit of Dir(alpha) as alpha -> 0 is a uniformly chosen vertex.
                proportions = np.zeros(num_partitions)
                proportions[rng.integers(num_partitions)] = 1.0
            cuts = np.floor(np.cumsum(proportions)[:-1] * shuffled.size).astype(np.int64)
            cuts = np.clip(cuts, 0, shuffled.size)
            sizes = np.diff(cuts, prepend=0, append=shuffled.size)
            owner[shuffled] = np.repeat(np.arange(num_partitions, dtype=np.int64), sizes)
        return owner


@dataclass(frozen=True, kw_only=True)
class Shards:
    """Pathological non-IID split: each client gets a few label-sorted shards.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629::

        order = stable_argsort(labels)
        cut order into K * s contiguous shards of near-equal size   # K = num_partitions
        give each partition s shards chosen uniformly without replacement

    With balanced classes whose sizes are a multiple of the shard size, each client
    sees at most `shards_per_client` classes. The paper uses equal shards (200 of
    300 MNIST images); we allow sizes that differ by one so any sample count works.

    Attributes:
        shards_per_client: how many shards each partition gets, >= 1.

    Example:
        >>> parts = Shards(shards_per_client=1).split([1, 0, 1, 0], 2, seed=0)
        >>> sorted(part.tolist() for part in parts)
        [[0, 2], [1, 3]]
    """

    shards_per_client: int = 2

    def __post_init__(self) -> None:
        if not _is_count(self.shards_per_client, 1):
            raise ConfigError(
                f"Shards shards_per_client must be an integer >= 1, got "
                f"{self.shards_per_client!r}. The paper uses 2 (at most two classes per "
                "client).",
                field="shards_per_client",
                value=self.shards_per_client,
            )

    def split(
        self, labels: ArrayLike, num_partitions: int, *, seed: int
    ) -> list[NDArray[np.int64]]:
        """Indices of each partition, sorted ascending, made of label-sorted shards.

        Args:
            labels: one class label per sample (any sortable dtype).
            num_partitions: how many partitions to make.
            seed: the run seed; the same seed gives the same split.

        Returns:
            One ascending ``int64`` index array per partition.

        Raises:
            ConfigError: `labels` is not 1-D or empty, `num_partitions` is not in
                ``[1, len(labels)]``, or there are fewer samples than shards.
        """
        array = _as_labels(labels)
        _check_num_partitions(num_partitions)
        _check_non_empty("Shards", array.size, num_partitions)
        num_shards = num_partitions * self.shards_per_client
        if num_shards > array.size:
            raise ConfigError(
                f"Shards needs num_partitions * shards_per_client = {num_partitions} * "
                f"{self.shards_per_client} = {num_shards} non-empty shards, but labels has "
                f"only {array.size} samples. Lower shards_per_client or num_partitions.",
                field="shards_per_client",
                value=self.shards_per_client,
            )
        _, inverse = _unique(array)
        order = np.argsort(inverse, kind="stable")
        base, extra = divmod(array.size, num_shards)
        shard_sizes = np.full(num_shards, base, dtype=np.int64)
        shard_sizes[:extra] += 1
        rng = generator(seed, "partition", "shards")
        partition_of_shard = np.empty(num_shards, dtype=np.int64)
        partition_of_shard[rng.permutation(num_shards)] = (
            np.arange(num_shards, dtype=np.int64) // self.shards_per_client
        )
        owner = np.empty(array.size, dtype=np.int64)
        owner[order] = np.repeat(partition_of_shard, shard_sizes)
        return _group(owner, num_partitions)


@dataclass(frozen=True, kw_only=True)
class ByKey:
    """Natural split: one partition per distinct key (hospital, user, device id).

    Partition ``j`` holds the samples whose key is ``keys(labels)[j]``, the ``j``-th
    distinct key in sorted order. The split involves no randomness, so `seed` is
    ignored.

    Example:
        >>> keys = ["b", "a", "b", "c", "a"]
        >>> ByKey().keys(keys).tolist()
        ['a', 'b', 'c']
        >>> [part.tolist() for part in ByKey().split(keys, 3, seed=0)]
        [[1, 4], [0, 2], [3]]
    """

    def keys(self, labels: ArrayLike) -> NDArray[Any]:
        """The distinct keys in sorted order; partition ``j`` belongs to the ``j``-th.

        Args:
            labels: one key per sample (any sortable dtype, including strings).

        Returns:
            The sorted distinct keys.

        Raises:
            ConfigError: `labels` is not 1-D, is empty, or mixes incomparable types.
        """
        values, _ = _unique(_as_labels(labels))
        return values

    def split(
        self, labels: ArrayLike, num_partitions: int, *, seed: int
    ) -> list[NDArray[np.int64]]:
        """Indices of the samples with each distinct key, in sorted key order.

        Args:
            labels: one key per sample (any sortable dtype, including strings).
            num_partitions: must equal the number of distinct keys.
            seed: ignored; the split is fixed by the keys.

        Returns:
            One ascending ``int64`` index array per distinct key.

        Raises:
            ConfigError: `labels` is not 1-D or empty, or `num_partitions` differs from
                the number of distinct keys.
        """
        del seed  # the split is fixed by the keys
        array = _as_labels(labels)
        _check_num_partitions(num_partitions)
        values, inverse = _unique(array)
        if num_partitions != values.size:
            raise ConfigError(
                f"ByKey makes one partition per distinct key; labels has {values.size} "
                f"distinct keys, but num_partitions={num_partitions}. Pass num_partitions="
                f"{values.size} (ByKey().keys(labels) lists the keys in partition order).",
                field="num_partitions",
                value=num_partitions,
            )
        return _group(inverse, num_partitions)


PARTITIONERS: dict[str, type] = {
    "iid": IID,
    "dirichlet": Dirichlet,
    "shards": Shards,
    "by_key": ByKey,
}
"""Partitioner classes by the name used in configuration (``[data].partitioner``)."""
