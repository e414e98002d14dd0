"""Running one task on one client: the same code in every process that hosts clients.

`run_task` calls the client's method for the task, keeps the client's plug-in
state (passed in, returned), and turns anything the user's code raises into a
`Failure` for that task alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fedloom.core.messages import (
    ClientId,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Reply,
    Task,
    WeightsRes,
)
from fedloom.core.protocols import Client
from fedloom.core.weights import Vector

__all__ = ["ClientState", "run_task"]

logger = logging.getLogger(__name__)

ClientState = Mapping[str, Vector]
"""What a client keeps between its tasks for its plug-ins (SCAFFOLD's c_i, ...)."""


def run_task(
    client: Client, task: Task, state: ClientState, *, client_id: ClientId
) -> tuple[Reply, ClientState]:
    """Run `task` on `client`; the reply, and the client's state after it.

    Never raises for errors in the client's code: they become a `Failure`.
    """
    try:
        if isinstance(task, FitIns) and task.config.get("plugins"):
            return _fit_plugins(client, task, state)
        return _dispatch(client, task), state
    except Exception as exc:  # a user's client must not take the run down
        logger.debug("client '%s' raised", client_id, exc_info=True)
        reason = f"client '{client_id}' raised {type(exc).__name__}: {exc}"
        return Failure(client_id=client_id, reason=reason, error=exc), state


def _fit_plugins(client: Client, task: FitIns, state: ClientState) -> tuple[Reply, ClientState]:
    fit_plugins = getattr(client, "fit_plugins", None)
    if fit_plugins is None:
        raise TypeError(
            f"the strategy uses client plug-ins ({task.config['plugins']}) but "
            f"{type(client).__name__} does not apply plug-ins. Use TorchClient or "
            "GradientClient, or a strategy without plug-ins."
        )
    result, new_state = fit_plugins(task.weights, task.config, task.tensors, state)
    if not isinstance(result, FitRes):
        raise TypeError(f"fit_plugins() must return FitRes, got {type(result).__name__}")
    return result, dict(new_state)


def _dispatch(client: Client, task: Task) -> Reply:
    if isinstance(task, FitIns):
        result = client.fit(task.weights, task.config)
        if not isinstance(result, FitRes):
            raise TypeError(f"fit() must return FitRes, got {type(result).__name__}")
        return result
    if isinstance(task, EvaluateIns):
        evaluate = getattr(client, "evaluate", None)
        if evaluate is None:
            raise TypeError(f"{type(client).__name__} has no evaluate() method")
        evaluation = evaluate(task.weights, task.config)
        if not isinstance(evaluation, EvaluateRes):
            raise TypeError(f"evaluate() must return EvaluateRes, got {type(evaluation).__name__}")
        return evaluation
    if isinstance(task, GetWeightsIns):
        return WeightsRes(weights=client.get_weights())
    raise TypeError(f"unknown task type {type(task).__name__}")
