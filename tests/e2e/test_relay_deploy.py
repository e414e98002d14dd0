"""A tree of relays over gRPC on loopback: ``fedloom server``, two ``fedloom relay`` and six
``fedloom client`` processes give the weights of the flat six-client simulation."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.transport.codec import load_weights

pytestmark = pytest.mark.e2e

TASK = Path(__file__).resolve().parent / "relay_scripts" / "relay_task.py"

CONFIG = """
[run]
rounds = 3
seed = 7
name = "tree"

[clients]
app = "relay_task:client_fn"
num_clients = 6

[strategy]
name = "fedavg"
[strategy.config]
local_epochs = 2

[server]
join_timeout_s = 120
fit_timeout_s = 120
heartbeat_s = 1
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start(
    processes: list[subprocess.Popen[str]], folder: Path, log: str, *args: str | Path
) -> tuple[subprocess.Popen[str], Path]:
    """``fedloom ARGS`` in `folder`, its stdout and stderr in ``LOG.out``; the process, the log."""
    out = folder / f"{log}.out"
    with open(out, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedloom.cli.main", *map(str, args)],
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=folder,
        )
    processes.append(process)
    return process, out


def listening(out: Path, process: subprocess.Popen[str], *, timeout_s: float = 60) -> str:
    """The HOST:PORT a server or relay printed once it listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("listening on "):
                return line.removeprefix("listening on ")
        assert process.poll() is None, f"exited early: {out.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no 'listening on' line in {out} within {timeout_s:g} s")


def flat_simulation() -> fedloom.RunResult:
    spec = importlib.util.spec_from_file_location("relay_task_flat", TASK)
    assert spec is not None
    assert spec.loader is not None
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    strategy = fedloom.fedavg(config={"local_epochs": 2})
    return fedloom.simulate(task.client_fn, num_clients=6, rounds=3, strategy=strategy, seed=7)


@pytest.mark.timeout(300)
def test_relay_tree_over_grpc_equals_flat_simulation(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """1 server, 2 relays x 3 clients, all real processes: the flat run's weights to 1e-6."""
    shutil.copy(TASK, tmp_path / "relay_task.py")
    config = tmp_path / "tree.toml"
    config.write_text(CONFIG)
    server, server_out = start(
        processes,
        tmp_path,
        "server",
        *("server", config, "--address", "127.0.0.1:0", "--min-clients", "2", "--insecure"),
        *("--run-dir", tmp_path / "runs", "--no-progress"),
    )
    upstream = listening(server_out, server)
    leaves: list[tuple[subprocess.Popen[str], Path]] = []
    relays: list[tuple[subprocess.Popen[str], Path]] = []
    for index, relay_name in enumerate(("relay-a", "relay-b")):
        relay = start(
            processes,
            tmp_path,
            relay_name,
            *("relay", config, "--upstream", upstream, "--name", relay_name, "--insecure"),
            *("--address", "127.0.0.1:0", "--min-clients", "3", "--heartbeat-s", "1"),
        )
        relays.append(relay)
        address = listening(relay[1], relay[0])
        for partition in range(3 * index, 3 * index + 3):
            leaves.append(
                start(
                    processes,
                    tmp_path,
                    f"client-{partition}",
                    *("client", config, "--server", address, "--name", str(partition)),
                    *("--partition-id", str(partition), "--num-partitions", "6", "--insecure"),
                )
            )

    expected = flat_simulation()
    status = server.wait(timeout=240)

    assert status == 0, server_out.read_text()
    for process, out in [*relays, *leaves]:
        assert process.wait(timeout=60) == 0, out.read_text()
    assert "relay 'relay-a' ran" in relays[0][1].read_text()
    run = tmp_path / "runs" / "tree"
    weights = load_weights(run / "weights.safetensors")
    np.testing.assert_allclose(weights["w"], expected.weights["w"], rtol=0, atol=1e-6)
    assert np.abs(expected.weights["w"]).max() > 0.1  # it trained: not 0 == 0
    history = json.loads((run / "history.json").read_text())["rounds"]
    assert [record["num_results"] for record in history] == [2, 2, 2]
    for record, flat in zip(history, expected.history, strict=True):
        assert record["failures"] == {}
        assert record["metrics"]["evaluate.loss"] == pytest.approx(flat.metrics["evaluate.loss"])
        assert record["metrics"]["fit.loss"] == pytest.approx(flat.metrics["fit.loss"])
