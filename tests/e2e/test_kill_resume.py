"""SIGKILL a real server process at each phase of a round, resume it, and compare the weights.

The processes run with ``FEDLOOM_FAULT_AT=phase:round`` (see `fedloom._faults`):
at that point the server prints ``FEDLOOM-FAULT-POINT phase round`` and pauses
`PAUSE_S`; the test SIGKILLs it at a random moment inside the pause, checks that
the store has exactly the rounds before it, and starts it again with
``--resume``, killing it at the next round, and so on; the last start runs to the
end. The phases: broadcast (the round's fit tasks are handed out: over gRPC they
are queued and the clients download them during the pause), collection (the first result is in), aggregation (every result is in, the new
weights are being computed) and checkpoint (the round's files are written, the
transaction is not committed).

- ``fedloom simulate``: SCAFFOLD with an Adam server optimizer, 3 of 5 clients
  sampled per round; the resumed run's weights are bit-identical to an
  uninterrupted run's.
- ``fedloom server`` over gRPC on 127.0.0.1 with two client processes that are
  never touched: they reconnect to each restarted server by themselves; FedAvgM
  (server momentum) over two clients, whose fold is exact in any arrival order,
  so the weights are bit-identical too.

The default suite kills once at each phase per mode (8 kills); ``-m slow`` runs
10 kills at each phase per mode (80 kills).
"""

from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from fedloom.cli.main import main
from fedloom.store import open_store
from fedloom.transport.codec import load_weights

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).resolve().parent / "kill_scripts"
SRC = Path(__file__).resolve().parents[2] / "src"
PHASES = ("broadcast", "collection", "aggregation", "checkpoint")
PAUSE_S = 0.4
WAIT_S = 90.0

SIMULATE_CONFIG = """
[run]
rounds = {rounds}
seed = 5
name = "run"

[clients]
app = "toy_task:client_fn"
num_clients = 5
evaluate = "toy_task:evaluate"

[strategy]
name = "scaffold"
fraction_fit = 0.6
fraction_evaluate = 0.0

[strategy.server_opt]
name = "adam"
lr = 0.3
"""

SERVER_CONFIG = """
[run]
rounds = {rounds}
seed = 5
name = "run"

[clients]
evaluate = "toy_task:evaluate"

[strategy]
name = "fedavgm"
fraction_evaluate = 0.0
min_fit = 2

[server]
min_clients = 2
join_timeout_s = 60
fit_timeout_s = 60
heartbeat_s = 1
"""


