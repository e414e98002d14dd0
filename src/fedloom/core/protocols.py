"""The two protocols every layer shares: what a client does, and how the server reaches one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from fedloom.core.messages import ClientId, Config, EvaluateRes, FitRes, Reply, Task
from fedloom.core.weights import Vector, Weights, WeightsLike

__all__ = ["AsyncChannel", "Channel", "Client", "EvaluatingClient", "PluginClient"]


@runtime_checkable
class Client(Protocol):
    """What a participant does, in the shape Flower's NumPyClient users know.

    `evaluate` is optional: a client without it is never asked to evaluate.
    """

    def get_weights(self) -> WeightsLike:
        """Return the model's current weights (names and shapes define the global model)."""
        ...

    def fit(self, weights: Weights, config: Config) -> FitRes:
        """Train from `weights` on local data and return the new weights."""
        ...


class EvaluatingClient(Client, Protocol):
    """A client that can also evaluate weights on its local data."""

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        """Evaluate `weights` on local data."""
        ...


class PluginClient(Client, Protocol):
    """A client that applies client plug-ins (FedProx, SCAFFOLD, FedNova, regularizers).

    The runtime hands it the server's plug-in tensors and the state it kept
    for this client since its last task, and keeps the state it returns: a
    client built afresh for every task still has persistent state.
    """

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        """Train like `fit`, applying the plug-ins named in ``config["plugins"]``."""
        ...


class Channel(Protocol):
    """How the orchestrator reaches clients: in-process, a process pool, or gRPC.

    `run` sends each client its task and yields replies as they arrive, each
    exactly once; a task that fails, or misses the deadline, yields a `Failure`.
    The orchestrator never knows which transport is behind it.
    """

    def clients(self) -> Sequence[ClientId]:
        """The clients available now, in a stable order."""
        ...

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        """Run `tasks` and yield ``(client_id, reply)`` in arrival order."""
        ...


class AsyncChannel(Channel, Protocol):
    """A Channel that also runs tasks in the background, for asynchronous schedules.

    `submit` starts tasks and returns at once; `collect` returns the next
    finished one, each exactly once. A collected reply may hold the transport's
    resources (the gRPC channel's upload slot) until the next `collect`.
    """

    def submit(self, tasks: Mapping[ClientId, Task]) -> None:
        """Start `tasks`; their replies come from `collect`."""
        ...

    def collect(self, *, timeout_s: float | None) -> tuple[ClientId, Reply] | None:
        """The next finished task's reply, or None if none finished within `timeout_s`."""
        ...
