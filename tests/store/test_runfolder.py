"""RunFolder: history.json after every round, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedloom
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Weights, WeightsLike
from fedloom.server import Callback, Orchestrator, RoundRecord, RunResult, StopAfter
from fedloom.store import HISTORY_FILE, WEIGHTS_FILE, RunFolder
from fedloom.strategies import fedavg
from fedloom.transport.inprocess import InProcessChannel


def _step(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
    return {"x": weights["x"] + 1.0}, 1, {}


def _client_fn(context: ClientContext) -> FunctionClient:
    return FunctionClient(weights={"x": [0.0, 0.0]}, fit=_step)


def _central(weights: Weights, server_round: int) -> Metrics:
    return {"x": float(weights["x"][0])}


def _read_history(folder: Path) -> dict[str, Any]:
    return json.loads((folder / HISTORY_FILE).read_text())


class _ReadsHistory(Callback):
    """At the end of every round, reads which rounds history.json holds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rounds_on_disk: list[list[int]] = []

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        rounds = _read_history(self.folder)["rounds"]
        self.rounds_on_disk.append([r["server_round"] for r in rounds])
        return False


def test_runfolder_rewrites_history_after_every_round(tmp_path: Path) -> None:
    reader = _ReadsHistory(tmp_path)
    channel = InProcessChannel(_client_fn, num_clients=2)
    # RunFolder comes first, so the reader sees what RunFolder wrote for the same round.
    orchestrator = Orchestrator(
        channel,
        fedavg(fraction_evaluate=0),
        rounds=5,
        callbacks=[RunFolder(tmp_path), reader, StopAfter(rounds=3)],
    )

    orchestrator.run()

    assert reader.rounds_on_disk == [[1], [1, 2], [1, 2, 3]]
    final = _read_history(tmp_path)
    assert [r["server_round"] for r in final["rounds"]] == [1, 2, 3]
    assert final["stop_reason"] == "reached 3 rounds"


def test_runfolder_history_mid_run_includes_round_0(tmp_path: Path) -> None:
    """With an evaluate_fn the run's history starts at round 0; so does the file mid-run."""
    reader = _ReadsHistory(tmp_path)
    channel = InProcessChannel(_client_fn, num_clients=2)
    orchestrator = Orchestrator(
        channel,
        fedavg(fraction_evaluate=0),
        rounds=2,
        evaluate_fn=_central,
        callbacks=[RunFolder(tmp_path), reader],
    )

    result = orchestrator.run()

    assert [r.server_round for r in result.history] == [0, 1, 2]
    assert reader.rounds_on_disk == [[0], [0, 1], [0, 1, 2]]


def test_runfolder_writes_config_json(tmp_path: Path) -> None:
    RunFolder(tmp_path / "new", config={"rounds": 3, "strategy": "fedavg"})

    written = json.loads((tmp_path / "new" / "config.json").read_text())

    assert written == {"rounds": 3, "strategy": "fedavg"}


def test_runfolder_failed_final_write_keeps_old_history_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def failing_replace(source: Any, target: Any) -> None:
        if os.fspath(target).endswith(HISTORY_FILE):
            raise OSError("disk full")
        real_replace(source, target)

    class BreakDiskAtRunEnd(Callback):
        """Runs before RunFolder's on_run_end, so the final history write fails."""

        def on_run_end(self, result: RunResult) -> None:
            monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(OSError, match="disk full"):
        fedloom.simulate(
            _client_fn,
            num_clients=2,
            rounds=2,
            strategy=fedavg(fraction_evaluate=0),
            callbacks=[BreakDiskAtRunEnd()],
            run_dir=tmp_path,
        )

    # The round-2 write (before the failure) is intact and parses; the final one never landed.
    history = _read_history(tmp_path)
    assert [r["server_round"] for r in history["rounds"]] == [1, 2]
    assert "stop_reason" not in history
    # no temporary file is left (TensorBoard's event files are written by their own writer)
    assert [n for n in sorted(os.listdir(tmp_path)) if not n.startswith("events.")] == [
        HISTORY_FILE
    ]


def test_runfolder_writes_final_weights(tmp_path: Path) -> None:
    from fedloom.transport.codec import load_weights

    result = fedloom.simulate(
        _client_fn, num_clients=2, rounds=2, strategy=fedavg(fraction_evaluate=0), run_dir=tmp_path
    )

    saved = load_weights(tmp_path / WEIGHTS_FILE)
    assert saved.equals(result.weights)
    # Two rounds of +1 from zeros.
    assert np.array_equal(saved["x"], [2.0, 2.0])
