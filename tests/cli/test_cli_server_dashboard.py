"""``fedloom server --dashboard``: the dashboard next to a live server, with its credentials."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from fedloom.cli.main import main

pytestmark = pytest.mark.e2e

CONFIG = """
[run]
rounds = 3
name = "watched"

[clients]
app = "unused_task:client_fn"

[strategy]
name = "fedavg"

[server]
address = "127.0.0.1:0"
join_timeout_s = 60
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "unused_task.py").write_text("def client_fn(context):\n    raise RuntimeError\n")
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


def test_server_dashboard_speaks_https_and_needs_a_servers_token(
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

    assert url.startswith("https://127.0.0.1:")
    assert refused.value.code == 401
    assert [(run["run_id"], run["status"], run["rounds_done"]) for run in runs] == [
        ("watched", "running", 0)
    ]


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
