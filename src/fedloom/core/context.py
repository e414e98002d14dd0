"""What a client factory is told about the client it builds."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.core.messages import ClientId
from fedloom.errors import ConfigError

__all__ = ["ClientContext", "Partitioner"]


class Partitioner(Protocol):
    """Splits sample labels (or keys) into disjoint index sets, one per client."""

    def split(
        self, labels: ArrayLike, num_partitions: int, *, seed: int
    ) -> list[NDArray[np.int64]]:
        """Indices of each partition; together they cover every sample exactly once."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientContext:
    """Identity of one client in a federation, handed to the user's ``client_fn``.

    Attributes:
        client_id: the client's name ("0", "1", ... in simulation).
        partition_id: the client's index in ``[0, num_partitions)``.
        num_partitions: how many clients the data is split across.
        seed: the run seed; the same for every client.
        partitioner: how the federation's data is split, if it is configured.
    """

    client_id: ClientId
    partition_id: int
    num_partitions: int
    seed: int = 0
    partitioner: Partitioner | None = None
    cache: dict[bytes, list[NDArray[np.int64]]] | None = field(
        default=None, compare=False, repr=False
    )
    """Where a simulation keeps splits it computed, shared by its clients' contexts."""

    def partition(self, labels: ArrayLike) -> NDArray[np.int64]:
        """This client's sample indices into `labels`, from the configured partitioner.

        Every client computes the same split from the same labels and seed, and
        takes its own part, so no data leaves the client's process.
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
        array = np.ascontiguousarray(labels)
        digest = hashlib.blake2b(array.tobytes(), digest_size=16)
        digest.update(repr((array.dtype.str, array.shape, self.num_partitions, self.seed)).encode())
        digest.update(repr(self.partitioner).encode())
        key = digest.digest()
        if key not in self.cache:
            self.cache[key] = self.partitioner.split(array, self.num_partitions, seed=self.seed)
        return self.cache[key][self.partition_id]
