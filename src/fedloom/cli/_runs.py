"""What the commands that run a federation share: where the run folder is, and the summary."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from fedloom.config import SimulationConfig
from fedloom.observe import format_metrics
from fedloom.server import KeepBest, RunResult
from fedloom.transport.codec import save_weights

__all__ = ["BEST_FILE", "run_folder", "summarize"]

BEST_FILE = "best.safetensors"


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
