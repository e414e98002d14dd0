"""InProcessChannel with named clients: names and partitions follow the given order."""

from __future__ import annotations

import pytest

from fedloom.client import FunctionClient
from fedloom.core import ClientContext
from fedloom.errors import ConfigError
from fedloom.transport.inprocess import InProcessChannel


def _client_fn(context: ClientContext) -> FunctionClient:
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: (w, 1, {}))


def test_inprocess_channel_client_ids_name_clients_and_their_partitions() -> None:
    channel = InProcessChannel(_client_fn, num_clients=3, client_ids=["a", "b", "c"])

    context = channel.context("c")

    assert channel.clients() == ("a", "b", "c")
    assert (context.partition_id, context.num_partitions) == (2, 3)


@pytest.mark.parametrize("client_ids", [["a", "b"], ["a", "a", "b"]], ids=["count", "repeat"])
def test_inprocess_channel_refuses_client_ids_that_do_not_match(client_ids: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"client_ids must name 3 distinct clients"):
        InProcessChannel(_client_fn, num_clients=3, client_ids=client_ids)