class Proc:
    """A child process; stdout lines are queued, stderr goes to a log file."""

    def __init__(
        self, name: str, command: Sequence[str], folder: Path, env: dict[str, str]
    ) -> None:
        self.name = name
        self.log = folder / f"{name}.log"
        with self.log.open("a") as stderr:
            self.popen = subprocess.Popen(
                list(command),
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=folder,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout_s: float = WAIT_S) -> str:
        """The rest of the next stdout line starting with `prefix`."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait(timeout=10)
                pytest.fail(f"{self.name} exited ({code}) before '{prefix}'{self.tail()}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        pytest.fail(f"{self.name}: no '{prefix}' within {timeout_s:g} s{self.tail()}")

    def finish(self, timeout_s: float = WAIT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still runs after {timeout_s:g} s{self.tail()}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-20:]
        return "; its stderr ends:\n" + "\n".join(lines)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Processes a test starts; all are killed at the end, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()
        assert proc.popen.stdout is not None
        proc.popen.stdout.close()


def _env(fault: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("FEDLOOM_FAULT_AT", None)
    if fault is not None:
        env["FEDLOOM_FAULT_AT"] = fault
        env["FEDLOOM_FAULT_PAUSE_S"] = str(PAUSE_S)
    return env


def _fedloom(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "fedloom.cli.main", *map(str, args)]


def _kill_in_phase(proc: Proc, phase: str, server_round: int, rng: random.Random) -> None:
    """Wait for the fault point, then SIGKILL at a random moment inside its pause."""
    proc.expect(f"FEDLOOM-FAULT-POINT {phase} {server_round}")
    time.sleep(rng.uniform(0.0, PAUSE_S * 0.9))
    proc.kill()


def _assert_recorded(store_path: Path, rounds: int) -> None:
    """The store holds rounds 0..`rounds`, each once, and nothing after."""
    with open_store(store_path) as store:
        assert store.get_run("run").rounds_done == rounds
        assert [r.server_round for r in store.rounds("run")] == list(range(rounds + 1))


def _kills(phases: Sequence[str], per_phase: int) -> list[tuple[str, int]]:
    """(phase, round) of each kill: one run per phase, killed in rounds 1..per_phase."""
    return [(phase, r) for phase in phases for r in range(1, per_phase + 1)]


def _run_simulation_with_kills(
    tmp_path: Path, procs: list[Proc], kills: list[tuple[str, int]], rounds: int, seed: int
) -> None:
    rng = random.Random(seed)
    shutil.copy(SCRIPTS / "toy_task.py", tmp_path)
    (tmp_path / "toy.toml").write_text(SIMULATE_CONFIG.format(rounds=rounds))
    # the uninterrupted reference, in this process
    assert (
        main(
            [
                "simulate",
                str(tmp_path / "toy.toml"),
                "--run-dir",
                str(tmp_path / "ref"),
                "--no-progress",
            ]
        )
        == 0
    )
    reference = load_weights(tmp_path / "ref" / "run" / "weights.safetensors")
    runs = tmp_path / "runs"
    previous = None
    for index, (phase, server_round) in enumerate(kills):
        if previous is not None and previous[1] >= server_round:  # a new run for a new phase
            _finish_simulation(tmp_path, procs, runs, reference, rounds)
            runs = tmp_path / f"runs-{index}"
        resume = ["--resume", "run"] if runs.exists() else []
        proc = Proc(
            f"simulate-{index}",
            _fedloom("simulate", "toy.toml", "--run-dir", runs, "--no-progress", *resume),
            tmp_path,
            _env(f"{phase}:{server_round}"),
        )
        procs.append(proc)
        if resume:
            assert proc.expect("resuming run 'run' after round") == str(previous[1] - 1)  # type: ignore[index]
        _kill_in_phase(proc, phase, server_round, rng)
        _assert_recorded(runs / "run" / "store.db", server_round - 1)
        previous = (phase, server_round)
    _finish_simulation(tmp_path, procs, runs, reference, rounds)


def _finish_simulation(
    tmp_path: Path, procs: list[Proc], runs: Path, reference: object, rounds: int
) -> None:
    proc = Proc(
        "simulate-last",
        _fedloom("simulate", "toy.toml", "--run-dir", runs, "--no-progress", "--resume", "run"),
        tmp_path,
        _env(None),
    )
    procs.append(proc)
    proc.expect("resuming run 'run' after round")
    assert proc.finish() == 0, proc.tail()
    weights = load_weights(runs / "run" / "weights.safetensors")
    assert weights.flat.tobytes() == reference.flat.tobytes()  # type: ignore[attr-defined]
    _assert_recorded(runs / "run" / "store.db", rounds)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _grpc_reference(rounds: int) -> np.ndarray:
    """The same federation simulated in this process (2 clients, FedAvgM)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import toy_task

        from fedloom import simulate
        from fedloom.strategies import fedavgm

        result = simulate(
            toy_task.pull_client_fn,
            num_clients=2,
            rounds=rounds,
            strategy=fedavgm(fraction_evaluate=0.0, min_fit=2),
            seed=5,
            initial_weights={"w": np.zeros(3)},
        )
    finally:
        sys.path.remove(str(SCRIPTS))
    return result.weights.flat


