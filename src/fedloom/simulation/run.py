"""`simulate`: a whole federation in this process, through the same orchestrator as deployment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedloom.core import Partitioner, WeightsLike
from fedloom.errors import ConfigError
from fedloom.server import Callback, EvaluateFn, Orchestrator, RunResult
from fedloom.store.recorder import Recording, run_recorded
from fedloom.strategies import Strategy, fedavg
from fedloom.transport.inprocess import ClientFn, InProcessChannel

__all__ = ["simulate"]


def simulate(
    client_fn: ClientFn,
    *,
    num_clients: int,
    rounds: int,
    strategy: Strategy | None = None,
    seed: int = 0,
    partitioner: Partitioner | None = None,
    initial_weights: WeightsLike | None = None,
    evaluate_fn: EvaluateFn | None = None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    recording: Recording | None = None,
) -> RunResult:
    """Run a federation of `num_clients` virtual clients for `rounds` rounds.

    Clients are built lazily, per task, by ``client_fn(context)``; the same
    seed gives the same result.

    Args:
        client_fn: builds a client from its `ClientContext` (id, partition, seed).
        num_clients: how many virtual clients exist.
        rounds: the most rounds to run.
        strategy: defaults to `fedavg()`.
        seed: the run seed.
        partitioner: how data is split; clients call ``context.partition(labels)``.
        initial_weights: the starting global weights (default: client "0"'s).
        evaluate_fn: central evaluation ``fn(weights, server_round) -> metrics``.
        callbacks: hooks into the round loop (stop rules, keep-best, progress).
        run_dir: write history.json, weights.safetensors and TensorBoard event files there
            as the run goes.
        recording: record every round in a store (weights, strategy and client
            plug-in state, results), or resume the recorded run: with the same seed
            a resumed run ends bit-identical to an uninterrupted one.

    Returns:
        The history, the final weights and why the run stopped.

    Example:
        >>> from fedloom.client import FunctionClient
        >>> def client_fn(context):
        ...     target = float(context.partition_id)
        ...     return FunctionClient(
        ...         weights={"x": [0.0]},
        ...         fit=lambda w, config: ({"x": w["x"] + 0.5 * (target - w["x"])}, 1, {}),
        ...     )
        >>> result = simulate(client_fn, num_clients=3, rounds=30)
        >>> round(float(result.weights["x"][0]), 3)
        1.0
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(
            f"num_clients must be an int >= 1, got {num_clients!r}.",
            field="num_clients",
            value=num_clients,
        )
    channel = InProcessChannel(
        client_fn, num_clients=num_clients, seed=seed, partitioner=partitioner
    )
    strategy = strategy if strategy is not None else fedavg()
    if strategy.plugins:
        _require_plugin_clients(client_fn, channel, strategy)
    all_callbacks = list(callbacks)
    if run_dir is not None:
        from fedloom.observe.tensorboard import TensorBoardLogger
        from fedloom.store import RunFolder

        all_callbacks.extend([RunFolder(run_dir), TensorBoardLogger(run_dir)])
    resume = None
    if recording is not None:
        recorder, resume = recording.begin(client_states=channel)
        all_callbacks.insert(0, recorder)
    orchestrator = Orchestrator(
        channel,
        strategy,
        rounds=rounds,
        seed=seed,
        evaluate_fn=evaluate_fn,
        callbacks=all_callbacks,
    )
    if recording is None:
        return orchestrator.run(initial_weights)
    return run_recorded(recorder, lambda: orchestrator.run(initial_weights, resume=resume))


def _require_plugin_clients(
    client_fn: ClientFn, channel: InProcessChannel, strategy: Strategy
) -> None:
    """Refuse, before any round, clients that cannot apply the strategy's plug-ins."""
    client = client_fn(channel.context(channel.clients()[0]))
    if not hasattr(client, "fit_plugins"):
        names = ", ".join(plugin.name for plugin in strategy.plugins)
        raise ConfigError(
            f"the strategy's client plug-ins ({names}) need clients that apply them, but "
            f"client_fn builds {type(client).__name__}, which does not. Use TorchClient or "
            "GradientClient, or a strategy without plug-ins.",
            field="strategy.plugins",
        )
