"""The one round loop: sample, fit, aggregate, evaluate, record — over any Channel.

Simulation and deployment both run this loop; only the `Channel` differs.
A client that fails (raises, times out, or returns weights that do not match
the global model) fails only its own task: it is logged and recorded, and the
round goes on while at least ``min_fit`` usable results arrive.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from fedloom._faults import fault_point
from fedloom.core import (
    Channel,
    ClientId,
    Config,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Metrics,
    Scalar,
    Vector,
    Weights,
    WeightsLike,
    WeightsRes,
    derive_seed,
    derive_seeds,
    generator,
    weighted_average,
)
from fedloom.errors import ConfigError, FedloomError, InvalidResult, NotEnoughResults, ShapeMismatch
from fedloom.server.buffered import BufferedSource
from fedloom.server.callbacks import Callback
from fedloom.server.history import ClientOutcome, History, RoundRecord
from fedloom.strategies import FitResult, Strategy, StrategyState
from fedloom.strategies.schedules import Buffered

__all__ = ["EvaluateFn", "Orchestrator", "ResumePoint", "RunResult"]

logger = logging.getLogger(__name__)

_Ins = TypeVar("_Ins", FitIns, EvaluateIns)  # a task: its config gets the client's seed

EvaluateFn = Callable[[Weights, int], Metrics]
"""A server-side evaluation: ``fn(weights, server_round) -> metrics`` (include "loss" if any)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What a run returns: its history, final weights, and why it stopped."""

    history: History
    weights: Weights
    stop_reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePoint:
    """Where a resumed run picks up: after `server_round`, with that round's state.

    Args:
        server_round: the last round recorded whole (0: only the initial state).
        state: the strategy state after it (weights, optimizer moments, plug-in state).
        history: the records of the rounds so far, as an uninterrupted run would hold them.
        weights_of: loads the global weights after any recorded round (for KeepBest).
    """

    server_round: int
    state: StrategyState
    history: History
    weights_of: Callable[[int], Weights]


class Orchestrator:
    """Runs synchronous rounds of `strategy` over `channel`.

    Args:
        channel: how clients are reached.
        strategy: sampling, aggregation and server optimizer.
        rounds: the most rounds to run (a callback may stop earlier).
        seed: the run seed; sampling and every client's ``config["seed"]`` derive from it.
        evaluate_fn: optional central evaluation of the global weights after each round.
        callbacks: hooks called in order at each step.
        fit_timeout_s: deadline of a fit task (None: no deadline; simulation's
            in-process channel applies it on its virtual clock).
    """

    def __init__(
        self,
        channel: Channel,
        strategy: Strategy,
        *,
        rounds: int,
        seed: int = 0,
        evaluate_fn: EvaluateFn | None = None,
        callbacks: Sequence[Callback] = (),
        fit_timeout_s: float | None = None,
    ) -> None:
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(
                f"rounds must be an int >= 1, got {rounds!r}.", field="rounds", value=rounds
            )
        self._channel = channel
        self._strategy = strategy
        self._rounds = rounds
        self._seed = seed
        self._evaluate_fn = evaluate_fn
        self._callbacks = tuple(callbacks)
        self._fit_timeout_s = fit_timeout_s
        self._dispatched = time.perf_counter()  # when the current round's tasks went out
        self._buffer = (
            BufferedSource(
                channel,
                strategy,
                seed=seed,
                timeout_s=fit_timeout_s,
                check_fit=self._check_fit,
                seeded=self._seeded,
            )
            if isinstance(strategy.schedule, Buffered)
            else None
        )

    def run(
        self, initial_weights: WeightsLike | None = None, *, resume: ResumePoint | None = None
    ) -> RunResult:
        """Run up to `rounds` rounds from `initial_weights` (or one client's weights).

        Args:
            initial_weights: the weights before round 1 (default: the first client's).
            resume: continue a recorded run after its last recorded round instead
                (`initial_weights` is then ignored); callbacks get `Callback.on_resume`.

        Raises:
            NotEnoughResults: a round got fewer than ``min_fit`` usable results.
        """
        stop = ""
        stop_reason = f"completed {self._rounds} rounds"
        if resume is None:
            weights = self._initial_weights(initial_weights)
            del initial_weights  # the state holds them; keep no second reference for the run
            state = self._strategy.init(weights)
            history = History()
            metrics = {} if self._evaluate_fn is None else self._central(weights, 0)
            record = RoundRecord(server_round=0, metrics=metrics)
            for callback in self._callbacks:
                callback.on_checkpoint(record, state)
            if self._evaluate_fn is not None:
                stop = self._record(history, record, weights)
                stop_reason = stop or stop_reason
            del weights
            first = 1
        else:
            state, history, first = (
                resume.state,
                History(list(resume.history)),
                resume.server_round + 1,
            )
            for callback in self._callbacks:
                callback.on_resume(history, resume.weights_of)
        for server_round in range(first, self._rounds + 1):
            if stop:
                break
            state, record = self._round(server_round, state)
            for callback in self._callbacks:
                callback.on_checkpoint(record, state)
            stop = self._record(history, record, state.weights)
            stop_reason = stop or stop_reason
        result = RunResult(history=history, weights=state.weights, stop_reason=stop_reason)
        for callback in self._callbacks:
            callback.on_run_end(result)
        return result

    def run_round(self, server_round: int, weights: WeightsLike) -> tuple[Weights, RoundRecord]:
        """Run round `server_round` alone, from `weights`: a relay does this for each task.

        The round is the same as in `run` (sampling, client seeds and config all
        derive from the run seed and `server_round`), with a fresh strategy state.

        Returns:
            The new global weights and the round's record.

        Raises:
            NotEnoughResults: fewer than ``min_fit`` usable results arrived.
        """
        state = self._strategy.init(_as_weights(weights))
        state, record = self._round(server_round, state)
        return state.weights, record

    def evaluate_round(self, server_round: int, weights: WeightsLike) -> dict[str, Scalar]:
        """Federated evaluation of `weights` alone, as after round `server_round`.

        Returns:
            The example-weighted metrics, keyed ``"evaluate.<name>"`` (empty if no
            client was sampled or none answered).
        """
        state = self._strategy.init(_as_weights(weights))
        return self._evaluate(server_round, state, self._channel.clients())

    def _record(self, history: History, record: RoundRecord, weights: Weights) -> str:
        """Append `record`, tell the callbacks, and return why the run stops ("" to go on).

        Round 0 (the central evaluation of the initial weights) is recorded too,
        so a stop rule or KeepBest may act on it.
        """
        history.append(record)
        stops = [cb for cb in self._callbacks if cb.on_round_end(record, weights)]
        if not stops:
            return ""
        return stops[0].stop_reason or f"{type(stops[0]).__name__} stopped the run"

    def _initial_weights(self, initial: WeightsLike | None) -> Weights:
        if initial is not None:
            return _as_weights(initial)
        available = self._channel.clients()
        if not available:
            raise ConfigError(
                "no initial weights were given and no client is available to provide them. "
                "Pass initial_weights=... or connect a client first.",
                field="initial_weights",
            )
        first = available[0]
        for client_id, reply in self._channel.run({first: GetWeightsIns()}, timeout_s=None):
            if isinstance(reply, WeightsRes):
                return _as_weights(reply.weights)
            reason = reply.reason if isinstance(reply, Failure) else type(reply).__name__
            raise ConfigError(
                f"client '{client_id}' could not provide initial weights: {reason}. "
                "Fix its get_weights(), or pass initial_weights=...",
                field="initial_weights",
            )
        raise ConfigError(f"client '{first}' sent no reply to get_weights().")

    def _round(self, server_round: int, state: StrategyState) -> tuple[StrategyState, RoundRecord]:
        started = time.perf_counter()
        for callback in self._callbacks:
            callback.on_round_start(server_round)
        available = self._channel.clients()
        failures: dict[ClientId, str] = {}
        results: Iterator[FitResult]
        secure_tasks: dict[ClientId, FitIns] | None = None
        if self._buffer is None:
            rng = generator(self._seed, "round", server_round)
            tasks = self._strategy.configure_fit(server_round, state, available, rng)
            tasks = self._seeded_tasks(tasks, (server_round,))
            self._dispatched = time.perf_counter()
            if self._strategy.secure_aggregation is not None:
                secure_tasks, results = tasks, iter(())  # the stages run in _secure_fit
            else:
                replies = self._channel.run(tasks, timeout_s=self._fit_timeout_s)
                results = self._checked_fits(server_round, state.weights, replies, failures)
            awaited = f"sampled {len(tasks)} clients"
            planned = len(tasks)
        else:
            self._dispatched = time.perf_counter()
            results = self._buffer.results(server_round, state, failures)
            planned = self._strategy.schedule.buffer_size  # type: ignore[union-attr]
            awaited = f"awaited {planned} results"
        num_results = 0

        def counted(source: Iterator[FitResult]) -> Iterator[FitResult]:
            nonlocal num_results
            for result in source:
                num_results += 1
                self._tell(
                    ClientOutcome(
                        server_round=server_round,
                        client_id=result.client_id,
                        kind="fit",
                        metrics=dict(result.metrics),
                        num_examples=result.num_examples,
                        duration_s=time.perf_counter() - self._dispatched,
                        staleness=None if self._buffer is None else result.staleness,
                    )
                )
                yield result
                del result
            fault_point("aggregation", server_round)

        try:
            if secure_tasks is not None:
                state, fit_metrics, num_results = self._secure_fit(
                    server_round, state, secure_tasks, failures, num_available=len(available)
                )
            else:
                state, fit_metrics = self._strategy.aggregate_fit(
                    server_round,
                    state,
                    counted(results),
                    num_available=len(available),
                    num_sampled=planned,
                    rng=generator(self._seed, "privacy", server_round),
                )
        except NotEnoughResults as exc:
            summary = "; ".join(f"'{cid}': {why}" for cid, why in failures.items())
            raise NotEnoughResults(
                received=exc.received,
                required=exc.required,
                detail=f"Round {server_round} {awaited}."
                + (f" Failures: {summary}." if summary else ""),
            ) from exc
        metrics: dict[str, Scalar] = {f"fit.{k}": v for k, v in fit_metrics.items()}
        metrics.update(self._strategy.privacy_metrics(state))  # epsilon spent so far, ...
        if self._buffer is not None and self._buffer.staleness:
            metrics["staleness.mean"] = sum(self._buffer.staleness) / len(self._buffer.staleness)
            metrics["staleness.max"] = max(self._buffer.staleness)
        for callback in self._callbacks:
            callback.on_aggregate(server_round, state.weights, dict(metrics))
        if self._buffer is None:  # clients are busy training in async mode
            metrics.update(self._evaluate(server_round, state, available))
        if self._evaluate_fn is not None:
            metrics.update(self._central(state.weights, server_round))
        for callback in self._callbacks:
            callback.on_evaluate(server_round, dict(metrics))
        record = RoundRecord(
            server_round=server_round,
            metrics=metrics,
            num_results=num_results,
            failures=dict(failures),
            duration_s=time.perf_counter() - started,
        )
        return state, record

    def _secure_fit(
        self,
        server_round: int,
        state: StrategyState,
        tasks: dict[ClientId, FitIns],
        failures: dict[ClientId, str],
        *,
        num_available: int,
    ) -> tuple[StrategyState, Metrics, int]:
        """Run the round's fit tasks through SecAgg+; the new state from the unmasked sum."""
        from fedloom.secagg.server import run_secure_round  # loads cryptography when used

        assert self._strategy.secure_aggregation is not None
        secure = run_secure_round(
            self._channel,
            tasks,
            self._strategy.secure_aggregation,
            server_round=server_round,
            rng=generator(self._seed, "secagg", server_round),
            fit_timeout_s=self._fit_timeout_s,
            weighted=self._strategy.weighted_sum,
            clip_norm=None if state.privacy is None else state.privacy.clip_norm,
            clear_metrics=self._strategy.clear_metrics,  # local DP's epsilons
        )
        failures.update(secure.failures)
        new_state, metrics = self._strategy.aggregate_sum(
            server_round,
            state,
            total=secure.total,
            total_weight=secure.total_weight,
            count=secure.count,
            count_within_clip=secure.count_within_clip,
            num_available=num_available,
            num_sampled=len(tasks),
            rng=generator(self._seed, "privacy", server_round),
            client_metrics=list(secure.metrics.values()),
        )
        return new_state, metrics, secure.count

    def _checked_fits(
        self,
        server_round: int,
        global_weights: Weights,
        replies: Iterator[tuple[ClientId, object]],
        failures: dict[ClientId, str],
    ) -> Iterator[FitResult]:
        """Yield each usable fit result as it arrives; record the rest as failures."""
        for index, (client_id, reply) in enumerate(replies):
            if index == 0:
                fault_point("collection", server_round)
            result = self._check_fit(server_round, global_weights, client_id, reply, failures)
            del reply
            if result is not None:
                yield result
            del result  # hold no result while the channel brings the next one

    def _check_fit(
        self,
        server_round: int,
        global_weights: Weights,
        client_id: ClientId,
        reply: object,
        failures: dict[ClientId, str],
    ) -> FitResult | None:
        """The reply as a checked FitResult, or None after recording why it is unusable."""
        try:
            if isinstance(reply, Failure):
                raise _TaskFailed(reply.reason)
            if not isinstance(reply, FitRes):
                raise _TaskFailed(f"expected a FitRes reply, got {type(reply).__name__}")
            weights = global_weights.conform(reply.weights, client_id=client_id)
            tensors = _checked_tensors(
                reply.tensors, global_weights, self._strategy.required_tensors, client_id
            )
            for name in self._strategy.required_metrics:
                value = reply.metrics.get(name)
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not (math.isfinite(value))
                ):
                    raise InvalidResult(
                        f"client '{client_id}' reported metric '{name}' = {value!r}; the "
                        "strategy's plug-ins need a finite number there. Does the client apply "
                        "the strategy's plug-ins?",
                        client_id=client_id,
                    )
        except (_TaskFailed, FedloomError) as exc:
            failures[client_id] = str(exc)
            logger.warning("round %d: client '%s' failed: %s", server_round, client_id, exc)
            self._tell(
                ClientOutcome(
                    server_round=server_round,
                    client_id=client_id,
                    kind="fit",
                    metrics={},
                    duration_s=time.perf_counter() - self._dispatched,
                    failure=str(exc),
                )
            )
            return None
        return FitResult(client_id, weights, reply.num_examples, reply.metrics, tensors)

    def _evaluate(
        self,
        server_round: int,
        state: StrategyState,
        available: Sequence[ClientId],
    ) -> dict[str, Scalar]:
        rng = generator(self._seed, "evaluate", server_round)
        tasks = self._strategy.configure_evaluate(server_round, state, available, rng)
        if not tasks:
            return {}
        tasks = self._seeded_tasks(tasks, (server_round,))
        results: list[tuple[int, Metrics]] = []
        sent = time.perf_counter()
        for client_id, reply in self._channel.run(tasks, timeout_s=self._fit_timeout_s):
            if isinstance(reply, EvaluateRes):
                results.append((reply.num_examples, {**reply.metrics, "loss": reply.loss}))
                self._tell(
                    ClientOutcome(
                        server_round=server_round,
                        client_id=client_id,
                        kind="evaluate",
                        metrics={**reply.metrics, "loss": reply.loss},
                        num_examples=reply.num_examples,
                        duration_s=time.perf_counter() - sent,
                    )
                )
                continue
            reason = reply.reason if isinstance(reply, Failure) else type(reply).__name__
            self._tell(
                ClientOutcome(
                    server_round=server_round,
                    client_id=client_id,
                    kind="evaluate",
                    metrics={},
                    duration_s=time.perf_counter() - sent,
                    failure=reason,
                )
            )
            logger.warning(
                "round %d: client '%s' failed to evaluate: %s", server_round, client_id, reason
            )
        return {f"evaluate.{k}": v for k, v in weighted_average(results).items()}

    def _tell(self, outcome: ClientOutcome) -> None:
        for callback in self._callbacks:
            callback.on_client_result(outcome)

    def _seeded(self, config: Config, client_id: ClientId, keys: tuple[int, ...]) -> Config:
        """`config` plus the client's seed for this task, derived from the run seed."""
        return {**config, "seed": derive_seed(self._seed, "client", client_id, *keys)}

    def _seeded_tasks(
        self, tasks: Mapping[ClientId, _Ins], keys: tuple[int, ...]
    ) -> dict[ClientId, _Ins]:
        """`tasks` with `_seeded`'s seeds, derived for all the clients in one call."""
        seeds = derive_seeds(self._seed, [("client", client_id, *keys) for client_id in tasks])
        return {
            client_id: replace(ins, config={**ins.config, "seed": seed})
            for (client_id, ins), seed in zip(tasks.items(), seeds, strict=True)
        }

    def _central(self, weights: Weights, server_round: int) -> dict[str, Scalar]:
        assert self._evaluate_fn is not None
        metrics = self._evaluate_fn(weights, server_round)
        return {f"central.{k}": v for k, v in metrics.items()}


def _checked_tensors(
    tensors: Mapping[str, object], model: Weights, required: Sequence[str], client_id: ClientId
) -> dict[str, Vector]:
    """Plug-in tensors as finite flat vectors of the model's size and dtype."""
    missing = [name for name in required if name not in tensors]
    if missing:
        raise InvalidResult(
            f"client '{client_id}' sent no {missing} tensor, which the strategy's plug-ins need. "
            "Does the client apply the strategy's plug-ins (TorchClient, GradientClient)?",
            client_id=client_id,
            tensor=missing[0],
        )
    checked: dict[str, Vector] = {}
    for name, value in tensors.items():
        vector = np.asarray(value)
        if vector.shape != (model.spec.size,) or not np.issubdtype(vector.dtype, np.floating):
            raise ShapeMismatch(
                f"client '{client_id}' sent plug-in tensor '{name}' with shape {vector.shape} "
                f"{vector.dtype}; expected ({model.spec.size},) floats, one per model weight.",
                client_id=client_id,
                tensor=name,
            )
        if not np.isfinite(vector).all():
            raise InvalidResult(
                f"client '{client_id}' sent plug-in tensor '{name}' with NaN or Inf values.",
                client_id=client_id,
                tensor=name,
            )
        checked[name] = vector.astype(model.spec.dtype, copy=False)
    return checked


class _TaskFailed(Exception):
    pass


def _as_weights(value: WeightsLike) -> Weights:
    """Weights from what get_weights() returned; a list of arrays gets names "0", "1", ..."""
    if isinstance(value, Weights):
        return value
    if isinstance(value, Mapping):
        return Weights(value)
    return Weights({str(index): array for index, array in enumerate(value)})
