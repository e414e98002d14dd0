"""`simulate`: a whole federation on this machine, through the same orchestrator as deployment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedloom.core import Partitioner, WeightsLike
from fedloom.errors import ConfigError
from fedloom.server import Callback, EvaluateFn, Orchestrator, RunResult
from fedloom.simulation.engines import make_executor, resolve_device
from fedloom.simulation.fleet import Fleet
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
    engine: str = "sequential",
    device: str = "auto",
    workers: int | None = None,
    ray_address: str | None = None,
    fleet: Fleet | None = None,
    fit_timeout_s: float | None = None,
    recording: Recording | None = None,
) -> RunResult:
    """Run a federation of `num_clients` virtual clients for `rounds` rounds.

    Clients are built lazily, per task, by ``client_fn(context)``: memory grows
    with the clients of a round, not with `num_clients`. A client's plug-in
    state (SCAFFOLD's control variate, ...) is kept by the engine between its
    tasks. The same seed gives the same result on every engine (to float
    rounding).

    Args:
        client_fn: builds a client from its `ClientContext` (id, partition, seed, device).
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
        engine: who runs the tasks: "sequential" (one after another here),
            "process" (a pool of `workers` processes; `client_fn` must be a
            module-level function), "ray" (a Ray cluster) or "vectorized" (a
            round's fit tasks batched in one PyTorch computation).
        device: where clients compute: "auto" (a GPU when torch sees one, else
            the CPU), "cpu", "cuda" or "cuda:N"; clients read it as ``context.device``.
        workers: processes of the "process" engine (default: one per core), or
            CPUs of the local Ray instance the "ray" engine starts.
        ray_address: the Ray cluster to join (None: start a local instance).
        fleet: per-client speed and availability on the virtual clock (default:
            every client online and equally fast).
        fit_timeout_s: each round's deadline in virtual seconds: a task slower
            than it fails as a missed deadline (None: no deadline).
        recording: record every round in a store (weights, strategy and client
            plug-in state, results), or resume the recorded run: with the same seed
            a resumed run ends bit-identical to an uninterrupted one.

    Returns:
        The history, the final weights and why the run stopped.

    Raises:
        ConfigError: an invalid option (unknown engine or device, a client_fn
            the engine cannot run), before any round.

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
    if fleet is not None and not isinstance(fleet, Fleet):
        raise ConfigError(
            f"fleet must be a fedloom.simulation.Fleet, got {type(fleet).__name__}.",
            field="fleet",
        )
    resolved = resolve_device(device)
    executor = make_executor(
        engine, client_fn, device=resolved, workers=workers, ray_address=ray_address
    )
    channel = InProcessChannel(
        client_fn,
        num_clients=num_clients,
        seed=seed,
        partitioner=partitioner,
        executor=executor,
        fleet=fleet,
        device=resolved,
    )
    try:
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
            fit_timeout_s=fit_timeout_s,
        )
        if recording is None:
            return orchestrator.run(initial_weights)
        return run_recorded(recorder, lambda: orchestrator.run(initial_weights, resume=resume))
    finally:
        channel.close()


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
