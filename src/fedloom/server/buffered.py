"""The asynchronous result source: clients train concurrently, K arrivals make a version.

Used by the orchestrator's one round loop when the strategy's schedule is
`Buffered` (FedBuff, FedAsync): a "round" is one aggregation of K results.
Free clients pull the current version as soon as they are free; each result
records the version it trained from, so its staleness is known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

from fedloom.core import AsyncChannel, ClientId, Config, Reply, Weights, generator
from fedloom.errors import ConfigError
from fedloom.strategies import FitResult, Strategy, StrategyState
from fedloom.strategies.schedules import Buffered

__all__ = ["BufferedSource"]

logger = logging.getLogger(__name__)

CheckFit = Callable[[int, Weights, ClientId, Reply, dict[ClientId, str]], FitResult | None]
Seeded = Callable[[Config, ClientId, tuple[int, ...]], Config]


class BufferedSource:
    """Keeps `concurrency` clients training and yields results until K arrive."""

    def __init__(
        self,
        channel: object,
        strategy: Strategy,
        *,
        seed: int,
        timeout_s: float | None,
        check_fit: CheckFit,
        seeded: Seeded,
    ) -> None:
        if not (hasattr(channel, "submit") and hasattr(channel, "collect")):
            raise ConfigError(
                f"the Buffered (asynchronous) schedule needs a channel that runs tasks in the "
                f"background (submit/collect); {type(channel).__name__} does not. Use "
                "InProcessChannel or a network channel, or the Sync schedule.",
                field="schedule",
            )
        assert isinstance(strategy.schedule, Buffered)
        self._channel: AsyncChannel = channel  # type: ignore[assignment]
        self._strategy = strategy
        self._schedule: Buffered = strategy.schedule
        self._seed = seed
        self._timeout_s = timeout_s
        self._check_fit = check_fit
        self._seeded = seeded
        self._in_flight: dict[ClientId, int] = {}
        self._versions: dict[int, Weights] = {}
        self._dispatches = 0
        self.staleness: list[int] = []

    def results(
        self, server_round: int, state: StrategyState, failures: dict[ClientId, str]
    ) -> Iterator[FitResult]:
        """Yield the next K usable results; version ``server_round - 1`` is the current one."""
        version = server_round - 1
        self._versions[version] = state.weights
        self.staleness = []
        self._top_up(server_round, state, failures)
        received = 0
        while received < self._schedule.buffer_size:
            arrival = self._channel.collect(timeout_s=self._timeout_s)
            if arrival is None:
                logger.warning("round %d: no more results arrived", server_round)
                return
            client_id, reply = arrival
            trained = self._in_flight.pop(client_id)
            base = self._versions[trained]
            result = self._check_fit(server_round, base, client_id, reply, failures)
            if result is None:
                self._top_up(server_round, state, failures)
                continue
            staleness = version - trained
            self.staleness.append(staleness)
            received += 1
            if received < self._schedule.buffer_size:  # else it gets the next version
                self._top_up(server_round, state, failures)
            yield replace(
                result,
                base=base if self._schedule.relative_to == "trained" else None,
                staleness=staleness,
            )
        live = set(self._in_flight.values()) | {version}
        self._versions = {v: w for v, w in self._versions.items() if v in live}

    def _top_up(
        self, server_round: int, state: StrategyState, failures: dict[ClientId, str]
    ) -> None:
        """Give free clients the current version until `concurrency` are training.

        A client that failed in this version is not asked again until the next.
        """
        need = self._schedule.concurrency - len(self._in_flight)
        busy = self._in_flight.keys() | failures.keys()
        free = [c for c in self._channel.clients() if c not in busy]
        if need <= 0 or not free:
            return
        self._dispatches += 1
        rng = generator(self._seed, "async", server_round, self._dispatches)
        tasks = self._strategy.configure_fit(server_round, state, free, rng)
        sampled = list(tasks)
        if len(sampled) > need:  # a uniform choice among the sampled, not the lowest ids
            picks = sorted(rng.choice(len(sampled), size=need, replace=False))
            sampled = [sampled[i] for i in picks]
        chosen = {client_id: tasks[client_id] for client_id in sampled}
        seeded = {
            client_id: replace(
                ins, config=self._seeded(ins.config, client_id, (server_round, self._dispatches))
            )
            for client_id, ins in chosen.items()
        }
        for client_id in seeded:
            self._in_flight[client_id] = server_round - 1
        self._channel.submit(seeded)
