"""Relays (FEDn's combiners): a client upstream whose fit is one round of its own federation.

A `Relay` is a `Client` of its upstream server and runs the one orchestrator
over its downstream `Channel`. For each fit task it runs round
``config["server_round"]`` of its sub-federation with plain FedAvg (weighted
mean, server step 1) and sends back the mean of its clients' weights with
their total ``num_examples`` as its weight. The upstream weighted mean of the
relays' results is then the weighted mean over every leaf client::

    a_r = sum_{i in r} n_i w_i / N_r,   N_r = sum_{i in r} n_i
    sum_r N_r a_r / sum_r N_r = sum_i n_i w_i / sum_i n_i

so a tree of relays, of any depth, gives the global FedAvg of the flat
federation (up to float rounding). For that the relay derives each client's
seed from the *run* seed (give it the upstream server's ``seed``), the
client's own id and the upstream round, and forwards the upstream client
config, exactly as the flat server would. Evaluation is forwarded the same
way: the example-weighted mean of its clients' losses and metrics, with their
total as ``num_examples``.

A relay samples within its own subtree (`sampler`); with `All` (the default)
at every level the tree equals the flat run. Client plug-ins (SCAFFOLD, ...)
and asynchronous schedules do not pass through relays: a task that asks for
them fails with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from fedloom.aggregators import WeightedMean
from fedloom.core import (
    Channel,
    ClientId,
    Config,
    EvaluateRes,
    Failure,
    FitRes,
    GetWeightsIns,
    Reply,
    Scalar,
    Task,
    Weights,
    WeightsLike,
    WeightsRes,
)
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.server.orchestrator import Orchestrator
from fedloom.strategies import Strategy
from fedloom.strategies.optimizers import SGD
from fedloom.strategies.samplers import All, Sampler

__all__ = ["Relay"]

logger = logging.getLogger(__name__)

_UPSTREAM_KEYS = ("seed", "server_round")
"""Config keys the relay sets afresh for each downstream client (not forwarded)."""


class Relay:
    """A server to its own clients and a client to its upstream server.

    Args:
        channel: how the relay reaches its downstream clients (or relays).
        seed: the run seed; the upstream server's, so that clients get the seeds
            they would get in the flat federation.
        sampler: who trains in the subtree each round (default: every client).
        min_fit: the fewest downstream results the relay needs to answer a task;
            fewer fails this relay's task (the upstream round goes on without it).
        fit_timeout_s: the downstream deadline of a round (None: none); keep it
            below the upstream server's.
        name: how the relay names itself in logs and errors.

    Example:
        >>> from fedloom.client import FunctionClient
        >>> from fedloom.transport.inprocess import InProcessChannel
        >>> def client_fn(context):
        ...     return FunctionClient(
        ...         weights={"x": [0.0]},
        ...         fit=lambda w, config: ({"x": w["x"] + context.partition_id}, 1, {}),
        ...     )
        >>> relay = Relay(InProcessChannel(client_fn, num_clients=3))
        >>> result = relay.fit(Weights({"x": [0.0]}), {"server_round": 1})
        >>> float(result.weights["x"][0]), result.num_examples  # (0 + 1 + 2) / 3, 1 + 1 + 1
        (1.0, 3)
    """

    def __init__(
        self,
        channel: Channel,
        *,
        seed: int = 0,
        sampler: Sampler | None = None,
        min_fit: int = 1,
        fit_timeout_s: float | None = None,
        name: str = "relay",
    ) -> None:
        self._channel = _CountingChannel(channel)
        self._seed = seed
        self._strategy = Strategy(
            sampler=sampler if sampler is not None else All(),
            aggregator=WeightedMean(),
            server_opt=SGD(lr=1.0),
            evaluate_sampler=None,
            min_fit=min_fit,
        )
        self._fit_timeout_s = fit_timeout_s
        self._name = name

    def get_weights(self) -> WeightsLike:
        """The first downstream client's weights (the upstream server's initial model)."""
        available = self._channel.clients()
        if not available:
            raise ConfigError(
                f"relay '{self._name}' has no client to ask for initial weights. Connect a "
                "client to the relay first, or give the upstream server initial weights."
            )
        for client_id, reply in self._channel.run({available[0]: GetWeightsIns()}, timeout_s=None):
            if isinstance(reply, WeightsRes):
                return reply.weights
            reason = reply.reason if isinstance(reply, Failure) else type(reply).__name__
            raise ConfigError(
                f"relay '{self._name}': client '{client_id}' could not provide initial "
                f"weights: {reason}."
            )
        raise ConfigError(f"relay '{self._name}': client '{available[0]}' sent no weights.")

    def fit(self, weights: Weights, config: Config) -> FitRes:
        """Run the upstream round on the subtree; its mean weights and total examples.

        Raises:
            ConfigError: the task asks for client plug-ins or has no ``server_round``.
            NotEnoughResults: fewer than `min_fit` downstream clients answered.
        """
        server_round = self._server_round(config)
        if config.get("plugins"):
            raise ConfigError(
                f"relay '{self._name}' forwards FedAvg aggregates; client plug-ins "
                f"({config['plugins']}) do not pass through relays. Use a strategy without "
                "plug-ins for a tree of relays.",
                field="plugins",
            )
        strategy = _with_config(self._strategy, config)
        orchestrator = self._orchestrator(strategy)
        self._channel.start()
        new_weights, record = orchestrator.run_round(server_round, weights)
        counts = self._channel.stop()
        total = sum(n for cid, n in counts.items() if cid not in record.failures)
        metrics = _unprefixed(record.metrics, "fit.")
        logger.info(
            "relay '%s' round %d: %d results, %d examples, %d failures",
            self._name,
            server_round,
            record.num_results,
            total,
            len(record.failures),
        )
        return FitRes(new_weights, total, metrics)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        """Evaluate `weights` on every downstream client; their weighted mean loss and metrics.

        Raises:
            NotEnoughResults: no downstream client evaluated.
        """
        server_round = self._server_round(config)
        strategy = replace(_with_config(self._strategy, config), evaluate_sampler=All())
        self._channel.start()
        metrics = _unprefixed(
            self._orchestrator(strategy).evaluate_round(server_round, weights), "evaluate."
        )
        total = sum(self._channel.stop().values())
        loss = metrics.pop("loss", None)
        if total == 0 or not isinstance(loss, int | float):
            raise NotEnoughResults(
                received=0,
                required=1,
                detail=f"relay '{self._name}': no downstream client evaluated round "
                f"{server_round}.",
            )
        return EvaluateRes(float(loss), total, metrics)

    def _orchestrator(self, strategy: Strategy) -> Orchestrator:
        return Orchestrator(
            self._channel,
            strategy,
            rounds=1,
            seed=self._seed,
            fit_timeout_s=self._fit_timeout_s,
        )

    def _server_round(self, config: Config) -> int:
        server_round = config.get("server_round")
        if isinstance(server_round, bool) or not isinstance(server_round, int):
            raise ConfigError(
                f"relay '{self._name}' got a task without an integer 'server_round' in its "
                f"config (got {server_round!r}); its upstream must be a fedloom server or relay.",
                field="server_round",
                value=server_round,
            )
        return server_round


def _with_config(strategy: Strategy, config: Config) -> Strategy:
    """`strategy` sending the upstream client config on (seeds and rounds are set afresh)."""
    forwarded = {k: v for k, v in config.items() if k not in _UPSTREAM_KEYS}
    return replace(strategy, config=forwarded)


def _unprefixed(metrics: Mapping[str, Scalar], prefix: str) -> dict[str, Scalar]:
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


class _CountingChannel:
    """`channel`, noting how many examples each client's fit or evaluate reply reports."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._counts: dict[ClientId, int] = {}

    def clients(self) -> Sequence[ClientId]:
        return self._channel.clients()

    def start(self) -> None:
        self._counts = {}

    def stop(self) -> dict[ClientId, int]:
        counts, self._counts = self._counts, {}
        return counts

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        for client_id, reply in self._channel.run(tasks, timeout_s=timeout_s):
            if isinstance(reply, FitRes | EvaluateRes):
                self._counts[client_id] = reply.num_examples
            yield client_id, reply
