"""The SecAgg+ sessions of the clients one runtime hosts: stage tasks in, replies out.

`InProcessChannel` and the gRPC `ClientRuntime` hand every stage task (a fit task
naming its stage) to `SecAggSessions.handle`, which keeps one `SecAggClient` per
client between stages, trains through the runtime in the masked-input stage, and
turns an abort into that task's `Failure`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from fedloom.core import ClientId, Failure, FitIns, FitRes, Reply, Scalar, Weights, generator
from fedloom.errors import FedloomError, SecAggAborted, StageOrderError
from fedloom.privacy.local import ACCOUNTING_METRICS
from fedloom.secagg.client import SecAggClient
from fedloom.secagg.stages import (
    MASKED,
    PAYLOAD,
    STAGE,
    STAGES,
    clear_metric_names,
    dump_payload,
)

__all__ = ["FitFn", "SecAggSessions"]

logger = logging.getLogger(__name__)

FitFn = Callable[[FitIns], Reply]
"""Runs the plain fit task the masked-input stage wraps (the runtime keeps plug-in state)."""


class SecAggSessions:
    """The SecAgg+ sessions of the clients one runtime hosts; turns stage tasks into replies.

    Args:
        clock: time source for stage deadlines (injectable for tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[ClientId, SecAggClient] = {}

    def session(self, client_id: ClientId) -> SecAggClient | None:
        """The live session of `client_id`, if any."""
        return self._sessions.get(client_id)

    def handle(self, client_id: ClientId, task: FitIns, fit: FitFn) -> Reply:
        """Answer one stage task; a `Failure` (carrying the error) if the client aborts.

        `fit` runs the wrapped fit task in the masked-input stage.
        """
        stage = str(task.config.get(STAGE))
        try:
            return self._handle(client_id, stage, task, fit)
        except FedloomError as exc:
            self._sessions.pop(client_id, None)  # an aborted session is never resumed
            logger.warning("%s", exc)
            return Failure(client_id=client_id, reason=str(exc), error=exc)

    def _handle(self, client_id: ClientId, stage: str, task: FitIns, fit: FitFn) -> Reply:
        if stage == "setup":
            fresh = SecAggClient(client_id, clock=self._clock)
            self._sessions[client_id] = fresh
            return _reply({PAYLOAD: dump_payload(fresh.setup(task.config))})
        session = self._sessions.get(client_id)
        if session is None:
            raise StageOrderError(
                f"client '{client_id}' got stage '{stage}' with no session set up (it was "
                "never set up, aborted, or is over).",
                stage=stage,
                client_id=client_id,
            )
        if stage == "share_keys":
            return _reply({PAYLOAD: dump_payload(session.share_keys(task.config))})
        if stage == "unmask":
            revealed = session.unmask(task.config)
            del self._sessions[client_id]
            return _reply({PAYLOAD: dump_payload(revealed)})
        if stage != "masked_input":
            raise StageOrderError(
                f"client '{client_id}' got unknown stage {stage!r:.40}; expected one of "
                f"{', '.join(STAGES)}.",
                stage=stage,
                client_id=client_id,
            )
        session.check_masked_input(task.config)
        wanted = _clear_metrics_asked(client_id, task)
        plain = {k: v for k, v in task.config.items() if not k.startswith("secagg.")}
        result = fit(replace(task, config=plain))
        if not isinstance(result, FitRes):
            self._sessions.pop(client_id, None)
            return result
        trained = task.weights.conform(result.weights, client_id=client_id)
        update = trained.flat.astype(np.float64) - task.weights.flat.astype(np.float64)
        weight = result.num_examples if session.params.weighted else 1
        seed = task.config.get("seed", 0)
        rng = generator(int(seed) if isinstance(seed, int) else 0, "secagg-rounding")
        masked = session.masked_input(task.config, update, weight, rng)
        clear: dict[str, Scalar] = {k: result.metrics[k] for k in wanted if k in result.metrics}
        return FitRes(weights=Weights({MASKED: masked}), num_examples=0, metrics=clear)


def _clear_metrics_asked(client_id: ClientId, task: FitIns) -> tuple[str, ...]:
    """The metrics the server asks to see in the clear; refuses any but accounting ones."""
    wanted = clear_metric_names(task.config)
    refused = sorted(set(wanted) - ACCOUNTING_METRICS)
    if refused:
        raise SecAggAborted(
            f"client '{client_id}' aborted secure aggregation at stage 'masked_input': the "
            f"server asked for the metrics {refused} in the clear, but a client sends only "
            f"privacy-accounting metrics ({', '.join(sorted(ACCOUNTING_METRICS))}) outside "
            "the masked sum. Remove the plug-in that requires them from the strategy.",
            stage="masked_input",
            client_id=client_id,
        )
    return wanted


def _reply(metrics: Mapping[str, str]) -> FitRes:
    return FitRes(weights=Weights({}), num_examples=0, metrics=dict(metrics))
