"""``[strategy.secure_aggregation]`` in a TOML config turns SecAgg+ on."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.secagg import SecAggPlus

MODULE = "secagg_toy_task"
TASK = """
from fedloom.client import FunctionClient


def client_fn(context):
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: (w, 1, {}))
"""
BASE = f"""
[run]
rounds = 2

[clients]
app = "{MODULE}:client_fn"
num_clients = 4

[strategy]
name = "fedavg"
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / f"{MODULE}.py").write_text(TASK)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop(MODULE, None)


def _load(folder: Path, extra: str) -> tuple[Path, object]:
    path = folder / "fedloom.toml"
    path.write_text(BASE + extra)
    return path, load_config(path).build().strategy


def test_toml_secure_aggregation_table_builds_secaggplus(folder: Path) -> None:
    _, strategy = _load(
        folder,
        "\n[strategy.secure_aggregation]\nreconstruction_threshold = 0.75\nquantization_bits = 20\n",
    )

    assert strategy.secure_aggregation == SecAggPlus(  # type: ignore[attr-defined]
        reconstruction_threshold=0.75, quantization_bits=20
    )


def test_toml_secure_aggregation_with_median_names_the_table_and_the_reason(folder: Path) -> None:
    extra = '\n[strategy.aggregator]\nname = "median"\n\n[strategy.secure_aggregation]\n'

    with pytest.raises(
        ConfigError, match="Median aggregator takes the coordinate-wise median"
    ) as caught:
        _load(folder, extra)

    assert str(caught.value).startswith(
        f"[strategy.secure_aggregation] in {folder / 'fedloom.toml'}"
    )


def test_toml_secure_aggregation_rejects_unknown_and_bad_keys(folder: Path) -> None:
    path = folder / "fedloom.toml"

    with pytest.raises(ConfigError, match=re.escape("[strategy.secure_aggregation]")):
        _load(folder, "\n[strategy.secure_aggregation]\nthreshold = 3\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"[strategy.secure_aggregation].timeout_s in {path}")
    ):
        _load(folder, "\n[strategy.secure_aggregation]\ntimeout_s = -1.0\n")
