"""The in-process channel: asynchronous tasks are batched for the executor when they are needed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedloom import ClientContext
from fedloom.client import FunctionClient
from fedloom.core import Reply
from fedloom.core.dispatch import ClientState
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
