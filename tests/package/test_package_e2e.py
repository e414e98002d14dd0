"""A compute package end to end: a real server process hands it to three client processes over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedloom.package import build_package, generate_signing_key

PACKAGE_SOURCE = Path(__file__).resolve().parent / "quickstart_pkg"
FEDLOOM = [sys.executable, "-c", "import sys; from fedloom.cli.main import main; sys.exit(main())"]

pytestmark = pytest.mark.e2e


def write_client_data(folder: Path, clients: int) -> list[Path]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    paths = []
    for index, (xs, ys) in enumerate(
        zip(np.array_split(x_train, clients), np.array_split(y_train, clients), strict=True)
    ):
        path = folder / f"data{index}.npz"
        np.savez(path, x_train=xs, y_train=ys, x_test=x_test, y_test=y_test)
        paths.append(path)
    return paths


def start(args: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FEDLOOM, *args],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_port(server: subprocess.Popen[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    assert server.stdout is not None
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if line.startswith("listening on"):
            return int(line.rsplit(":", 1)[1])
        if not line and server.poll() is not None:
            break
    raise AssertionError("the server did not start listening")


def test_three_clients_train_the_quickstart_from_a_signed_package(tmp_path):
    key, public = generate_signing_key(tmp_path / "signer.pem")
    package = build_package(PACKAGE_SOURCE, tmp_path / "quickstart.tar.gz", signing_key=key)
    data = write_client_data(tmp_path, 3)
    (tmp_path / "data0.npz.crash").touch()  # client 0's first train segfaults
    config = tmp_path / "server.toml"
    config.write_text(
        '[run]\nrounds = 3\nseed = 0\n\n[strategy]\nname = "fedavg"\nmin_fit = 2\n\n'
        '[server]\naddress = "127.0.0.1:0"\nmin_clients = 3\njoin_timeout_s = 60\n'
        "fit_timeout_s = 120\nheartbeat_s = 1.0\n"
    )
    run_dir = tmp_path / "run"
    processes = []
    try:
        server = start(
            [
                *("server", str(config), "--insecure", "--no-progress"),
                *("--package", str(package.path), "--run-dir", str(run_dir)),
            ],
            tmp_path / "server.log",
        )
        processes.append(server)
        port = read_port(server, timeout_s=60)
        for index, path in enumerate(data):
            processes.append(
                start(
                    [
                        *("client", "--server", f"127.0.0.1:{port}", "--name", f"c{index}"),
                        *("--insecure", "--package-dir", str(tmp_path / f"work{index}")),
                        *("--trust", str(public), "--data", str(path)),
                        *("--package-sha256", package.sha256),
                    ],
                    tmp_path / f"client{index}.log",
                )
            )
        assert server.wait(timeout=240) == 0, (tmp_path / "server.log").read_text()[-3000:]
        for client in processes[1:]:
            assert client.wait(timeout=30) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    (history_file,) = run_dir.glob("*/history.json")
    history = json.loads(history_file.read_text())
    rounds = {record["server_round"]: record for record in history["rounds"]}
    assert set(rounds[1]["failures"]) == {"c0"}
    assert "SIGSEGV" in rounds[1]["failures"]["c0"]
    assert "crashing on purpose" in rounds[1]["failures"]["c0"]
    assert rounds[1]["num_results"] == 2
    for later in (2, 3):  # the crashed client took the next rounds
        assert rounds[later]["failures"] == {}
        assert rounds[later]["num_results"] == 3
    assert rounds[3]["metrics"]["evaluate.accuracy"] > 0.85
    # Each client unpacked the package inside its own folder, named after the digest.
    for index in range(3):
        unpacked = tmp_path / f"work{index}" / "unpacked" / package.sha256[:16]
        assert (unpacked / "entrypoint.py").is_file()
