"""``fedloom server --dashboard``: the dashboard next to a live server, with its credentials."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib

from fedloom.cli.main import main

pytestmark = pytest.mark.e2e

CONFIG = """
[run]
rounds = 3
name = "watched"

[clients]
app = "watched_task:client_fn"

[strategy]
name = "fedavg"

[server]
address = "127.0.0.1:0"
join_timeout_s = 60
"""


TASK = """
from fedloom.client import FunctionClient


def client_fn(context):
    return FunctionClient(weights={"x": [0.0]}, fit=lambda weights, config: (weights, 1, {}))
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "watched_task.py").write_text(TASK)
    path = tmp_path / "watched.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Server processes a test starts; killed at the end (they wait for clients that never come)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _line(path: Path, prefix: str, process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line
        assert process.poll() is None, f"the server exited: {path.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no line starting with {prefix!r} in {path} within 30 s")


def _get_json(url: str, token: str, context: ssl.SSLContext) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.loads(response.read())


def _poll(read: Callable[[], Any], *, until: Callable[[Any], bool], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_server_dashboard_speaks_https_needs_a_token_and_shows_live_clients(
    config: Path, tmp_path: Path, server: list[subprocess.Popen[str]]
) -> None:
    certs = tmp_path / "certs"
    assert main(["certs", str(certs), "--client", "alice"]) == 0
    token = tomllib.loads((certs / "tokens.toml").read_text())["alice"]
    out = tmp_path / "server.out"
    with open(out, "w") as stdout:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "fedloom.cli.main", "server", str(config)),
                *("--certs", str(certs), "--tokens", str(certs / "tokens.toml")),
                *("--run-dir", str(tmp_path / "runs"), "--dashboard", "127.0.0.1:0"),
                *("--min-clients", "2"),  # alice alone never starts round 1
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
    server.append(process)
    url = _line(out, "dashboard on ", process).removeprefix("dashboard on ")
    _line(out, "listening on ", process)  # the run is recorded before the server listens
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "api/runs", context=context, timeout=10)
    request = urllib.request.Request(url + "api/runs", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        runs = json.loads(response.read())
    address = _line(out, "listening on ", process).removeprefix("listening on ")
    server.append(
        subprocess.Popen(
            [
                *(sys.executable, "-m", "fedloom.cli.main", "client", str(config)),
                *("--server", address, "--name", "alice", "--certs", str(certs)),
                *("--token-file", str(certs / "tokens.toml")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    )
    clients = _poll(
        lambda: _get_json(url + "api/runs/watched/clients", token, context),
        until=lambda rows: [(r["client_id"], r["connected"]) for r in rows] == [("alice", True)],
    )

    assert url.startswith("https://127.0.0.1:")
    assert refused.value.code == 401
    assert [(run["run_id"], run["status"], run["rounds_done"]) for run in runs] == [
        ("watched", "running", 0)
    ]
    assert [(row["client_id"], row["connected"]) for row in clients] == [("alice", True)]
    assert clients[0]["num_results"] == 0  # joined; no round has run yet


def test_server_dashboard_refuses_a_public_address_without_tokens(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            *("server", str(config), "--insecure", "--dashboard", "0.0.0.0:0"),
            *("--run-dir", str(tmp_path / "runs")),
        ]
    )

    assert status == 2
    assert "not a loopback address, without credentials" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
