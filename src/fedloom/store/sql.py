"""The SQL shared by the SQLite and PostgreSQL stores: one schema, one set of queries.

The statements use ``?`` placeholders and types both databases accept
(``TEXT``, ``BIGINT``, ``DOUBLE PRECISION``); a backend supplies a DB-API
connection, its placeholder, and how to tell a duplicate key from other errors.
JSON columns hold dicts as text.
"""

from __future__ import annotations

import json
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fedloom.errors import ConfigError, StoreError
from fedloom.store.base import (
    STATUSES,
    ClientInfo,
    ClientResultInfo,
    ModelVersion,
    RoundInfo,
    RoundWrite,
    RunEvent,
    RunInfo,
    RunStatus,
    Store,
)

__all__ = ["SCHEMA", "SqlStore"]

SCHEMA_VERSION = 1

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fedloom_schema (version BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        config TEXT NOT NULL,
        seed BIGINT NOT NULL,
        code_version TEXT NOT NULL,
        folder TEXT NOT NULL,
        rounds_done BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rounds (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        server_round BIGINT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        metrics TEXT NOT NULL,
        num_results BIGINT NOT NULL,
        num_failures BIGINT NOT NULL,
        state_path TEXT NOT NULL,
        state_sha256 TEXT NOT NULL,
        PRIMARY KEY (run_id, server_round)
    )""",
    """CREATE TABLE IF NOT EXISTS model_versions (
        run_id TEXT NOT NULL,
        server_round BIGINT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        num_bytes BIGINT NOT NULL,
        PRIMARY KEY (run_id, server_round),
        FOREIGN KEY (run_id, server_round) REFERENCES rounds (run_id, server_round)
    )""",
    """CREATE TABLE IF NOT EXISTS client_results (
        run_id TEXT NOT NULL,
        server_round BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        client_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        metrics TEXT NOT NULL,
        num_examples BIGINT NOT NULL,
        duration_s DOUBLE PRECISION NOT NULL,
        failure TEXT,
        staleness BIGINT,
        PRIMARY KEY (run_id, server_round, seq),
        FOREIGN KEY (run_id, server_round) REFERENCES rounds (run_id, server_round)
    )""",
    """CREATE TABLE IF NOT EXISTS clients (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        client_id TEXT NOT NULL,
        metadata TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, client_id)
    )""",
    """CREATE TABLE IF NOT EXISTS run_events (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    )""",
)

_RUN_COLUMNS = (
    "run_id, name, created_at, updated_at, status, config, seed, code_version, folder, rounds_done"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=False)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics as floats (NaN and infinities kept; bools and text dropped)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


class SqlStore(Store):
    """A `Store` over a DB-API connection; subclasses open it and name their dialect."""

    placeholder = "?"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._connection: Any = self._connect()
        try:
            with self._transaction() as cursor:
                for statement in SCHEMA:
                    cursor.execute(statement)
                cursor.execute(self._q("SELECT version FROM fedloom_schema"))
                row = cursor.fetchone()
                if row is None:
                    cursor.execute(
                        self._q("INSERT INTO fedloom_schema (version) VALUES (?)"),
                        (SCHEMA_VERSION,),
                    )
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(
                        f"store {url} has schema version {row[0]}; this fedloom reads version "
                        f"{SCHEMA_VERSION}. Use the fedloom that wrote it, or a new store."
                    )
        except BaseException:
            self._connection.close()
            raise

    # -- backend hooks -----------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A DB-API connection in manual-commit mode."""

    @abstractmethod
    def _is_duplicate(self, error: Exception) -> bool:
        """Whether `error` is a primary-key violation."""

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _begin(self, cursor: Any, *, write: bool) -> None:
        """Open a transaction on `cursor` if the driver does not do it by itself."""

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on any error."""
        with self._lock:
            cursor = self._connection.cursor()
            try:
                self._begin(cursor, write=write)
                yield cursor
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise
            finally:
                cursor.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._transaction(write=False) as cursor:
            cursor.execute(self._q(sql), tuple(params))
            return list(cursor.fetchall())

    # -- write side --------------------------------------------------------

    def create_run(
        self,
        *,
        run_id: str,
        name: str,
        config: dict[str, Any],
        seed: int,
        code_version: str,
        folder: str,
    ) -> RunInfo:
        now = time.time()
        try:
            with self._transaction() as cursor:
                cursor.execute(
                    self._q(
                        f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (
                        run_id,
                        name,
                        now,
                        now,
                        "running",
                        _dumps(config),
                        seed,
                        code_version,
                        folder,
                        0,
                    ),
                )
        except Exception as exc:
            if self._is_duplicate(exc):
                raise ConfigError(
                    f"run '{run_id}' exists already in the store {self.url}. Resume it "
                    "(--resume), or choose another run name.",
                    field="run_id",
                    value=run_id,
                ) from exc
            raise
        return self.get_run(run_id)

    def record_round(self, run_id: str, write: RoundWrite) -> None:
        info, model = write.round, write.model
        try:
            with self._transaction() as cursor:
                cursor.execute(
                    self._q(
                        "INSERT INTO rounds (run_id, server_round, started_at, ended_at, outcome, "
                        "metrics, num_results, num_failures, state_path, state_sha256) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (
                        run_id,
                        info.server_round,
                        info.started_at,
                        info.ended_at,
                        info.outcome,
                        _dumps(_numeric(info.metrics)),
                        info.num_results,
                        info.num_failures,
                        info.state_path,
                        info.state_sha256,
                    ),
                )
                cursor.execute(
                    self._q(
                        "INSERT INTO model_versions (run_id, server_round, path, sha256, "
                        "num_bytes) VALUES (?, ?, ?, ?, ?)"
                    ),
                    (run_id, model.server_round, model.path, model.sha256, model.num_bytes),
                )
                for seq, result in enumerate(write.results):
                    cursor.execute(
                        self._q(
                            "INSERT INTO client_results (run_id, server_round, seq, client_id, "
                            "kind, metrics, num_examples, duration_s, failure, staleness) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        ),
                        (
                            run_id,
                            result.server_round,
                            seq,
                            result.client_id,
                            result.kind,
                            _dumps(result.metrics),
                            result.num_examples,
                            result.duration_s,
                            result.failure,
                            result.staleness,
                        ),
                    )
                for client in write.clients:
                    self._upsert_client(cursor, run_id, client)
                cursor.execute(
                    self._q(
                        "UPDATE runs SET rounds_done = ?, updated_at = ? WHERE run_id = ? "
                        "AND rounds_done <= ?"
                    ),
                    (info.server_round, info.ended_at, run_id, info.server_round),
                )
        except Exception as exc:
            if self._is_duplicate(exc):
                raise StoreError(
                    f"round {info.server_round} of run '{run_id}' is recorded already; a round "
                    "is never applied twice. Resume the run from its last recorded round."
                ) from exc
            raise

    def _upsert_client(self, cursor: Any, run_id: str, client: ClientInfo) -> None:
        cursor.execute(
            self._q("SELECT first_seen FROM clients WHERE run_id = ? AND client_id = ?"),
            (run_id, client.client_id),
        )
        row = cursor.fetchone()
        if row is None:
            cursor.execute(
                self._q(
                    "INSERT INTO clients (run_id, client_id, metadata, first_seen, last_seen) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                (
                    run_id,
                    client.client_id,
                    _dumps(client.metadata),
                    client.first_seen,
                    client.last_seen,
                ),
            )
        else:
            cursor.execute(
                self._q(
                    "UPDATE clients SET metadata = ?, last_seen = ? "
                    "WHERE run_id = ? AND client_id = ?"
                ),
                (_dumps(client.metadata), client.last_seen, run_id, client.client_id),
            )

    def set_status(self, run_id: str, status: RunStatus) -> None:
        if status not in STATUSES:
            raise ConfigError(
                f"run status must be one of {', '.join(STATUSES)}, got {status!r}.",
                field="status",
                value=status,
            )
        self.get_run(run_id)
        with self._transaction() as cursor:
            cursor.execute(
                self._q("UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ?"),
                (status, time.time(), run_id),
            )

    def update_config(self, run_id: str, config: dict[str, Any]) -> None:
        self.get_run(run_id)
        with self._transaction() as cursor:
            cursor.execute(
                self._q("UPDATE runs SET config = ?, updated_at = ? WHERE run_id = ?"),
                (_dumps(config), time.time(), run_id),
            )

    def add_event(self, run_id: str, kind: str, detail: dict[str, Any]) -> None:
        with self._transaction() as cursor:
            cursor.execute(
                self._q("INSERT INTO run_events (run_id, at, kind, detail) VALUES (?, ?, ?, ?)"),
                (run_id, time.time(), kind, _dumps(detail)),
            )

    # -- read side ---------------------------------------------------------

    def list_runs(self) -> list[RunInfo]:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at, run_id")
        return [_run(row) for row in rows]

    def get_run(self, run_id: str) -> RunInfo:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        if rows:
            return _run(rows[0])
        known = [row[0] for row in self._query("SELECT run_id FROM runs ORDER BY created_at")]
        listed = ", ".join(f"'{name}'" for name in known[-20:]) or "none"
        raise ConfigError(
            f"no run '{run_id}' in the store {self.url}; its runs: {listed}. "
            "List them with `fedloom runs`.",
            field="run_id",
            value=run_id,
        )

    def rounds(self, run_id: str) -> list[RoundInfo]:
        rows = self._query(
            "SELECT server_round, started_at, ended_at, outcome, metrics, num_results, "
            "num_failures, state_path, state_sha256 FROM rounds WHERE run_id = ? "
            "ORDER BY server_round",
            (run_id,),
        )
        return [
            RoundInfo(
                server_round=int(row[0]),
                started_at=float(row[1]),
                ended_at=float(row[2]),
                outcome=str(row[3]),
                metrics={
                    k: float(v) if v is not None else math.nan
                    for k, v in json.loads(row[4]).items()
                },
                num_results=int(row[5]),
                num_failures=int(row[6]),
                state_path=str(row[7]),
                state_sha256=str(row[8]),
            )
            for row in rows
        ]

    def client_results(
        self, run_id: str, server_round: int | None = None
    ) -> list[ClientResultInfo]:
        sql = (
            "SELECT server_round, client_id, kind, metrics, num_examples, duration_s, failure, "
            "staleness FROM client_results WHERE run_id = ?"
        )
        params: tuple[Any, ...] = (run_id,)
        if server_round is not None:
            sql += " AND server_round = ?"
            params = (run_id, server_round)
        rows = self._query(sql + " ORDER BY server_round, seq", params)
        return [
            ClientResultInfo(
                server_round=int(row[0]),
                client_id=str(row[1]),
                kind="evaluate" if row[2] == "evaluate" else "fit",
                metrics=json.loads(row[3]),
                num_examples=int(row[4]),
                duration_s=float(row[5]),
                failure=row[6],
                staleness=None if row[7] is None else int(row[7]),
            )
            for row in rows
        ]

    def clients(self, run_id: str) -> list[ClientInfo]:
        rows = self._query(
            "SELECT client_id, metadata, first_seen, last_seen FROM clients WHERE run_id = ? "
            "ORDER BY first_seen, client_id",
            (run_id,),
        )
        return [
            ClientInfo(
                client_id=str(row[0]),
                metadata=json.loads(row[1]),
                first_seen=float(row[2]),
                last_seen=float(row[3]),
            )
            for row in rows
        ]

    def model_versions(self, run_id: str) -> list[ModelVersion]:
        rows = self._query(
            "SELECT server_round, path, sha256, num_bytes FROM model_versions WHERE run_id = ? "
            "ORDER BY server_round",
            (run_id,),
        )
        return [
            ModelVersion(
                server_round=int(row[0]),
                path=str(row[1]),
                sha256=str(row[2]),
                num_bytes=int(row[3]),
            )
            for row in rows
        ]

    def events(self, run_id: str) -> list[RunEvent]:
        rows = self._query(
            "SELECT at, kind, detail FROM run_events WHERE run_id = ? ORDER BY at", (run_id,)
        )
        return [
            RunEvent(at=float(row[0]), kind=str(row[1]), detail=json.loads(row[2])) for row in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _run(row: Sequence[Any]) -> RunInfo:
    status = str(row[4])
    return RunInfo(
        run_id=str(row[0]),
        name=str(row[1]),
        created_at=float(row[2]),
        updated_at=float(row[3]),
        status=status if status in STATUSES else "failed",  # type: ignore[arg-type]
        config=json.loads(row[5]),
        seed=int(row[6]),
        code_version=str(row[7]),
        folder=str(row[8]),
        rounds_done=int(row[9]),
    )
