"""``[topology.addresses]`` for gossip peers and ``fedloom peer``'s refusals of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.cli.main import main
from fedloom.config import load_config
from fedloom.errors import ConfigError

TASK = """
from fedloom.client import FunctionClient


def client_fn(context):
    return FunctionClient(weights={"x": [float(context.partition_id)]},
                          fit=lambda w, config: (w, 1, {}))
"""

HEAD = """
[run]
rounds = 2

[clients]
app = "gossip_peer_toy:client_fn"

[strategy]
name = "fedavg"
"""

RING = """
[topology]
kind = "gossip"
nodes = ["n0", "n1", "n2"]
edges = [["n0", "n1"], ["n1", "n2"], ["n2", "n0"]]
"""

ADDRESSES = """
[topology.addresses]
n0 = "127.0.0.1:9000"
n1 = "127.0.0.1:9001"
n2 = "127.0.0.1:9002"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "gossip_peer_toy.py").write_text(TASK)
    path = tmp_path / "peers.toml"
    path.write_text(HEAD + text)
    return path


def test_addresses_load_for_every_node(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, RING + ADDRESSES), role="client")

    assert config.addresses == {f"n{i}": f"127.0.0.1:{9000 + i}" for i in range(3)}
    assert config.topology is not None
    assert config.topology.kind == "gossip"
    assert config.to_dict()["topology"]["addresses"]["n2"] == "127.0.0.1:9002"
    assert load_config(write(tmp_path, RING), role="client").addresses is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (RING + ADDRESSES + 'n7 = "127.0.0.1:9007"\n', ["unknown node(s) n7", "n0, n1, n2"]),
        (RING + ADDRESSES.replace('n1 = "127.0.0.1:9001"\n', ""), ["no address", "n1"]),
        (RING + ADDRESSES.replace('"127.0.0.1:9002"', '"localhost"'), ["addresses].n2", "port"]),
        (
            RING.replace('"gossip"', '"star"')
            .replace('nodes = ["n0", "n1", "n2"]', 'roots = ["n0"]\nnodes = ["n0", "n1", "n2"]')
            .replace(', ["n2", "n0"]', "")
            .replace('["n1", "n2"]', '["n0", "n2"]')
            + ADDRESSES,
            ["[topology.addresses]", "gossip", "'star'"],
        ),
    ],
    ids=["unknown-node", "missing-address", "bad-address", "not-gossip"],
)
def test_bad_addresses_are_refused_at_load_naming_them(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), role="client")

    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (RING + ADDRESSES, ["--name", "n9", "--insecure"], "--name 'n9' is not a node"),
        (RING, ["--name", "n0", "--insecure"], "needs every node's address"),
        ("", ["--name", "n0", "--insecure"], 'needs a [topology] with kind = "gossip"'),
        (RING + ADDRESSES, ["--name", "n0"], "needs TLS"),
        (RING + ADDRESSES, ["--name", "n0", "--insecure", "--ca", "ca.pem"], "--ca was given"),
    ],
    ids=["unknown-name", "no-addresses", "no-topology", "no-tls", "insecure-and-ca"],
)
def test_fedloom_peer_refuses_bad_input_with_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    args: list[str],
    message: str,
) -> None:
    path = write(tmp_path, text)

    assert main(["peer", str(path), *args]) == 2
    assert message in capsys.readouterr().err
