"""``fedloom simulate CONFIG.toml``: run a whole federation in this process from a TOML config.

A ``[topology]`` of kind star or tree runs through relays (`simulate_tree`); a
gossip graph has no server and runs from Python (`simulate_gossip`).

The config is loaded and every object built before anything is written, so a
bad config exits with status 2 and creates no run folder. The run folder
(``[run].dir``/``[run].name``, or ``--run-dir``) gets ``config.json``,
``history.json`` after every round, ``weights.safetensors`` at the end, and
``best.safetensors`` when ``[stop].keep_best`` is set. Every round is recorded
whole in the store (``store.db`` in the run folder, or ``--store URL``) with its
checkpoint in ``checkpoints/``; ``--resume RUN`` continues a killed run after its
last recorded round, ending bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedloom.cli._options import positive_int
from fedloom.cli._runs import (
    add_store_options,
    start_recording,
    summarize,
)
from fedloom.config import Federation, SimulationConfig, load_config
from fedloom.errors import ConfigError, FedloomError, StoreError
from fedloom.observe import ProgressBar
from fedloom.observe.tensorboard import TensorBoardLogger
from fedloom.simulation import ENGINES, simulate
from fedloom.simulation.topology import simulate_tree
from fedloom.store import RunFolder

__all__ = ["add_parser", "run"]

_SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it


def add_parser(subparsers: _SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``simulate`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "simulate",
        help="run a federation in this process from a TOML config",
        description="Run a federation in this process from a TOML config "
        "(the format is documented in fedloom.config).",
    )
    parser.add_argument("config", metavar="CONFIG.toml", type=Path, help="the config file")
    parser.add_argument(
        "--rounds", type=positive_int, metavar="N", help="run N rounds (overrides [run].rounds)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="parent folder of the run folder (overrides [run].dir)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="print no progress bar or per-round lines"
    )
    add_store_options(parser)
    parser.add_argument(
        "--engine",
        metavar="NAME",
        help=f"who runs the clients: {', '.join(ENGINES)} (overrides [simulation].engine)",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="auto, cpu, cuda or cuda:N (overrides [simulation].device)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="processes of the process engine (overrides [simulation].workers)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, run the federation, write the run folder, print a summary.

    Returns:
        0 on success, 2 for an invalid config, 1 when the run failed
        (e.g. too few clients returned results), 130 when interrupted.
    """
    try:
        config = load_config(args.config)
        if args.rounds is not None:
            config = replace(config, run=replace(config.run, rounds=args.rounds))
        config = _with_flags(config, args)
        federation = config.build()
        if federation.topology is not None and federation.topology.kind == "gossip":
            raise ConfigError(
                f"[topology].kind in {config.path}: fedloom simulate runs star and tree "
                "topologies; a gossip graph has no server whose rounds it could record. Run "
                "it with fedloom.simulation.topology.simulate_gossip(client_fn, topology=...), "
                "or deployed with `fedloom peer CONFIG.toml --name NODE` per node.",
                field="[topology].kind",
                value="gossip",
            )
        if federation.topology is not None and federation.simulation.engine != "sequential":
            raise ConfigError(
                f"[simulation].engine in {config.path}: a [topology] tree runs its relays and "
                f"clients one after another in this process; engine "
                f"{federation.simulation.engine!r} runs only flat federations. Drop "
                "[topology] or the engine.",
                field="[simulation].engine",
                value=federation.simulation.engine,
            )
    except ConfigError as exc:
        return _fail(exc, status=2)
    record = _record(config, federation)
    try:
        folder, recording = start_recording(config, args, record, federation.seed)
    except (ConfigError, StoreError) as exc:
        return _fail(exc, status=2)
    callbacks = [
        *federation.callbacks,
        RunFolder(folder, config=record),
        TensorBoardLogger(folder),
    ]
    progress = None if args.no_progress else ProgressBar(rounds=federation.rounds)
    try:
        if federation.topology is None:
            result = simulate(
                federation.client_fn,
                num_clients=federation.num_clients,
                rounds=federation.rounds,
                strategy=federation.strategy,
                seed=federation.seed,
                partitioner=federation.partitioner,
                initial_weights=federation.initial_weights,
                evaluate_fn=federation.evaluate_fn,
                callbacks=[*callbacks, *([progress] if progress is not None else [])],
                recording=recording,
                engine=federation.simulation.engine,
                device=federation.simulation.device,
                workers=federation.simulation.workers,
                ray_address=federation.simulation.ray_address,
                fleet=federation.simulation.fleet,
                fit_timeout_s=federation.simulation.fit_timeout_s,
            )
        else:
            result = simulate_tree(
                federation.client_fn,
                topology=federation.topology,
                rounds=federation.rounds,
                strategy=federation.strategy,
                seed=federation.seed,
                partitioner=federation.partitioner,
                initial_weights=federation.initial_weights,
                evaluate_fn=federation.evaluate_fn,
                callbacks=[*callbacks, *([progress] if progress is not None else [])],
                recording=recording,
            )
    except ConfigError as exc:
        return _fail(exc, status=2, folder=folder)
    except FedloomError as exc:
        return _fail(exc, status=1, folder=folder)
    except KeyboardInterrupt:
        print(f"interrupted; the rounds done so far are in {folder}", file=sys.stderr)
        return 130
    finally:
        recording.store.close()
        if progress is not None:
            progress.close()
    summarize(result, folder, federation.keep_best)
    return 0


def _with_flags(config: SimulationConfig, args: argparse.Namespace) -> SimulationConfig:
    """`config` with ``--engine``, ``--device`` and ``--workers`` in place of its own values."""
    flags = {
        name: value
        for name, value in (
            ("engine", args.engine),
            ("device", args.device),
            ("workers", args.workers),
        )
        if value is not None
    }
    if not flags:
        return config
    try:
        options = replace(config.simulation, **flags)
    except ConfigError as exc:
        raise ConfigError(f"--{exc.field}: {exc}", field=exc.field, value=exc.value) from exc
    return replace(config, simulation=options)


def _fail(error: Exception, *, status: int, folder: Path | None = None) -> int:
    print(f"error: {error}", file=sys.stderr)
    if folder is not None:
        print(f"the rounds done so far are in {folder}", file=sys.stderr)
    return status


def _record(config: SimulationConfig, federation: Federation) -> dict[str, Any]:
    """What ``config.json`` holds: the checked config and what it resolved to."""
    resolved = {
        "strategy": federation.strategy.get_config(),
        "partitioner": None if federation.partitioner is None else repr(federation.partitioner),
        "callbacks": [repr(callback) for callback in federation.callbacks],
    }
    record = {"file": str(config.path.resolve()), "config": config.to_dict(), "resolved": resolved}
    # Values are plain TOML scalars and dataclass fields; str() covers anything else.
    loaded: dict[str, Any] = json.loads(json.dumps(record, default=str))
    return loaded
