"""``--store`` and ``--resume`` of ``fedloom simulate`` and ``fedloom server``."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedloom.cli.main import main
from fedloom.store import open_store
from fedloom.transport.codec import load_weights

MODULE = "cli_store_task"

# Three clients pull x halfway toward 1, 2 and 3: FedAvg gives x_n = 2 * (1 - 0.5**n).
TASK = """
from fedloom.client import FunctionClient

TARGETS = (1.0, 2.0, 3.0)


def client_fn(context):
    target = TARGETS[context.partition_id]

    def fit(weights, config):
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {}

    return FunctionClient(weights={"x": [0.0]}, fit=fit)
"""

CONFIG = f"""
[run]
rounds = {{rounds}}
name = "toy"

[clients]
app = "{MODULE}:client_fn"
num_clients = 3

[strategy]
name = "fedavg"
fraction_evaluate = 0.0
server_lr = {{lr}}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / f"{MODULE}.py").write_text(TASK)
    path = tmp_path / "toy.toml"
    path.write_text(CONFIG.format(rounds=3, lr=1.0))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    sys.modules.pop(MODULE, None)


def simulate(config: Path, *options: str) -> int:
    runs = config.parent / "runs"
    return main(["simulate", str(config), "--run-dir", str(runs), "--no-progress", *options])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_simulate_records_every_round_in_the_run_folders_store(config: Path) -> None:
    assert simulate(config) == 0

    with open_store(config.parent / "runs" / "toy" / "store.db") as store:
        run = store.get_run("toy")
        assert (run.status, run.rounds_done) == ("finished", 3)
        # x_3 = 2 * (1 - 0.5**3) = 1.75
        assert float(store.load_weights("toy", "last")["x"][0]) == 1.75
        assert len(store.client_results("toy", 3)) == 3


def test_simulate_resume_continues_after_the_last_round(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate(config) == 0
    config.write_text(CONFIG.format(rounds=5, lr=1.0))  # more rounds: a harmless change

    status = simulate(config, "--resume", "toy")

    assert status == 0
    assert "resuming run 'toy' after round 3" in capsys.readouterr().out
    weights = load_weights(config.parent / "runs" / "toy" / "weights.safetensors")
    assert float(weights["x"][0]) == 2 * (1 - 0.5**5)
    with open_store(config.parent / "runs" / "toy" / "store.db") as store:
        assert [r.server_round for r in store.rounds("toy")] == [0, 1, 2, 3, 4, 5]
        changed = [e.detail for e in store.events("toy") if e.kind == "config_changed"]
        assert changed == [{"config.run.rounds": {"recorded": 3, "new": 5}}]


def test_simulate_resume_refuses_a_config_that_changes_the_math(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate(config) == 0
    config.write_text(CONFIG.format(rounds=5, lr=0.5))

    status = simulate(config, "--resume", "toy")

    assert status == 2
    err = capsys.readouterr().err
    assert "cannot resume run 'toy': the config changes the math" in err
    assert "config.strategy.server_lr" in err


def test_simulate_refuses_to_start_a_recorded_run_again(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate(config) == 0

    assert simulate(config) == 2
    assert "run 'toy' is recorded already" in capsys.readouterr().err


def test_simulate_resume_of_a_missing_run_lists_the_runs(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulate(config) == 0

    assert simulate(config, "--resume", "tyo") == 2
    assert "runs under" in (err := capsys.readouterr().err)
    assert "toy" in err


@pytest.mark.parametrize("command", ["simulate", "server"])
def test_unreachable_store_url_is_one_message_and_nothing_starts(
    config: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    url = f"postgresql://fl:hunter2@127.0.0.1:{_closed_port()}/runs"
    runs = config.parent / "runs"
    extra = ["--insecure", "--address", "127.0.0.1:0"] if command == "server" else []

    status = main(
        [command, str(config), "--run-dir", str(runs), "--no-progress", "--store", url, *extra]
    )

    captured = capsys.readouterr()
    assert status == 2
    assert "cannot reach the store database postgresql://fl:***@127.0.0.1:" in captured.err
    assert "hunter2" not in captured.err + captured.out
    assert "listening on" not in captured.out
    assert not runs.exists()


def test_simulate_records_into_a_postgresql_store(config: Path, postgres_url: str) -> None:
    assert simulate(config, "--store", postgres_url) == 0

    with open_store(postgres_url) as store:
        assert store.get_run("toy").rounds_done == 3
    assert not (config.parent / "runs" / "toy" / "store.db").exists()
