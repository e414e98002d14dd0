"""examples/pytorch-cnn at a reduced size (PYTORCH_CNN_TRAIN_SIZE): simulated and as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import fedloom
from fedloom.data import Dirichlet

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytorch-cnn"

pytestmark = pytest.mark.e2e


def test_pytorch_cnn_simulation_learns_fashion_mnist(
    example: Callable[[str, str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTORCH_CNN_TRAIN_SIZE", "3000")
    task = example("pytorch-cnn", "task")

    result = fedloom.simulate(
        task.client_fn,
        num_clients=10,
        rounds=3,
        partitioner=Dirichlet(alpha=0.5),
        evaluate_fn=task.evaluate,
        seed=0,
    )

    accuracy = dict(result.history.series("central.accuracy"))
    assert len(task.load_data()[3]) == 500  # 3000 // 6 test images
    assert accuracy[0] < 0.2  # an untrained 10-class model: chance is 0.1
    assert accuracy[3] > 0.3  # measured 0.39: few steps on 2,700 images


def _fedloom(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fedloom.cli.main", *map(str, args)]


def _address(server: subprocess.Popen[str], timeout_s: float) -> str:
    """The port from the server's ``listening on HOST:PORT`` line."""
    assert server.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if line.startswith("listening on "):
            return line.split()[-1]
        if not line and server.poll() is not None:
            break
    raise AssertionError(f"the server did not listen within {timeout_s} s")


def test_pytorch_cnn_runs_as_server_and_client_processes(tmp_path: Path) -> None:
    """The README's `fedloom server` and `fedloom client` commands, with --insecure on loopback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTORCH_CNN_TRAIN_SIZE": "1200"}
    config = EXAMPLE / "fedloom.toml"
    server = subprocess.Popen(
        _fedloom("server", config, "--address", "127.0.0.1:0", "--min-clients", "2",
                 "--rounds", "2", "--run-dir", tmp_path, "--insecure"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    clients: list[subprocess.Popen[bytes]] = []
    try:
        address = _address(server, timeout_s=120)
        for index in range(2):
            clients.append(
                subprocess.Popen(
                    _fedloom(
                        "client",
                        config,
                        "--server",
                        address,
                        "--name",
                        f"site-{index}",
                        "--partition-id",
                        str(index),
                        "--num-partitions",
                        "2",
                        "--insecure",
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        output, _ = server.communicate(timeout=240)
        statuses = [client.wait(timeout=60) for client in clients]
    finally:
        for process in (*clients, server):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    assert server.returncode == 0, output
    assert statuses == [0, 0]
    history = json.loads((tmp_path / "pytorch-cnn" / "history.json").read_text())
    accuracy = {r["server_round"]: r["metrics"]["central.accuracy"] for r in history["rounds"]}
    assert sorted(accuracy) == [0, 1, 2]
    assert accuracy[2] > 0.2  # measured 0.275 on 200 test images, from chance (about 0.1)
