"""Client hooks over a real gRPC server process: every step fires, in order, and StopAtVersion ends the client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedloom.client import FunctionClient
from fedloom.core.hooks import ClientHooks, CycleEvent, StopAtVersion
from fedloom.deployment import connect

FEDLOOM = [sys.executable, "-c", "import sys; from fedloom.cli.main import main; sys.exit(main())"]

pytestmark = pytest.mark.e2e


def start_server(tmp_path: Path, rounds: int) -> tuple[subprocess.Popen[str], int]:
    config = tmp_path / "server.toml"
    config.write_text(
        f'[run]\nrounds = {rounds}\n\n[strategy]\nname = "fedavg"\n\n'
        '[server]\naddress = "127.0.0.1:0"\nmin_clients = 1\njoin_timeout_s = 30\n'
        "fit_timeout_s = 30\nheartbeat_s = 1.0\n"
    )
    server = subprocess.Popen(
        [*FEDLOOM, "server", str(config), "--insecure", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "server.log").open("w"),
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if line.startswith("listening on"):
            return server, int(line.rsplit(":", 1)[1])
        if not line and server.poll() is not None:
            break
    server.kill()
    raise AssertionError((tmp_path / "server.log").read_text())


def test_hooks_fire_at_every_step_and_stop_at_version_ends_the_client(tmp_path):
    server, port = start_server(tmp_path, rounds=5)
    events: list[CycleEvent] = []
    hooks = ClientHooks()
    for step in ("before_download", "after_download", "before_upload", "after_upload"):
        hooks.add(step, events.append)
    hooks.on_failure(events.append)
    hooks.at_end(events.append)
    client = FunctionClient(  # no evaluate(): each evaluation task fails on the client
        weights={"x": [0.0]}, fit=lambda w, config: ({"x": w["x"] + 1.0}, 1, {})
    )
    try:
        tasks = connect(
            client,
            address=f"127.0.0.1:{port}",
            name="c1",
            hooks=[hooks, StopAtVersion(2)],
        )
    finally:
        server.kill()
        server.wait(timeout=10)
    steps = [(e.step, e.task, e.server_round) for e in events]
    cycle = ["before_download", "after_download", "before_upload", "after_upload"]
    assert steps[:4] == [(step, "get_weights", None) for step in cycle]
    fit1 = [(step, "fit", 1) for step in cycle]
    assert steps[4:8] == fit1
    evaluate1 = steps[8:13]
    assert evaluate1[:2] == [("before_download", "evaluate", 1), ("after_download", "evaluate", 1)]
    assert evaluate1[2] == ("on_failure", "evaluate", 1)
    assert "without an evaluate function" in (events[10].reason or "")
    assert steps[13:17] == [(step, "fit", 2) for step in cycle]
    assert steps[17] == ("at_end", None, None)  # stopped right after round 2's upload
    assert "version 2" in (events[17].reason or "")
    assert tasks == 4
    assert events[16].tasks_done == 4
