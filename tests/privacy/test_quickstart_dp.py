"""The quickstart's DP configs under ``fedloom simulate``: they finish and print epsilon a round."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from fedloom.cli.main import main
from fedloom.config import load_config

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny models train fastest on one thread; sys.path and the task module are restored."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "task", raising=False)
    yield
    torch.set_num_threads(threads)
    sys.modules.pop("task", None)


def _simulate(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run 2 rounds of an example config; the lines it printed for rounds 1 and 2."""
    status = main(
        ["simulate", str(QUICKSTART / config), "--rounds", "2", "--run-dir", str(tmp_path)]
    )
    assert status == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out if line.startswith("round ")] == ["0/2", "1/2", "2/2"]
    return [line for line in out if line.startswith(("round 1/", "round 2/"))]  # 0: no fit


def test_quickstart_local_dp_epsilon_8_prints_epsilon_each_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _simulate("fedloom-local-dp.toml", tmp_path, capsys)

    spent = [float(re.search(r"privacy\.local_epsilon=(\S+)", line)[1]) for line in lines]  # type: ignore[index]
    assert len(spent) == 2
    assert 0 < spent[0] < spent[1] <= 8.0  # the whole budget is spent by the last planned round
    history = json.loads(next(tmp_path.glob("*/history.json")).read_text())
    fits = [r["metrics"] for r in history["rounds"] if r["server_round"] > 0]
    assert all(0 < m["fit.dpsgd.epsilon"] <= 8.0 for m in fits)
    assert all(r["failures"] == {} for r in history["rounds"])


def test_quickstart_central_dp_prints_epsilon_each_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _simulate("fedloom-central-dp.toml", tmp_path, capsys)

    spent = [float(re.search(r"privacy\.epsilon=(\S+)", line)[1]) for line in lines]  # type: ignore[index]
    assert len(spent) == 2
    assert 0 < spent[0] < spent[1]
    history = json.loads(next(tmp_path.glob("*/history.json")).read_text())
    assert [r["metrics"]["privacy.delta"] for r in history["rounds"][1:]] == [1e-5, 1e-5]


@pytest.mark.parametrize("config", ["fedloom-local-dp.toml", "fedloom-central-dp.toml"])
def test_quickstart_dp_configs_load(config: str) -> None:
    strategy = load_config(QUICKSTART / config).build().strategy

    assert (strategy.privacy is not None) == (config == "fedloom-central-dp.toml")
    assert any(p.name == "dpsgd" for p in strategy.plugins) == (config == "fedloom-local-dp.toml")
