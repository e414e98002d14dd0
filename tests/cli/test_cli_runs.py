"""``fedloom runs`` and ``fedloom dashboard``: reading recorded runs from the command line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedloom.cli.main import main
from fedloom.transport.codec import load_weights
from recorded_runs import make_runs_dir


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ "alpha": 3 rounds, round r's weights are [r, r], central.loss 2/(r+1); "beta": 1 round."""
    return make_runs_dir(tmp_path_factory.mktemp("cli-runs"))


def runs(runs_dir: Path, *argv: str) -> int:
    return main(["runs", "--store", str(runs_dir), *argv])


def test_runs_list_shows_every_run(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = runs(runs_dir, "list")

    out = capsys.readouterr().out
    assert status == 0
    assert "run-alpha" in out
    assert "finished" in out
    assert "run-beta" in out
    assert "running" in out


def test_runs_show_prints_rounds_clients_and_a_rounds_results(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = runs(runs_dir, "show", "alpha", "--round", "2")

    out = capsys.readouterr().out
    assert status == 0
    assert "central.loss" in out
    assert "0.6667" in out  # round 2's central.loss = 2/3
    assert "round 2: client results" in out
    assert "timed out" in out  # client b failed round 2


def test_runs_export_csv_has_one_row_per_round(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = runs(runs_dir, "export", "alpha")

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert status == 0
    assert [row["server_round"] for row in rows] == ["0", "1", "2", "3"]
    assert float(rows[3]["central.loss"]) == pytest.approx(0.5)  # 2 / (3 + 1)
    assert rows[0]["fit.loss"] == ""  # round 0 trained nothing
    assert float(rows[1]["duration_s"]) == pytest.approx(4.0)


def test_runs_export_client_results_csv(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = runs(runs_dir, "export", "run-alpha", "--clients")

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert status == 0
    assert len(rows) == 6  # 3 rounds x clients a and b
    failed = [row for row in rows if row["failure"]]
    assert [(row["server_round"], row["client_id"], row["failure"]) for row in failed] == [
        ("2", "b", "timed out")
    ]


def test_runs_export_json_to_a_file(runs_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "alpha.json"

    status = runs(runs_dir, "export", "alpha", "--format", "json", "-o", str(output))

    document = json.loads(output.read_text())
    assert status == 0
    assert document["run"]["run_id"] == "run-alpha"
    assert [r["server_round"] for r in document["rounds"]] == [0, 1, 2, 3]
    assert len(document["client_results"]) == 6
    assert [c["client_id"] for c in document["clients"]] == ["a", "b"]
    assert len(document["model_versions"]) == 4


@pytest.mark.parametrize(("which", "expected"), [("1", 1.0), ("last", 3.0), ("best", 3.0)])
def test_runs_weights_writes_a_rounds_weights_as_safetensors(
    runs_dir: Path, tmp_path: Path, which: str, expected: float
) -> None:
    """Round r's weights are [r, r]; the best round (lowest central.loss 2/(r+1)) is 3."""
    output = tmp_path / f"w-{which}.safetensors"

    status = runs(runs_dir, "weights", "alpha", "--round", which, "-o", str(output))

    assert status == 0
    np.testing.assert_array_equal(load_weights(output)["w"], [expected, expected])


def test_runs_weights_refuses_to_overwrite_without_force(runs_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "w.safetensors"
    output.write_bytes(b"keep me")

    refused = runs(runs_dir, "weights", "alpha", "-o", str(output))
    forced = runs(runs_dir, "weights", "alpha", "-o", str(output), "--force")

    assert refused == 2
    assert forced == 0
    assert load_weights(output)["w"].tolist() == [3.0, 3.0]


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["show", "alpah"], "no run 'alpah'"),
        (["export", "gamma"], "no run 'gamma'"),
        (["show", "alpha", "--round", "9"], "has no round 9; recorded rounds: 0..3"),
        (["weights", "alpha", "--round", "9", "-o", "x.safetensors"], "has no weights for round 9"),
    ],
)
def test_runs_unknown_run_or_round_is_a_clear_error(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], phrase: str
) -> None:
    status = runs(runs_dir, *argv)

    assert status == 2
    assert phrase in capsys.readouterr().err


def test_runs_bad_round_option_is_a_usage_error(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = runs(runs_dir, "weights", "alpha", "--round", "-1", "-o", "x.safetensors")

    assert status == 2
    assert "expected a round number >= 0, 'last' or 'best', got '-1'" in capsys.readouterr().err


def test_runs_missing_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["runs", "--store", str(tmp_path / "nowhere"), "list"])

    assert status == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_runs_reads_a_damaged_checkpoint_as_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_runs_dir(tmp_path)
    checkpoint = next((store / "alpha").rglob("*1.safetensors"))
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))

    status = runs(store, "weights", "alpha", "--round", "1", "-o", str(tmp_path / "w.safetensors"))

    assert status == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def test_dashboard_command_serves_the_api_and_refuses_public_addresses(runs_dir: Path) -> None:
    """The real command in a subprocess: it prints its URL and serves /api/runs."""
    command = [sys.executable, "-m", "fedloom.cli.main", "dashboard", "--store", str(runs_dir)]
    refused = subprocess.run(
        [*command, "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    process = subprocess.Popen(
        [*command, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded: the process exits on any error
        assert line.startswith("dashboard on http://127.0.0.1:"), process.stderr
        with urllib.request.urlopen(line.split()[-1] + "api/runs", timeout=10) as response:
            listed = json.loads(response.read())
    finally:
        process.terminate()
        process.communicate(timeout=10)

    assert refused.returncode == 2
    assert "not a loopback address, without credentials" in refused.stderr
    assert [run["run_id"] for run in listed] == ["run-alpha", "run-beta"]
