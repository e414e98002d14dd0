"""What a client factory is told about the client it builds."""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.core.messages import ClientId
from fedloom.errors import ConfigError

__all__ = ["ClientContext", "Partitioner", "SplitCache"]


class Partitioner(Protocol):
    """Splits sample labels (or keys) into disjoint index sets, one per client."""

    def split(
        self, labels: ArrayLike, num_partitions: int, *, seed: int
    ) -> list[NDArray[np.int64]]:
        """Indices of each partition; together they cover every sample exactly once."""
        ...


class _Split:
    """One computed split, kept compactly: every partition's indices end to end, and offsets.

    Two arrays whatever the number of partitions, so a cached split of 100,000
    partitions is not 100,000 Python objects; a partition is a view into it.
    """

    __slots__ = ("_indices", "_offsets")

    def __init__(self, parts: list[NDArray[np.int64]]) -> None:
        sizes = np.fromiter((part.size for part in parts), dtype=np.int64, count=len(parts))
        self._offsets = np.concatenate(([0], np.cumsum(sizes)))
        self._indices = (
            np.concatenate(parts).astype(np.int64, copy=False)
            if parts
            else np.empty(0, dtype=np.int64)
        )
        self._indices.setflags(write=False)

    def part(self, partition_id: int) -> NDArray[np.int64]:
        """The indices of one partition (a read-only view)."""
        start, stop = self._offsets[partition_id], self._offsets[partition_id + 1]
        return self._indices[start:stop]


class SplitCache:
    """Where a simulation keeps the splits it computed, one compact entry per distinct split.

    A split is keyed by a hash of the labels' bytes, the partitioner and the
    seed, so every client with equal labels shares it. Hashing large labels
    for every task would cost more than small clients' training, so a labels
    array already seen is recognised by identity (while it is alive): do not
    modify labels in place during a run.
    """

    __slots__ = ("_by_identity", "_splits")

    def __init__(self) -> None:
        self._splits: dict[bytes, _Split] = {}
        self._by_identity: dict[tuple[int, str], tuple[weakref.ref[Any], bytes]] = {}

    def __len__(self) -> int:
        return len(self._splits)

    def part(
        self, labels: ArrayLike, partitioner: Partitioner, num_partitions: int, *, seed: int
    ) -> tuple[bytes, _Split]:
        """The split of `labels` (computed on first use), and its key."""
        identity = (id(labels), f"{partitioner!r}/{num_partitions}/{seed}")
        known = self._by_identity.get(identity)
        if known is not None and known[0]() is labels:
            return known[1], self._splits[known[1]]
        array = np.ascontiguousarray(labels)
        digest = hashlib.blake2b(array.tobytes(), digest_size=16)
        digest.update(repr((array.dtype.str, array.shape, num_partitions, seed)).encode())
        digest.update(repr(partitioner).encode())
        key = digest.digest()
        if key not in self._splits:
            self._splits[key] = _Split(partitioner.split(array, num_partitions, seed=seed))
        with contextlib.suppress(TypeError):  # a list cannot be weakly referenced: hashed each time
            self._by_identity[identity] = (weakref.ref(labels), key)
        return key, self._splits[key]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientContext:
    """Identity of one client in a federation, handed to the user's ``client_fn``.

    Attributes:
        client_id: the client's name ("0", "1", ... in simulation).
        partition_id: the client's index in ``[0, num_partitions)``.
        num_partitions: how many clients the data is split across.
        seed: the run seed; the same for every client.
        partitioner: how the federation's data is split, if it is configured.
        device: where the client should compute ("cpu", "cuda:0", ...): the
            simulation's ``device`` option, resolved. Pass it on, e.g.
            ``TorchClient(..., device=context.device)``.
    """

    client_id: ClientId
    partition_id: int
    num_partitions: int
    seed: int = 0
    partitioner: Partitioner | None = None
    device: str = "cpu"
    cache: SplitCache | None = field(default=None, compare=False, repr=False)
    """Where a simulation keeps splits it computed, shared by its clients' contexts."""

    def partition(self, labels: ArrayLike) -> NDArray[np.int64]:
        """This client's sample indices into `labels`, from the configured partitioner.

        Every client computes the same split from the same labels and seed, and
        takes its own part, so no data leaves the client's process. In a
        simulation the split is computed once and kept compactly (two arrays,
        whatever the number of clients); the indices are a read-only view.
        """
        if self.partitioner is None:
            raise ConfigError(
                "ClientContext.partition() needs a partitioner, but none was configured. "
                "Pass partitioner=... to simulate() or set [data].partitioner in the config."
            )
        if self.cache is None:
            return self.partitioner.split(labels, self.num_partitions, seed=self.seed)[
                self.partition_id
            ]
        _, split = self.cache.part(labels, self.partitioner, self.num_partitions, seed=self.seed)
        return split.part(self.partition_id)
