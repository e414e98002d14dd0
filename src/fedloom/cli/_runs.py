"""What the commands that run a federation share: where the run folder is, and the summary."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedloom.config import SimulationConfig
from fedloom.errors import ConfigError
from fedloom.observe import format_metrics
from fedloom.server import KeepBest, RunResult
from fedloom.store import STORE_FILE, open_store
from fedloom.store.recorder import Recording
from fedloom.transport.codec import save_weights

__all__ = [
    "BEST_FILE",
    "add_store_options",
    "open_recording",
    "resumed_folder",
    "run_folder",
    "start_recording",
    "summarize",
]

BEST_FILE = "best.safetensors"


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--store URL`` and ``--resume RUN``, shared by ``simulate`` and ``server``."""
    group = parser.add_argument_group("store and resume")
    group.add_argument(
        "--store",
        metavar="URL",
        help="record the run here: postgresql://user:password@host:port/db, "
        "sqlite:///path/store.db or a file path (default: store.db in the run folder)",
    )
    group.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run RUN (its folder, or its name under the run dir) after its last "
        "recorded round, with the same weights and strategy state",
    )


def resumed_folder(config: SimulationConfig, run_dir: Path | None, run: str) -> Path:
    """The folder of the run to resume: `run` itself if it is a folder, else ``<dir>/<run>``.

    Raises:
        ConfigError: no such folder; the message lists the runs under the run dir.
    """
    if Path(run).is_dir():
        return Path(run)
    parent = run_dir if run_dir is not None else Path(config.run.dir)
    folder = parent / run
    if folder.is_dir():
        return folder
    known = sorted(p.name for p in parent.glob("*") if p.is_dir()) if parent.is_dir() else []
    raise ConfigError(
        f"--resume {run}: there is no run folder '{run}' nor '{folder}'; runs under "
        f"{parent}: {', '.join(known[-20:]) or 'none'}. Pass a run folder or one of those names.",
        field="--resume",
        value=run,
    )


def open_recording(
    folder: Path,
    *,
    store_url: str | None,
    config: Mapping[str, Any],
    seed: int,
    resume: bool,
) -> Recording:
    """The store (``--store`` or ``folder/store.db``) and run to record, opened now.

    The run's id is the run folder's name.

    Raises:
        StoreUnreachable: the database cannot be reached (nothing has started).
        ConfigError: resuming a run the store does not have, or starting one it has.
    """
    store = open_store(store_url if store_url is not None else folder / STORE_FILE)
    run_id = folder.name
    try:
        if resume:
            store.get_run(run_id)
        elif any(run.run_id == run_id for run in store.list_runs()):
            raise ConfigError(
                f"run '{run_id}' is recorded already in {store.url}. Continue it with "
                f"--resume {folder}, or give the new run another name ([run].name).",
                field="run.name",
                value=run_id,
            )
    except BaseException:
        store.close()
        raise
    return Recording(
        store=store, run_id=run_id, folder=folder, config=dict(config), seed=seed, resume=resume
    )


def start_recording(
    config: SimulationConfig, args: argparse.Namespace, record: Mapping[str, Any], seed: int
) -> tuple[Path, Recording]:
    """The run folder and the opened recording of ``simulate`` or ``server``.

    With ``--resume RUN`` the folder is the recorded run's, and a line says
    where it continues; otherwise a new run folder is named.

    Raises:
        StoreUnreachable: the database cannot be reached (nothing has started).
        ConfigError: resuming a run the store does not have, or starting one it has.
    """
    resume = args.resume is not None
    folder = (
        resumed_folder(config, args.run_dir, args.resume)
        if resume
        else run_folder(config, args.run_dir)
    )
    recording = open_recording(
        folder, store_url=args.store, config=record, seed=seed, resume=resume
    )
    if recording.resume:
        done = recording.store.get_run(recording.run_id).rounds_done
        print(f"resuming run '{recording.run_id}' after round {done}", flush=True)
    return folder, recording


def run_folder(config: SimulationConfig, run_dir: Path | None) -> Path:
    """``<dir>/<name>``; a generated name gets a ``-2``, ``-3``... suffix if it is taken."""
    parent = run_dir if run_dir is not None else Path(config.run.dir)
    if config.run.name is not None:
        return parent / config.run.name
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder, suffix = parent / f"{config.path.stem}-{stamp}", 1
    while folder.exists():
        suffix += 1
        folder = parent / f"{config.path.stem}-{stamp}-{suffix}"
    return folder


def summarize(result: RunResult, folder: Path, keep_best: KeepBest | None) -> None:
    """Print the last round's metrics, why the run stopped, the best round and the folder."""
    if len(result.history):
        last = result.history[-1]
        print(f"final (round {last.server_round}): {format_metrics(last.metrics, limit=8)}")
    print(f"stopped: {result.stop_reason}")
    if keep_best is not None and keep_best.weights is not None:
        save_weights(folder / BEST_FILE, keep_best.weights)
        print(
            f"best {keep_best.metric} = {keep_best.value:.4g} at round {keep_best.server_round}: "
            f"{folder / BEST_FILE}"
        )
    print(f"run folder: {folder}")
