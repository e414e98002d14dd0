"""``fedloom relay``: its security options are checked before it listens (exit 2, with the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.cli.main import main

UPSTREAM = ("relay", "--upstream", "127.0.0.1:1", "--name", "relay-a", "--address", "127.0.0.1:0")


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    assert main(["certs", str(folder), "--client", "relay-a"]) == 0
    return folder


def test_relay_without_tls_or_insecure_exits_2_and_says_how(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main([*UPSTREAM])

    assert status == 2
    assert "needs TLS: pass --certs DIR" in capsys.readouterr().err


def test_relay_needs_the_upstream_ca_unless_insecure(
    certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    downstream = ("--certs", str(certs), "--tokens", str(certs / "tokens.toml"))

    status = main([*UPSTREAM, *downstream])

    assert status == 2
    assert "needs the CA of the upstream server's certificate: pass --upstream-ca" in (
        capsys.readouterr().err
    )


def test_relay_upstream_token_file_must_list_the_relay(
    certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    downstream = ("--certs", str(certs), "--tokens", str(certs / "tokens.toml"))
    upstream = ("--upstream-ca", str(certs / "ca.pem"))
    other = ("--upstream-token-file", str(certs / "tokens.toml"), "--name", "relay-b")

    status = main([*UPSTREAM, *downstream, *upstream, *other])

    assert status == 2
    assert "has no token for relay 'relay-b'" in capsys.readouterr().err


def test_relay_insecure_with_upstream_tls_options_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status = main([*UPSTREAM, "--insecure", "--upstream-ca", str(tmp_path / "ca.pem")])

    assert status == 2
    assert "--insecure turns TLS off, but --upstream-ca" in capsys.readouterr().err
