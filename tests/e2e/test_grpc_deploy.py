"""A deployment over gRPC on loopback: a server and clients as separate processes.

Each test starts `grpc_scripts/server_script.py` (``fedloom.serve`` on 127.0.0.1,
port 0) and `grpc_scripts/client_script.py` processes (``fedloom.connect``). The
server prints ``PORT``, ``JOINED``, ``STARTED``, ``ROUND`` and ``DONE`` lines, and a
stalling client ``FITTING``, that the test waits on; the server writes its history to
a JSON file the test reads. Every wait is bounded, and every process is killed when
the test ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fedloom.transport.grpc.security import generate_token, make_dev_certs

SCRIPTS = Path(__file__).resolve().parent / "grpc_scripts"
# A dead client is dropped after 3 missed beats. Not lower: a client's first beat comes up to
# 2 s after it starts (ClientRuntime._beat waits 2 s before it knows the server's interval).
HEARTBEAT_S = "1.0"

pytestmark = pytest.mark.e2e


def _load_common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grpc_scripts_common", SCRIPTS / "common.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Proc:
    """A script in a child process; its stdout lines are queued, its stderr goes to a file."""

    def __init__(self, name: str, script: str, args: Sequence[str], folder: Path) -> None:
        self.name = name
        self.log = folder / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, str(SCRIPTS / script), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, *, timeout_s: float, watch: Sequence[Proc] = ()) -> str:
        """The rest of the next stdout line starting with `prefix` (others are skipped).

        Fails at once if this process, or one in `watch`, exits with an error first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{self.name}: no '{prefix}' line within {timeout_s:g} s{self.tail()}")
            for other in watch:
                if other.popen.poll() not in (None, 0):
                    pytest.fail(
                        f"{other.name} exited ({other.popen.returncode}) while {self.name} "
                        f"had not printed '{prefix}'{other.tail()}"
                    )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)  # stays at the end for later calls
                code = self.popen.wait(timeout=10)
                pytest.fail(f"{self.name} exited ({code}) before a '{prefix}' line{self.tail()}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def finish(self, *, timeout_s: float) -> int:
        """Wait for the process to exit; its exit code."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still runs after {timeout_s:g} s{self.tail()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        text = "\n".join(self.stderr().splitlines()[-lines:])
        return f"; its stderr ends:\n{text}"

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and wait for it."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def close(self) -> None:
        """Kill the process if needed, then release its stdout pipe."""
        self.kill()
        self._reader.join(timeout=10)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start scripts as processes; kill whatever still runs at the end of the test."""
    started: list[Proc] = []

    def start(name: str, script: str, *args: str) -> Proc:
        proc = Proc(name, script, args, tmp_path)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.close()
            print(f"--- {proc.name} (exit {proc.popen.returncode}){proc.tail(15)}")


def _server(spawn: Spawn, out: Path, *args: str) -> tuple[Proc, str]:
    """Start the server script; the process and its address once it listens."""
    server = spawn("server", "server_script.py", "--out", str(out), *args)
    port = int(server.expect("PORT", timeout_s=60))
    return server, f"127.0.0.1:{port}"


def _client(spawn: Spawn, name: str, address: str, *args: str, log: str | None = None) -> Proc:
    return spawn(log or name, "client_script.py", "--address", address, "--name", name, *args)


def _finished_run(
    server: Proc, out: Path, *, timeout_s: float, clients: Sequence[Proc]
) -> dict[str, Any]:
    """Wait for the server to write its result and exit (failing if a client fails); the result."""
    server.expect("DONE", timeout_s=timeout_s, watch=clients)
    assert server.finish(timeout_s=60) == 0, server.tail()
    return json.loads(out.read_text())


def _rounds(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {record["server_round"]: record for record in result["history"]["rounds"]}


@pytest.mark.timeout(600)
def test_grpc_quickstart_reaches_accuracy_with_tls_and_tokens(spawn: Spawn, tmp_path: Path) -> None:
    """A server and 3 client processes, over TLS with per-client tokens, learn the digits."""
    names = ["c0", "c1", "c2"]
    certs = make_dev_certs(tmp_path / "certs")
    tokens = {name: generate_token() for name in names}
    (tmp_path / "tokens.json").write_text(json.dumps(tokens))
    out = tmp_path / "result.json"
    server, address = _server(
        spawn,
        out,
        *("--task", "quickstart", "--rounds", "15", "--min-clients", "3", "--min-fit", "3"),
        *("--certs", str(tmp_path / "certs"), "--tokens", str(tmp_path / "tokens.json")),
    )
    # "--token=..." because a token may start with "-", which argparse would take for an option.
    clients = [
        _client(
            spawn,
            name,
            address,
            *("--task", "quickstart", "--partition", str(i), "--num-partitions", "3"),
            f"--token={tokens[name]}",
            *("--ca", str(certs.ca)),
        )
        for i, name in enumerate(names)
    ]

    # Three clients importing torch at once on a busy machine can take a minute to join.
    result = _finished_run(server, out, timeout_s=360, clients=clients)

    rounds = _rounds(result)
    assert sorted(rounds) == list(range(16))
    assert result["stop_reason"] == "completed 15 rounds"
    assert all(rounds[r]["num_results"] == 3 and not rounds[r]["failures"] for r in range(1, 16))
    # An untrained 10-class model is at chance, about 0.1; 3 Dirichlet(0.5) clients reach
    # about 0.93 in simulation after 10 rounds.
    assert rounds[0]["metrics"]["central.accuracy"] < 0.2
    accuracy = rounds[15]["metrics"]["central.accuracy"]
    print(f"\nquickstart over gRPC: central accuracy {accuracy:.4f} after 15 rounds")
    assert accuracy >= 0.92
    for client in clients:
        assert client.finish(timeout_s=30) == 0, client.tail()


def test_grpc_client_killed_mid_round_fails_only_its_task(spawn: Spawn, tmp_path: Path) -> None:
    """A client SIGKILLed during fit stops beating; the round completes with the others."""
    out = tmp_path / "result.json"
    server, address = _server(
        spawn,
        out,
        *("--task", "toy", "--rounds", "3", "--min-clients", "3", "--min-fit", "2"),
        *("--heartbeat-s", HEARTBEAT_S, "--fit-timeout-s", "120"),
    )
    healthy = [_client(spawn, name, address, "--task", "toy") for name in ("c0", "c1")]
    slow = _client(spawn, "c2", address, "--task", "toy", "--slow")
    slow.expect("FITTING", timeout_s=60)

    slow.kill()
    result = _finished_run(server, out, timeout_s=60, clients=healthy)

    rounds = _rounds(result)
    assert result["stop_reason"] == "completed 3 rounds"
    assert rounds[1]["num_results"] == 2
    assert list(rounds[1]["failures"]) == ["c2"]
    assert "stopped beating" in rounds[1]["failures"]["c2"]
    # Dropped after 3 missed beats of 1 s, long before the 120 s fit deadline.
    assert rounds[1]["duration_s"] < 30
    assert [rounds[r]["num_results"] for r in (2, 3)] == [2, 2]
    # Each round moves x to the mean of x + 1, so 3 rounds give 3.
    assert result["weights"] == {"x": [3.0, 3.0, 3.0]}
    for client in healthy:
        assert client.finish(timeout_s=30) == 0, client.tail()


@pytest.mark.parametrize(
    ("restart", "heartbeat_s", "reason", "round_2_results"),
    [
        # Restarted once the server dropped it (3 missed beats): it is not sampled until
        # round 3, because c0 and c1 hold round 2 open until it has joined.
        pytest.param("after-drop", HEARTBEAT_S, "stopped beating", 2, id="after-drop"),
        # Restarted at once, long before 3 beats of 20 s are missed: joining again under
        # its name ends its old session, which fails its round-1 task; rounds 2 and 3
        # sample it.
        pytest.param("before-drop", "20", "joined again", 3, id="before-drop"),
    ],
)
def test_grpc_restarted_client_rejoins_a_later_round(
    spawn: Spawn,
    tmp_path: Path,
    restart: str,
    heartbeat_s: str,
    reason: str,
    round_2_results: int,
) -> None:
    """A killed client restarted under its name takes part in the rounds after it joins."""
    out, gate = tmp_path / "result.json", tmp_path / "gate"
    server, address = _server(
        spawn,
        out,
        *("--task", "toy", "--rounds", "3", "--min-clients", "3", "--min-fit", "2"),
        *("--heartbeat-s", heartbeat_s, "--fit-timeout-s", "120"),
    )
    # c0 and c1 hold round 2 until the gate opens, after c2 has joined again.
    gated = ("--task", "toy", "--gate", str(gate), "--gate-after", "1")
    healthy = [_client(spawn, name, address, *gated) for name in ("c0", "c1")]
    slow = _client(spawn, "c2", address, "--task", "toy", "--slow")
    slow.expect("FITTING", timeout_s=60)
    slow.kill()
    if restart == "after-drop":
        round_1 = json.loads(server.expect("ROUND", timeout_s=30, watch=healthy))

    again = _client(spawn, "c2", address, "--task", "toy", log="c2-restarted")
    server.expect("JOINED c2", timeout_s=60, watch=[*healthy, again])
    if restart == "before-drop":
        round_1 = json.loads(server.expect("ROUND", timeout_s=30, watch=[*healthy, again]))
    gate.touch()
    result = _finished_run(server, out, timeout_s=60, clients=[*healthy, again])

    rounds = _rounds(result)
    assert round_1 == rounds[1]
    assert (rounds[1]["num_results"], list(rounds[1]["failures"])) == (2, ["c2"])
    assert reason in rounds[1]["failures"]["c2"]
    assert (rounds[2]["num_results"], rounds[2]["failures"]) == (round_2_results, {})
    assert (rounds[3]["num_results"], rounds[3]["failures"]) == (3, {})
    assert result["weights"] == {"x": [3.0, 3.0, 3.0]}
    for client in [*healthy, again]:
        assert client.finish(timeout_s=30) == 0, client.tail()


def test_grpc_client_with_wrong_token_is_refused(spawn: Spawn, tmp_path: Path) -> None:
    """A client with an unknown token, and one with another client's, exit with the reason."""
    certs = make_dev_certs(tmp_path / "certs")
    tokens = {"c0": generate_token(), "c1": generate_token()}
    (tmp_path / "tokens.json").write_text(json.dumps(tokens))
    out = tmp_path / "result.json"
    server, address = _server(
        spawn,
        out,
        *("--task", "toy", "--rounds", "3", "--min-clients", "2", "--min-fit", "2"),
        *("--certs", str(tmp_path / "certs"), "--tokens", str(tmp_path / "tokens.json")),
    )
    tls = ("--task", "toy", "--ca", str(certs.ca))
    # "--token=..." because a token may start with "-", which argparse would take for an option.
    unknown = _client(spawn, "c2", address, *tls, f"--token={generate_token()}")
    borrowed = _client(spawn, "c3", address, *tls, f"--token={tokens['c0']}")
    # The refused clients finish before the good ones start: a 3-round toy run is over
    # in a second, and a refused client that only reached the port after the server
    # had stopped would be retrying a closed port instead of hearing the refusal.
    assert unknown.finish(timeout_s=60) == 2, unknown.tail()
    assert "REFUSED: the server at" in unknown.stderr()
    assert "refused client 'c2': invalid token" in unknown.stderr()
    assert borrowed.finish(timeout_s=60) == 2, borrowed.tail()
    assert "refused client 'c3': this token does not belong to client 'c3'" in borrowed.stderr()
    good = [_client(spawn, name, address, *tls, f"--token={tokens[name]}") for name in tokens]

    result = _finished_run(server, out, timeout_s=60, clients=good)

    rounds = _rounds(result)
    assert result["stop_reason"] == "completed 3 rounds"
    assert [(rounds[r]["num_results"], rounds[r]["failures"]) for r in (1, 2, 3)] == [(2, {})] * 3
    assert result["weights"] == {"x": [3.0, 3.0, 3.0]}
    for client in good:
        assert client.finish(timeout_s=30) == 0, client.tail()


@pytest.mark.timeout(600)
def test_grpc_one_gib_model_crosses_both_ways_intact(spawn: Spawn, tmp_path: Path) -> None:
    """2**28 float32 values (1 GiB) go to a client and come back + 1, bit for bit."""
    common = _load_common()
    size = 2**28
    out, received = tmp_path / "result.json", tmp_path / "received.json"
    server, address = _server(
        spawn,
        out,
        *("--task", "big", "--size", str(size), "--rounds", "1", "--min-clients", "1"),
        *("--heartbeat-s", "2", "--fit-timeout-s", "500"),
    )
    client = _client(
        spawn, "big", address, "--task", "big", "--size", str(size), "--out", str(received)
    )
    started = float(server.expect("STARTED 1", timeout_s=120, watch=[client]))

    result = _finished_run(server, out, timeout_s=500, clients=[client])

    report = json.loads(received.read_text())
    assert report["size"] == size
    assert report["received"] == report["expected"] == common.pattern_sha256(size)
    rounds = _rounds(result)
    assert (rounds[1]["num_results"], rounds[1]["failures"]) == (1, {})
    # FedAvg of one client moves the weights to its result: the pattern + 1.
    assert result["weights_sha256"] == common.pattern_sha256(size, offset=1.0)
    assert client.finish(timeout_s=60) == 0, client.tail()
    rounds_s = rounds[1]["duration_s"]
    to_client, fit_s = report["fit_started"] - started, report["fit_ended"] - report["fit_started"]
    print(
        f"\n1 GiB round: {rounds_s:.1f} s = to client and decoded {to_client:.1f} s + fit "
        f"{fit_s:.1f} s + back and folded {rounds_s - to_client - fit_s:.1f} s; peak RSS "
        f"server {result['max_rss_mib']:.0f} MiB; client {client.expect('FINISHED', timeout_s=5)}"
    )
