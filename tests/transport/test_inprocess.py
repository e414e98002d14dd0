"""The in-process channel: async tasks batched for the executor when needed; named clients."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from fedloom import ClientContext
from fedloom.client import FunctionClient
from fedloom.core import Reply
from fedloom.core.dispatch import ClientState
from fedloom.errors import ConfigError
from fedloom.server import Orchestrator
from fedloom.strategies import fedbuff
from fedloom.transport.inprocess import ClientIds, InProcessChannel, Job, LocalExecutor


def _client_fn(context: ClientContext) -> FunctionClient:
    target = float(context.partition_id)
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: ({"x": [target]}, 1, {}))


class _Recording:
    """A LocalExecutor that records the size of every batch it is handed."""

    def __init__(self) -> None:
        self.inner = LocalExecutor(_client_fn)
        self.batches: list[int] = []

    def execute(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply, ClientState]]:
        self.batches.append(len(jobs))
        return self.inner.execute(jobs)

    def close(self) -> None:
        self.inner.close()


def test_inprocess_channel_runs_filed_async_tasks_together_when_needed() -> None:
    """FedBuff tops up one client at a time; the channel still hands the pool several at once."""
    executor = _Recording()
    channel = InProcessChannel(_client_fn, num_clients=6, executor=executor)
    strategy = fedbuff(buffer_size=2, concurrency=4)

    Orchestrator(channel, strategy, rounds=6).run({"x": [0.0]})

    assert executor.batches[0] == 4  # the first wave
    assert max(executor.batches[1:]) >= 2  # later top-ups run side by side
    # the 6 x 2 results aggregated all ran; tasks still in flight at the end need not
    assert sum(executor.batches) >= 6 * 2


def test_client_ids_are_computed_not_stored() -> None:
    ids = ClientIds(1_000_000)

    assert (len(ids), ids[0], ids[-1], ids.index("123456")) == (1_000_000, "0", "999999", 123456)
    assert "1000000" not in ids
    assert "007" not in ids  # only the canonical spelling names a client
    assert list(ids[2:5]) == ["2", "3", "4"]


def _named_client_fn(context: ClientContext) -> FunctionClient:
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: (w, 1, {}))


def test_inprocess_channel_client_ids_name_clients_and_their_partitions() -> None:
    channel = InProcessChannel(_named_client_fn, num_clients=3, client_ids=["a", "b", "c"])

    context = channel.context("c")

    assert channel.clients() == ("a", "b", "c")
    assert (context.partition_id, context.num_partitions) == (2, 3)


@pytest.mark.parametrize("client_ids", [["a", "b"], ["a", "a", "b"]], ids=["count", "repeat"])
def test_inprocess_channel_refuses_client_ids_that_do_not_match(client_ids: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"client_ids must name 3 distinct clients"):
        InProcessChannel(_named_client_fn, num_clients=3, client_ids=client_ids)
