"""The run folder: ``history.json`` after every round, ``weights.safetensors`` at the end.

Every file is written whole or not at all (write to a temporary file in the
same folder, fsync, rename), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedloom.core import Weights
from fedloom.server import Callback, History, RoundRecord, RunResult
from fedloom.transport.codec import save_weights, write_atomic

__all__ = ["HISTORY_FILE", "WEIGHTS_FILE", "RunFolder"]

HISTORY_FILE = "history.json"
WEIGHTS_FILE = "weights.safetensors"


class RunFolder(Callback):
    """Writes a run's history and final weights into `path` (created if missing).

    Args:
        path: the run folder.
        config: the run's configuration, written to ``config.json`` at the start.
    """

    def __init__(self, path: str | Path, *, config: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._history = History()
        if config is not None:
            self._write_json("config.json", dict(config))

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        self._history.append(record)
        self._write_json(HISTORY_FILE, self._history.to_dict())
        return False

    def on_resume(self, history: History, weights_of: Callable[[int], Weights]) -> None:
        self._history = History(list(history))

    def on_run_end(self, result: RunResult) -> None:
        history = result.history.to_dict()
        history["stop_reason"] = result.stop_reason
        self._write_json(HISTORY_FILE, history)
        save_weights(self.path / WEIGHTS_FILE, result.weights)

    def _write_json(self, name: str, data: Mapping[str, Any]) -> None:
        text = json.dumps(data, indent=2, sort_keys=False)
        write_atomic(self.path / name, text.encode())
