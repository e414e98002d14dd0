"""``fedloom simulate``: a toy federation from a TOML file, run in-process and as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedloom.cli.main import main
from fedloom.transport.codec import load_weights

MODULE = "cli_toy_task"

# Three clients pull one weight x toward their targets 1, 2 and 3 (one example each).
# A fit moves x halfway to the target, so FedAvg's mean gives x <- x + (2 - x) / 2,
# and from x = 0: x_n = 2 * (1 - 0.5**n). The central loss is |x_n - 2| = 2 * 0.5**n.
TASK = """
from fedloom.client import FunctionClient

TARGETS = (1.0, 2.0, 3.0)


def client_fn(context):
    target = TARGETS[context.partition_id]

    def fit(weights, config):
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {}

    def evaluate(weights, config):
        return float((weights["x"][0] - target) ** 2), 1, {}

    return FunctionClient(weights={"x": [0.0]}, fit=fit, evaluate=evaluate)


def broken_client_fn(context):
    raise RuntimeError("this client cannot be built")


def evaluate(weights, server_round):
    return {"loss": abs(float(weights["x"][0]) - 2.0)}


def initial_weights():
    return {"x": [0.0]}
"""

CONFIG = f"""
[run]
rounds = 5
name = "toy"

[clients]
app = "{MODULE}:client_fn"
num_clients = 3
evaluate = "{MODULE}:evaluate"

[strategy]
name = "fedavg"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The toy config next to its task module; sys.path and the module cache are restored."""
    (tmp_path / f"{MODULE}.py").write_text(TASK)
    path = tmp_path / "toy.toml"
    path.write_text(CONFIG)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield path
    sys.modules.pop(MODULE, None)


def simulate(config: Path, *options: str) -> int:
    runs = config.parent / "runs"
    return main(["simulate", str(config), "--run-dir", str(runs), "--no-progress", *options])


def test_simulate_writes_history_config_and_final_weights(config: Path) -> None:
    folder = config.parent / "runs" / "toy"

    status = simulate(config)

    assert status == 0
    history = json.loads((folder / "history.json").read_text())
    assert [record["server_round"] for record in history["rounds"]] == [0, 1, 2, 3, 4, 5]
    losses = [record["metrics"]["central.loss"] for record in history["rounds"]]
    assert losses == pytest.approx([2.0, 1.0, 0.5, 0.25, 0.125, 0.0625])
    assert history["stop_reason"] == "completed 5 rounds"
    weights = load_weights(folder / "weights.safetensors")
    np.testing.assert_allclose(weights["x"], [2 * (1 - 0.5**5)])  # 1.9375
    recorded = json.loads((folder / "config.json").read_text())
    assert recorded["config"]["run"]["rounds"] == 5
    assert recorded["resolved"]["strategy"]["sampler"]["name"] == "All"


def test_simulate_prints_final_metrics_stop_reason_and_folder(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulate(config)

    out = capsys.readouterr().out
    assert "final (round 5): central.loss=0.0625" in out
    assert "stopped: completed 5 rounds" in out
    assert f"run folder: {config.parent / 'runs' / 'toy'}" in out


def test_simulate_rounds_option_overrides_config(config: Path) -> None:
    status = simulate(config, "--rounds", "2")

    history = json.loads((config.parent / "runs" / "toy" / "history.json").read_text())
    assert status == 0
    assert len(history["rounds"]) == 3  # rounds 0, 1, 2


def test_simulate_stop_rules_and_keep_best(config: Path) -> None:
    """Loss 2 * 0.5**n first reaches <= 0.2 at n = 4 (0.125); the best round is the last."""
    config.write_text(
        CONFIG + '[stop]\ntarget_metric = "central.loss"\ntarget_value = 0.2\n'
        'keep_best = "central.loss"\nmode = "min"\n'
    )
    folder = config.parent / "runs" / "toy"

    status = simulate(config)

    history = json.loads((folder / "history.json").read_text())
    assert status == 0
    assert history["rounds"][-1]["server_round"] == 4
    assert history["stop_reason"].startswith("central.loss = 0.125 reached target 0.2")
    np.testing.assert_allclose(load_weights(folder / "best.safetensors")["x"], [1.875])


def test_simulate_progress_prints_one_line_per_round(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["simulate", str(config), "--run-dir", str(config.parent / "runs")])

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
    assert lines[0] == "round 0/5  central.loss=2.0000"  # the initial weights, x = 0
    assert lines[1] == "round 1/5  central.loss=1.0000  evaluate.loss=1.6667"  # (1 + 0 + 1) / 3
    assert len(lines) == 6


def test_simulate_invalid_config_exits_2_and_creates_nothing(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(CONFIG.replace('"fedavg"', '"fedavgg"'))

    status = simulate(config)

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"error: [strategy].name in {config}: unknown strategy 'fedavgg'")
    assert "Traceback" not in err
    assert not (config.parent / "runs").exists()


def test_simulate_run_without_enough_results_exits_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = f'app = "{MODULE}:broken_client_fn"\ninitial_weights = "{MODULE}:initial_weights"'
    config.write_text(CONFIG.replace(f'app = "{MODULE}:client_fn"', broken))

    status = simulate(config)

    err = capsys.readouterr().err
    assert status == 1
    assert "error: a round needs at least 1 result, got 0" in err
    assert "this client cannot be built" in err


def test_main_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--version"])

    assert status == 0
    assert capsys.readouterr().out.startswith("fedloom ")


def test_simulate_console_command_prints_rounds(config: Path) -> None:
    """The real command, in a subprocess whose output is a pipe (no terminal)."""
    command = [sys.executable, "-m", "fedloom.cli.main", "simulate", str(config)]

    done = subprocess.run(
        [*command, "--run-dir", str(config.parent / "runs")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "round 1/5  central.loss=1.0000" in done.stdout
    assert "round 5/5  central.loss=0.0625" in done.stdout
    assert done.stderr == ""


def test_simulate_engine_flags_run_the_process_pool_to_the_same_weights(config: Path) -> None:
    status = simulate(config, "--engine", "process", "--workers", "2", "--device", "cpu")

    assert status == 0
    weights = load_weights(config.parent / "runs" / "toy" / "weights.safetensors")
    np.testing.assert_allclose(weights["x"], [2 * (1 - 0.5**5)])  # as sequentially: 1.9375


def test_simulate_unknown_engine_flag_exits_2_and_suggests_a_name(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = simulate(config, "--engine", "proces")

    assert status == 2
    err = capsys.readouterr().err
    assert "--engine: unknown simulation engine 'proces'" in err
    assert "Did you mean 'process'?" in err
    assert not (config.parent / "runs" / "toy").exists()


def test_simulate_fleet_in_the_config_drops_stragglers_past_the_deadline(config: Path) -> None:
    """Every task takes 3 virtual s and the deadline is 2 s: no round gets a result."""
    config.write_text(CONFIG + "[simulation]\ntask_s = 3.0\nfit_timeout_s = 2.0\n")

    status = simulate(config)

    assert status == 1
