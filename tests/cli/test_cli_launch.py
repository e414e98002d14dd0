"""``fedloom launch``: N real processes of one script, supervised and stopped as a whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedloom.cli.main import main
from fedloom.errors import ConfigError
from fedloom.launching import launch_env

# Rank 0 serves 3 rounds to the two clients; clients 1 and 2 pull x toward 1 and 3, so
# x_n = 2 * (1 - 0.5**n) and the central loss |x_n - 2| is 2 * 0.5**n (0.25 at round 3).
# Rank 1 leaves a sleeping child in its process group, which the launcher must stop.
# With the argument "fail", rank 2 exits with status 3 as soon as rank 1's child is running
# (so the launcher has that child to stop, however slowly rank 1 started).
SCRIPT = """
import pathlib
import subprocess
import sys
import time

from fedloom import connect, serve
from fedloom.client import FunctionClient
from fedloom.launching import launch_env
from fedloom.observe import ProgressBar
from fedloom.transport.grpc.security import Tokens

env = launch_env()
if env.rank == 1:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"child pid {child.pid}", flush=True)
    pathlib.Path("child-started").touch()
if env.rank == 2 and sys.argv[1:] == ["fail"]:
    deadline = time.monotonic() + 60
    while not pathlib.Path("child-started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("rank 2 gives up", flush=True)
    sys.exit(3)
if env.is_server:
    serve(
        rounds=3,
        address=env.address,
        min_clients=env.num_clients,
        tokens=Tokens(shared_secret=env.token),
        initial_weights={"x": [0.0]},
        evaluate_fn=lambda weights, server_round: {"loss": abs(float(weights["x"][0]) - 2.0)},
        callbacks=[ProgressBar(rounds=3)],
        join_timeout_s=60,
        heartbeat_s=1.0,
    )
else:
    target = 1.0 if env.rank == 1 else 3.0

    def fit(weights, config):
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {}

    client = FunctionClient(weights={"x": [0.0]}, fit=fit)
    connect(client, address=env.address, name=f"rank{env.rank}", token=env.token)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "toy_launch.py"
    path.write_text(SCRIPT)
    return path


def launch(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fedloom.cli.main", "launch", "--nproc", "3"]
    return subprocess.run(
        [*command, "--log-dir", str(script.parent / "logs"), "--grace-s", "5", str(script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=script.parent,
        check=False,
    )


def launched_pids(done: subprocess.CompletedProcess[str], logs: Path) -> list[int]:
    """The ranks' pids the launcher printed, and the child rank 1 started."""
    pids = [int(pid) for pid in re.findall(r"rank \d: pid (\d+)", done.stdout)]
    child = re.search(r"child pid (\d+)", (logs / "rank1.log").read_text())
    assert len(pids) == 3, done.stdout
    assert child is not None
    return [*pids, int(child.group(1))]


def gone(pid: int, *, timeout_s: float = 10.0) -> bool:
    """Whether `pid` has ended (a zombie awaiting its reaper counts as ended)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.05)


@pytest.mark.e2e
def test_launch_runs_server_and_clients_to_the_end_and_leaves_nothing(script: Path) -> None:
    logs = script.parent / "logs"

    done = launch(script)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"all 3 processes finished; logs in {logs}" in done.stdout
    assert sorted(path.name for path in logs.iterdir()) == ["rank0.log", "rank1.log", "rank2.log"]
    server_log = (logs / "rank0.log").read_text()
    assert "round 1/3  central.loss=1.0000" in server_log
    assert "round 3/3  central.loss=0.2500" in server_log
    assert all(gone(pid) for pid in launched_pids(done, logs))


@pytest.mark.e2e
def test_launch_stops_everyone_when_a_rank_fails_and_exits_with_its_status(script: Path) -> None:
    logs = script.parent / "logs"

    done = launch(script, "fail")

    assert done.returncode == 3, done.stdout + done.stderr
    assert "error: rank 2 (pid" in done.stderr
    assert "failed with exit code 3; stopped the others" in done.stderr
    assert "    rank 2 gives up" in done.stderr  # the tail of its log
    assert all(gone(pid) for pid in launched_pids(done, logs))


def test_launch_needs_at_least_two_processes(
    script: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["launch", "--nproc", "1", str(script)])

    assert status == 2
    assert "expected N >= 2" in capsys.readouterr().err


def test_launch_env_outside_the_launcher_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FEDLOOM_RANK is not set") as caught:
        launch_env({})

    assert "fedloom launch --nproc N SCRIPT.py" in str(caught.value)


def test_launch_env_reads_rank_world_size_address_and_token() -> None:
    environ = {
        "FEDLOOM_RANK": "2",
        "FEDLOOM_WORLD_SIZE": "3",
        "FEDLOOM_ADDRESS": "127.0.0.1:5000",
        "FEDLOOM_TOKEN": "s3cret",
    }

    env = launch_env(environ)

    assert (env.rank, env.world_size, env.address, env.token) == (2, 3, "127.0.0.1:5000", "s3cret")
    assert (env.is_server, env.num_clients) == (False, 2)
    assert "s3cret" not in repr(env)
