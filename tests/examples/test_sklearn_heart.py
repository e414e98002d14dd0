"""examples/sklearn-heart at a reduced size: in one process, and over gRPC with TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.e2e


def test_sklearn_heart_federation_learns_across_hospitals(
    example: Callable[[str, str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    compare = example("sklearn-heart", "compare")

    summary = compare.compare(rounds=12)

    out = capsys.readouterr().out
    # The untrained model predicts 0.5 for everyone: log loss ln 2 = 0.693.
    assert summary["federated_loss"] < 0.45
    assert summary["federated_accuracy"] > 0.78
    assert "Switzerland alone" in out
    assert "best round restored" in out


def test_sklearn_heart_runs_over_grpc_with_tls(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "sklearn-heart" / "deploy.py"), "--rounds", "3",
         "--run-dir", str(tmp_path / "runs"), "--certs", str(tmp_path / "certs")],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped: completed 3 rounds" in done.stdout
    assert (tmp_path / "certs" / "server.pem").exists()
    history = json.loads((tmp_path / "runs" / "sklearn-heart" / "history.json").read_text())
    losses = {r["server_round"]: r["metrics"]["central.loss"] for r in history["rounds"]}
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # ln 2, the all-zero model
    assert losses[3] < 0.5
    assert (tmp_path / "runs" / "sklearn-heart" / "best.safetensors").exists()
