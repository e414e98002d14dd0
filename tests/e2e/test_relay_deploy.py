"""Trees of relays over gRPC on loopback, every node a real ``fedloom`` process: a tree
gives the weights of the flat simulation, and a relay killed mid-round fails only its
own subtree's contribution."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    processes: list[subprocess.Popen[str]],
    folder: Path,
    log: str,
    *args: str | Path,
    env: dict[str, str] | None = None,
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
            env={**os.environ, **(env or {})},
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


def flat_simulation(num_clients: int = 6) -> fedloom.RunResult:
    """The flat run of clients "0" .. with the config's strategy and seed, in this process."""
    spec = importlib.util.spec_from_file_location("relay_task_flat", TASK)
    assert spec is not None
    assert spec.loader is not None
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    strategy = fedloom.fedavg(config={"local_epochs": 2})
    return fedloom.simulate(
        task.client_fn, num_clients=num_clients, rounds=3, strategy=strategy, seed=7
    )


def setup_run(folder: Path, processes: list[subprocess.Popen[str]]) -> tuple[Path, Any, str]:
    """The task and config in `folder`, and a server waiting for 2 relays; its address."""
    shutil.copy(TASK, folder / "relay_task.py")
    config = folder / "tree.toml"
    config.write_text(CONFIG)
    server = start(
        processes,
        folder,
        "server",
        *("server", config, "--address", "127.0.0.1:0", "--min-clients", "2", "--insecure"),
        *("--run-dir", folder / "runs", "--no-progress"),
    )
    return config, server, listening(server[1], server[0])


@pytest.mark.timeout(300)
def test_relay_tree_over_grpc_equals_flat_simulation(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """1 server, 2 relays x 3 clients, all real processes: the flat run's weights to 1e-6."""
    config, (server, server_out), upstream = setup_run(tmp_path, processes)
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


@pytest.mark.timeout(240)
def test_relay_killed_mid_round_fails_only_its_subtree(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """relay-b is SIGKILLed while its client trains: round 1 goes on with relay-a alone."""
    config, (server, server_out), upstream = setup_run(tmp_path, processes)
    stalled = tmp_path / "stalled"
    relays = {}
    for relay_name, partition in (("relay-a", 0), ("relay-b", 1)):
        relays[relay_name] = start(
            processes,
            tmp_path,
            relay_name,
            *("relay", config, "--upstream", upstream, "--name", relay_name, "--insecure"),
            *("--address", "127.0.0.1:0", "--min-clients", "1", "--heartbeat-s", "1"),
        )
        address = listening(relays[relay_name][1], relays[relay_name][0])
        leaf = start(
            processes,
            tmp_path,
            f"client-{partition}",
            *("client", config, "--server", address, "--name", str(partition)),
            *("--partition-id", str(partition), "--num-partitions", "2", "--insecure"),
            env={"RELAY_TASK_STALL": str(stalled)} if relay_name == "relay-b" else None,
        )
        if relay_name == "relay-a":
            survivor = leaf
    deadline = time.monotonic() + 120
    while not stalled.exists():  # relay-b's client is in round 1's fit
        assert time.monotonic() < deadline, relays["relay-b"][1].read_text()
        assert server.poll() is None, server_out.read_text()
        time.sleep(0.1)

    relays["relay-b"][0].kill()
    status = server.wait(timeout=120)

    assert status == 0, server_out.read_text()
    history = json.loads((tmp_path / "runs" / "tree" / "history.json").read_text())["rounds"]
    assert [record["num_results"] for record in history] == [1, 1, 1]
    assert list(history[0]["failures"]) == ["relay-b"]
    assert "stopped beating" in history[0]["failures"]["relay-b"]
    assert history[1]["failures"] == history[2]["failures"] == {}
    weights = load_weights(tmp_path / "runs" / "tree" / "weights.safetensors")
    only_a = flat_simulation(num_clients=1)  # client "0", the one under relay-a
    np.testing.assert_allclose(weights["w"], only_a.weights["w"], rtol=0, atol=1e-6)
    assert relays["relay-a"][0].wait(timeout=60) == 0, relays["relay-a"][1].read_text()
    assert survivor[0].wait(timeout=60) == 0, survivor[1].read_text()
