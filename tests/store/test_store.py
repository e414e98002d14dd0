"""The store behind `open_store`, against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from fedloom.core import Weights
from fedloom.errors import ConfigError, CorruptState, StoreError, StoreUnreachable
from fedloom.store import (
    ClientInfo,
    ClientResultInfo,
    RoundInfo,
    RoundWrite,
    Store,
    mask_url,
    open_store,
)
from fedloom.store.checkpoints import write_model


def _round(
    store: Store, folder: Path, server_round: int, *, loss: float, clients: tuple[str, ...] = ()
) -> Weights:
    weights = Weights({"w": np.full(3, float(server_round)), "b": [loss]})
    model = write_model(folder, server_round, weights)
    results = tuple(
        ClientResultInfo(
            server_round=server_round,
            client_id=name,
            kind="fit",
            metrics={"loss": loss + i},
            num_examples=10 + i,
            duration_s=0.5,
            failure="timed out" if name == "late" else None,
            staleness=None,
        )
        for i, name in enumerate(clients)
    )
    seen = tuple(
        ClientInfo(
            client_id=name,
            metadata={"site": name},
            first_seen=100.0 + server_round,
            last_seen=100.0 + server_round,
        )
        for name in clients
    )
    info = RoundInfo(
        server_round=server_round,
        started_at=10.0 * server_round,
        ended_at=10.0 * server_round + 4,
        outcome="completed" if server_round else "initial",
        metrics={"central.loss": loss},
        num_results=len(clients),
        num_failures=sum(name == "late" for name in clients),
    )
    store.record_round("r1", RoundWrite(round=info, model=model, results=results, clients=seen))
    return weights


@pytest.fixture
def run(store: Store, tmp_path: Path) -> dict[int, Weights]:
    """Run "r1" with rounds 0..2 (central.loss 3, 1, 2) and clients a, b, late."""
    store.create_run(
        run_id="r1",
        name="first",
        config={"strategy": {"name": "fedavg"}},
        seed=7,
        code_version="fedloom test",
        folder=str(tmp_path),
    )
    return {
        0: _round(store, tmp_path, 0, loss=3.0),
        1: _round(store, tmp_path, 1, loss=1.0, clients=("a", "b")),
        2: _round(store, tmp_path, 2, loss=2.0, clients=("a", "late")),
    }


def test_store_reads_back_what_a_run_recorded(store: Store, run: dict[int, Weights]) -> None:
    info = store.get_run("r1")
    rounds = store.rounds("r1")
    results = store.client_results("r1", 2)

    assert (info.name, info.status, info.seed, info.rounds_done) == ("first", "running", 7, 2)
    assert info.config == {"strategy": {"name": "fedavg"}}
    assert [r.server_round for r in rounds] == [0, 1, 2]
    assert rounds[1].metrics == {"central.loss": 1.0}
    assert (rounds[2].started_at, rounds[2].ended_at, rounds[2].num_failures) == (20.0, 24.0, 1)
    assert [(r.client_id, r.num_examples, r.failure) for r in results] == [
        ("a", 10, None),
        ("late", 11, "timed out"),
    ]
    assert len(store.client_results("r1")) == 4
    assert [v.server_round for v in store.model_versions("r1")] == [0, 1, 2]
    assert [r.run_id for r in store.list_runs()] == ["r1"]


def test_store_keeps_a_clients_first_sighting_and_updates_the_last(
    store: Store, run: dict[int, Weights]
) -> None:
    clients = {c.client_id: c for c in store.clients("r1")}

    assert (clients["a"].first_seen, clients["a"].last_seen) == (101.0, 102.0)
    assert clients["late"].metadata == {"site": "late"}


def test_store_loads_weights_by_round_last_and_best(store: Store, run: dict[int, Weights]) -> None:
    # central.loss is 3, 1, 2 for rounds 0, 1, 2: the best (lowest) is round 1
    assert store.load_weights("r1", 0).equals(run[0])
    assert store.load_weights("r1", "last").equals(run[2])
    assert store.load_weights("r1", "best").equals(run[1])
    with pytest.raises(ConfigError, match=r"no weights for round 9; recorded rounds: \[0, 1, 2\]"):
        store.load_weights("r1", 9)


def test_store_unknown_run_names_the_known_runs(store: Store, run: dict[int, Weights]) -> None:
    with pytest.raises(ConfigError, match=r"no run 'r2' in the store .*its runs: 'r1'"):
        store.get_run("r2")


def test_store_refuses_a_round_twice_and_a_run_twice(
    store: Store, run: dict[int, Weights], tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match="round 2 of run 'r1' is recorded already"):
        _round(store, tmp_path, 2, loss=0.5)
    with pytest.raises(ConfigError, match="run 'r1' exists already"):
        store.create_run(run_id="r1", name="x", config={}, seed=0, code_version="", folder="")

    assert store.rounds("r1")[2].metrics == {"central.loss": 2.0}


def test_store_records_a_round_whole_or_not_at_all(
    store: Store, run: dict[int, Weights], tmp_path: Path
) -> None:
    """A transaction that fails halfway (its model version clashes) leaves no trace."""
    model = write_model(tmp_path, 1, Weights({"w": [0.0]}))  # round 1's version exists already
    info = RoundInfo(
        server_round=3,
        started_at=0.0,
        ended_at=1.0,
        outcome="completed",
        metrics={},
        num_results=0,
        num_failures=0,
    )

    with pytest.raises(StoreError):
        store.record_round("r1", RoundWrite(round=info, model=model))

    assert [r.server_round for r in store.rounds("r1")] == [0, 1, 2]
    assert store.get_run("r1").rounds_done == 2


def test_store_records_status_config_changes_and_events(
    store: Store, run: dict[int, Weights]
) -> None:
    store.set_status("r1", "interrupted")
    store.update_config("r1", {"server": {"fit_timeout_s": 5}})
    store.add_event("r1", "resumed", {"after_round": 2})

    assert store.get_run("r1").status == "interrupted"
    assert store.get_run("r1").config == {"server": {"fit_timeout_s": 5}}
    assert [(e.kind, e.detail) for e in store.events("r1")] == [("resumed", {"after_round": 2})]
    with pytest.raises(ConfigError, match="status must be one of"):
        store.set_status("r1", "paused")  # type: ignore[arg-type]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_store_detects_a_damaged_checkpoint(
    store: Store, run: dict[int, Weights], damage: str
) -> None:
    path = Path(store.model_versions("r1")[1].path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()

    with pytest.raises(CorruptState, match="checkpoint of round 1") as caught:
        store.load_weights("r1", 1)

    assert caught.value.path == str(path)


def test_store_persists_across_reopening(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as first:
        first.create_run(run_id="r1", name="r1", config={}, seed=0, code_version="", folder="")
        first.set_status("r1", "finished")

    with open_store(store_url) as second:
        assert second.get_run("r1").status == "finished"


def test_sqlite_store_refuses_a_damaged_database(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with open_store(path) as store:
        store.create_run(run_id="r1", name="r1", config={}, seed=0, code_version="", folder="")
    data = bytearray(path.read_bytes())
    data[:16] = b"not a database!!"  # the SQLite header
    path.write_bytes(bytes(data))

    with pytest.raises(CorruptState, match="is not a readable SQLite database"):
        open_store(path)


def test_sqlite_store_refuses_a_database_with_damaged_pages(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with open_store(path) as store:
        for index in range(200):
            store.create_run(
                run_id=f"r{index}",
                name="x" * 200,
                config={"k": "v" * 200},
                seed=0,
                code_version="",
                folder="",
            )
    data = bytearray(path.read_bytes())
    for offset in range(4096 + 100, len(data), 4096):  # scribble on every page but the first
        data[offset : offset + 64] = bytes(range(64))
    path.write_bytes(bytes(data))

    with pytest.raises(CorruptState), open_store(path) as store:
        store.list_runs()


def test_postgres_store_unreachable_names_the_url_with_the_password_masked() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://alice:s3cret@127.0.0.1:{port}/runs"

    with pytest.raises(StoreUnreachable) as caught:
        open_store(url)

    message = str(caught.value)
    assert f"postgresql://alice:***@127.0.0.1:{port}/runs" in message
    assert "s3cret" not in message
    assert caught.value.__cause__ is None  # the driver's error (which may hold the URL) is dropped


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("postgresql://u:pw@h:5432/db?sslmode=require") == (
        "postgresql://u:***@h:5432/db?sslmode=require"
    )
    assert mask_url("postgresql://h/db") == "postgresql://h/db"
    assert mask_url("/tmp/store.db") == "/tmp/store.db"


def test_open_store_refuses_an_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match="scheme 'mysql'; use a file path"):
        open_store("mysql://u:pw@h/db")


def test_open_store_reads_sqlite_urls(tmp_path: Path) -> None:
    absolute = tmp_path / "a.db"

    with open_store(f"sqlite:///{absolute}") as store:
        store.list_runs()

    assert absolute.is_file()