def _run_grpc_with_kills(
    tmp_path: Path, procs: list[Proc], kills: list[tuple[str, int]], rounds: int, seed: int
) -> None:
    rng = random.Random(seed)
    shutil.copy(SCRIPTS / "toy_task.py", tmp_path)
    (tmp_path / "toy.toml").write_text(SERVER_CONFIG.format(rounds=rounds))
    reference = _grpc_reference(rounds)
    runs = tmp_path / "runs"
    clients: list[Proc] = []
    address = ""
    previous: tuple[str, int] | None = None

    def start_server(fault: str | None, resume: bool, label: str) -> Proc:
        nonlocal address
        port = int(address.rpartition(":")[2]) if address else _free_port()
        address = f"127.0.0.1:{port}"
        proc = Proc(
            label,
            _fedloom(
                "server",
                "toy.toml",
                "--insecure",
                "--address",
                address,
                "--run-dir",
                runs,
                "--no-progress",
                *(["--resume", "run"] if resume else []),
            ),
            tmp_path,
            _env(fault),
        )
        procs.append(proc)
        if resume:  # printed before it listens
            done = proc.expect("resuming run 'run' after round")
            assert previous is None or done == str(previous[1] - 1)
        proc.expect("listening on")
        return proc

    def start_clients() -> None:
        for partition, name in enumerate(("alice", "bob")):
            client = Proc(
                name,
                [
                    sys.executable,
                    str(SCRIPTS / "client.py"),
                    "--address",
                    address,
                    "--name",
                    name,
                    "--partition",
                    str(partition),
                ],
                tmp_path,
                _env(None),
            )
            procs.append(client)
            clients.append(client)

    def finish() -> None:
        server = start_server(None, True, "server-last")
        assert server.finish() == 0, server.tail()
        for client in clients:
            client.expect("FINISHED")
            assert client.finish() == 0, client.tail()
        weights = load_weights(runs / "run" / "weights.safetensors")
        assert weights.flat.tobytes() == reference.tobytes()
        _assert_recorded(runs / "run" / "store.db", rounds)
        with open_store(runs / "run" / "store.db") as store:
            assert {c.client_id for c in store.clients("run")} == {"alice", "bob"}

    for index, (phase, server_round) in enumerate(kills):
        if previous is not None and previous[1] >= server_round:  # a new run for a new phase
            finish()
            runs, clients, address, previous = tmp_path / f"runs-{index}", [], "", None
        resume = runs.exists()
        server = start_server(f"{phase}:{server_round}", resume, f"server-{index}")
        if not clients:
            start_clients()
        _kill_in_phase(server, phase, server_round, rng)
        _assert_recorded(runs / "run" / "store.db", server_round - 1)
        previous = (phase, server_round)
    finish()


@pytest.mark.timeout(600)
def test_simulation_killed_once_in_each_phase_resumes_bit_identical(
    tmp_path: Path, procs: list[Proc]
) -> None:
    kills = [(phase, index + 1) for index, phase in enumerate(PHASES)]

    _run_simulation_with_kills(tmp_path, procs, kills, rounds=len(kills) + 1, seed=1)


@pytest.mark.timeout(600)
def test_grpc_server_killed_once_in_each_phase_resumes_and_clients_reconnect(
    tmp_path: Path, procs: list[Proc]
) -> None:
    kills = [(phase, index + 1) for index, phase in enumerate(PHASES)]

    _run_grpc_with_kills(tmp_path, procs, kills, rounds=len(kills) + 1, seed=2)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("phase", PHASES)
def test_simulation_killed_ten_times_in_a_phase_resumes_bit_identical(
    tmp_path: Path, procs: list[Proc], phase: str
) -> None:
    _run_simulation_with_kills(tmp_path, procs, _kills([phase], 10), rounds=11, seed=3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("phase", PHASES)
def test_grpc_server_killed_ten_times_in_a_phase_resumes_and_clients_reconnect(
    tmp_path: Path, procs: list[Proc], phase: str
) -> None:
    _run_grpc_with_kills(tmp_path, procs, _kills([phase], 10), rounds=11, seed=4)
