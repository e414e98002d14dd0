"""The TOML tables [strategy.privacy] (central DP) and [strategy.local_dp] (DP-SGD)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.privacy import AdaptiveClip, FixedClip

BASE = """
[run]
rounds = 7

[clients]
initial_weights = "dp_toy:initial_weights"

[strategy]
name = "fedavg"
"""


def _config(tmp_path: Path, tables: str) -> Path:
    (tmp_path / "dp_toy.py").write_text("def initial_weights():\n    return {'x': [0.0]}\n")
    path = tmp_path / "dp.toml"
    path.write_text(BASE + tables)
    return path


def test_config_privacy_table_builds_central_dp(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """
[strategy.privacy]
noise_multiplier = 1.1
clip_norm = 0.5
target_quantile = 0.6
calibration = "actual"
""",
    )

    strategy = load_config(path, role="server").build_server().strategy

    assert strategy.privacy is not None
    assert strategy.privacy.noise_multiplier == 1.1
    assert strategy.privacy.calibration == "actual"
    assert strategy.privacy.clip == AdaptiveClip(initial_norm=0.5, target_quantile=0.6)


def test_config_local_dp_table_adds_the_plugin_with_the_runs_rounds(tmp_path: Path) -> None:
    path = _config(tmp_path, "\n[strategy.local_dp]\nepsilon = 4.0\nclip_norm = 2.0\n")

    strategy = load_config(path, role="server").build_server().strategy

    (plugin,) = strategy.plugins
    assert (plugin.name, plugin.epsilon, plugin.clip_norm, plugin.rounds) == (  # type: ignore[attr-defined]
        "dpsgd",
        4.0,
        2.0,
        7,  # [run].rounds
    )


def test_config_fixed_clip_without_target_quantile(tmp_path: Path) -> None:
    path = _config(tmp_path, "\n[strategy.privacy]\nnoise_multiplier = 1.0\nclip_norm = 3.0\n")

    strategy = load_config(path, role="server").build_server().strategy

    assert strategy.privacy is not None
    assert strategy.privacy.clip == FixedClip(clip_norm=3.0)


@pytest.mark.parametrize(
    ("tables", "key", "phrase"),
    [
        (
            "[strategy.privacy]\nnoise_multiplier = 1.0\nclip_norm = -1.0",
            r"\[strategy.privacy\].clip_norm",
            "must be a finite number > 0",
        ),
        (
            "[strategy.privacy]\nnoise_multiplier = -2.0\nclip_norm = 1.0",
            r"\[strategy.privacy\].noise_multiplier",
            "must be a finite number > 0",
        ),
        (
            "[strategy.privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1.0",
            r"\[strategy.privacy\].delta",
            r"in \(0, 1\)",
        ),
        (
            "[strategy.privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ntarget_quantile = 1.5",
            r"\[strategy.privacy\].target_quantile",
            r"in \(0, 1\)",
        ),
        (
            "[strategy.privacy]\nnoise_multipler = 1.0\nclip_norm = 1.0",
            r"\[strategy.privacy\].noise_multipler",
            "Did you mean 'noise_multiplier'",
        ),
        (
            "[strategy.local_dp]\nepsilon = -1.0",
            r"\[strategy.local_dp\].epsilon",
            "must be a finite number > 0",
        ),
        (
            "[strategy.local_dp]\nepsilon = 8.0\ndelta = 2.0",
            r"\[strategy.local_dp\].delta",
            r"in \(0, 1\)",
        ),
        (
            '[strategy.aggregator]\nname = "median"\n[strategy.privacy]\n'
            "noise_multiplier = 1.0\nclip_norm = 1.0",
            r"\[strategy.privacy\]",
            "cannot use the Median aggregator",
        ),
    ],
)
def test_config_bad_dp_settings_name_the_toml_key(
    tmp_path: Path, tables: str, key: str, phrase: str
) -> None:
    path = _config(tmp_path, "\n" + tables + "\n")

    with pytest.raises(ConfigError, match=f"^{key} in .*{phrase}"):
        load_config(path, role="server")
