"""``fedloom certs``, ``fedloom server`` and ``fedloom client``: real processes on loopback."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedloom.cli.main import main
from fedloom.transport.grpc.security import load_tokens

MODULE = "deploy_toy_task"

# Two clients pull one weight x toward their targets 1 and 3 (one example each). A fit
# moves x halfway to the target, so FedAvg gives x <- x + (2 - x) / 2 and, from x = 0,
# x_n = 2 * (1 - 0.5**n). The central loss |x_n - 2| is 2 * 0.5**n: 2, 1, 0.5, 0.25.
TASK = """
from fedloom.client import FunctionClient

TARGETS = (1.0, 3.0)


def client_fn(context):
    target = TARGETS[context.partition_id]

    def fit(weights, config):
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {}

    return FunctionClient(weights={"x": [0.0]}, fit=fit)


def evaluate(weights, server_round):
    return {"loss": abs(float(weights["x"][0]) - 2.0)}
"""

# No [clients].num_clients: the server does not need it, and the clients get
# --num-partitions. [server] sets what the flags do not override.
CONFIG = f"""
[run]
rounds = 3
name = "toy"

[clients]
app = "{MODULE}:client_fn"
evaluate = "{MODULE}:evaluate"

[strategy]
name = "fedavg"

[server]
address = "127.0.0.1:8080"
join_timeout_s = 60
fit_timeout_s = 60
heartbeat_s = 1
"""

CLIENTS = ("alice", "bob", "mallory")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The toy config next to its task module."""
    (tmp_path / f"{MODULE}.py").write_text(TASK)
    path = tmp_path / "toy.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """Development certificates and tokens for alice, bob and mallory."""
    folder = tmp_path / "certs"
    options = [option for name in CLIENTS for option in ("--client", name)]
    assert main(["certs", str(folder), *options]) == 0
    return folder


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at the end is killed (a safety net)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def fedloom(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fedloom.cli.main", *map(str, args)]


def wait_for_line(path: Path, prefix: str, process: subprocess.Popen[str]) -> str:
    """The first line of `path` starting with `prefix`, waiting up to 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line
        assert process.poll() is None, f"the server exited: {path.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no line starting with {prefix!r} in {path} within 30 s")


def test_certs_writes_certificates_tokens_and_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"

    status = main(
        ["certs", str(certs), "--client", "alice", "--client", "bob", "--client", "mallory"]
    )

    out = capsys.readouterr().out
    assert status == 0

    names = {"ca.pem", "server.pem", "server.key", "tokens.toml"}
    names |= {f"{name}.{suffix}" for name in CLIENTS for suffix in ("pem", "key")}
    assert {path.name for path in certs.iterdir()} == names
    tokens = load_tokens(certs / "tokens.toml")
    assert sorted(tokens.clients) == sorted(CLIENTS)
    assert stat.S_IMODE((certs / "tokens.toml").stat().st_mode) == 0o600
    assert f"--certs {certs} --tokens {certs / 'tokens.toml'}" in out
    assert "--token-file" in out


def test_certs_refuses_to_overwrite_and_keeps_files(
    certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {path.name: path.read_bytes() for path in certs.iterdir()}
    capsys.readouterr()

    status = main(["certs", str(certs), "--client", "alice"])

    err = capsys.readouterr().err
    assert status == 2
    assert "already exists; refusing to overwrite it" in err
    assert "--overwrite" in err
    assert {path.name: path.read_bytes() for path in certs.iterdir()} == before


def test_certs_overwrite_keeps_tokens_and_adds_new_clients(certs: Path) -> None:
    old = load_tokens(certs / "tokens.toml").clients

    status = main(["certs", str(certs), "--client", "carol", "--overwrite"])

    new = load_tokens(certs / "tokens.toml").clients
    assert status == 0
    assert {name: new[name] for name in CLIENTS} == dict(old)
    assert sorted(new) == sorted([*CLIENTS, "carol"])
    assert (certs / "carol.pem").exists()


def test_server_without_tls_or_insecure_exits_2_and_says_how(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["server", str(config), "--run-dir", str(config.parent / "runs")])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: the server needs TLS: pass --certs DIR")
    assert "fedloom certs DIR" in err
    assert "--insecure" in err
    assert not (config.parent / "runs").exists()


def test_server_without_tokens_exits_2(
    config: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()

    status = main(["server", str(config), "--certs", str(certs)])

    err = capsys.readouterr().err
    assert status == 2
    assert "the server needs tokens: pass --tokens FILE" in err


def test_server_rejects_insecure_with_tls_options(
    config: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["server", str(config), "--certs", str(certs), "--insecure"])

    assert status == 2
    assert "--insecure turns TLS off" in capsys.readouterr().err


def test_client_without_tls_or_insecure_exits_2(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["client", str(config), "--server", "127.0.0.1:1", "--name", "alice"]

    status = main([*args, "--num-partitions", "2", "--partition-id", "0"])

    assert status == 2
    assert "the client needs TLS: pass --certs DIR" in capsys.readouterr().err


def test_client_needs_a_partition_id_when_the_data_is_split(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["client", str(config), "--server", "127.0.0.1:1", "--name", "a", "--num-partitions", "2"]
    )

    assert status == 2
    assert "pass --partition-id I with I in 0..1" in capsys.readouterr().err


@pytest.mark.e2e
def test_server_and_two_clients_finish_three_rounds_over_mutual_tls(
    config: Path, certs: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A client with a wrong token is refused (exit 1) while the server keeps serving."""
    folder, tokens = config.parent, certs / "tokens.toml"
    server_out = folder / "server.out"
    with open(server_out, "w") as out, open(folder / "server.err", "w") as err:
        server = subprocess.Popen(
            fedloom(
                *("server", config, "--address", "127.0.0.1:0", "--min-clients", "2"),
                *("--certs", certs, "--client-ca", certs / "ca.pem", "--tokens", tokens),
                *("--run-dir", folder / "runs"),
            ),
            stdout=out,
            stderr=err,
            text=True,
            cwd=folder,
        )
    processes.append(server)
    address = wait_for_line(server_out, "listening on ", server).removeprefix("listening on ")
    client = ("client", config, "--server", address, "--certs", certs, "--num-partitions", "2")

    refused = subprocess.run(
        fedloom(*client, "--name", "mallory", "--partition-id", "0", "--token", "not-the-token"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
        check=False,
    )
    good = [
        subprocess.Popen(
            fedloom(*client, "--name", name, "--partition-id", str(i), "--token-file", tokens),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=folder,
        )
        for i, name in enumerate(("alice", "bob"))
    ]
    processes.extend(good)
    outputs = [process.communicate(timeout=120)[0] for process in good]
    server.wait(timeout=60)

    assert refused.returncode == 1, refused.stderr
    assert "error: the server at" in refused.stderr
    assert "refused client 'mallory': invalid token" in refused.stderr
    assert [process.returncode for process in good] == [0, 0], outputs
    assert all("the server ended the run" in output for output in outputs)
    assert server.returncode == 0, (folder / "server.err").read_text()
    printed = server_out.read_text()
    assert "round 3/3  central.loss=0.2500" in printed
    assert f"run folder: {folder / 'runs' / 'toy'}" in printed
    history = json.loads((folder / "runs" / "toy" / "history.json").read_text())
    assert [record["server_round"] for record in history["rounds"]] == [0, 1, 2, 3]
    losses = [record["metrics"]["central.loss"] for record in history["rounds"]]
    assert losses == pytest.approx([2.0, 1.0, 0.5, 0.25])
    assert history["stop_reason"] == "completed 3 rounds"
