"""The server's limits and quotas from ``[server]``, and the bounds on reading config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.transport.grpc.security import load_tokens

BASE = '[run]\nrounds = 1\n[strategy]\nname = "fedavg"\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedloom.toml"
    path.write_text(text)
    return path


def test_server_section_sets_message_limit_and_quotas(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE + "[server]\nmax_message_bytes = 5000\nupload_quota_bytes = 1000\n"
        "joins_per_client = 3\nquota_window_s = 30\n",
    )

    server = load_config(path, role="server").server

    assert server is not None
    assert (server.max_message_bytes, server.upload_quota_bytes) == (5000, 1000)
    assert (server.joins_per_client, server.quota_window_s) == (3, 30.0)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("upload_quota_bytes = 0", r"\[server\]\.upload_quota_bytes .*must be >= 1, got 0"),
        ("joins_per_client = 1.5", r"\[server\]\.joins_per_client .*expected an integer"),
        ("quota_window_s = -1", "quota_window_s must be a number of seconds > 0"),
        ('max_message_bytes = "4GiB"', r"\[server\]\.max_message_bytes .*expected an integer"),
    ],
)
def test_server_section_rejects_impossible_limits(tmp_path: Path, line: str, match: str) -> None:
    path = _write(tmp_path, BASE + f"[server]\n{line}\n")

    with pytest.raises(ConfigError, match=match):
        load_config(path, role="server")


def test_config_over_one_mib_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "#" * (1 << 20))

    with pytest.raises(ConfigError, match=r"the config file is over 1048576 bytes"):
        load_config(path, role="server")


def test_long_dotted_keys_are_refused_but_short_ones_and_dotted_strings_pass(
    tmp_path: Path,
) -> None:
    deep = "a." * 40 + "b = 1\n"
    fine = BASE + '[strategy.config]\nnote = "' + "x." * 100 + '"\n'

    with pytest.raises(ConfigError, match="a dotted key of 41 parts; fedloom reads at most 32"):
        load_config(_write(tmp_path, BASE + deep), role="server")
    config = load_config(_write(tmp_path, fine), role="server")

    assert config.strategy.config["note"] == "x." * 100


def test_tokens_file_with_a_nesting_bomb_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("[" * 100_000 + "]" * 100_000)

    with pytest.raises(ConfigError, match=r"tokens file .*tokens\.json does not parse as JSON"):
        load_tokens(path)
