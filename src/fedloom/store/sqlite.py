"""The SQLite store: one file (``store.db`` in the run folder by default), nothing to start.

It uses the standard library's ``sqlite3`` in WAL mode, so readers (``fedloom
runs``, the dashboard) see committed rounds while the server writes, and a
killed writer leaves the last committed round intact. Commits are not synced
one by one (``synchronous=NORMAL``, SQLite's advice for WAL): a committed round
survives any crash of the process; after a power cut the store may come back at
an earlier round, never a half-written one, and resuming starts from there (the
checkpoint files are synced before the commit that names them).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fedloom.errors import CorruptState, StoreUnreachable
from fedloom.store.sql import SqlStore

__all__ = ["SQLiteStore"]

_BUSY_TIMEOUT_S = 30.0


class SQLiteStore(SqlStore):
    """A store in the SQLite file `path` (created, with its folder, if missing).

    Raises:
        StoreUnreachable: the file cannot be created or opened.
        CorruptState: the file is not a SQLite database, or fails its integrity check.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            super().__init__(f"sqlite:///{self.path}")
        except sqlite3.DatabaseError as exc:
            raise CorruptState(
                f"the store {self.path} is not a readable SQLite database ({exc}). It is "
                "damaged or is another kind of file: restore it from a backup, or pass "
                "another --store.",
                path=str(self.path),
            ) from exc

    def _connect(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnreachable(
                f"cannot open the SQLite store {self.path}: {exc}. Check that the folder "
                "exists and is writable, or pass another --store.",
                url=f"sqlite:///{self.path}",
            ) from exc
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            row = connection.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row}")
        except BaseException:
            connection.close()
            raise
        # isolation_level=None and explicit BEGIN: a transaction spans all of a round's statements
        return _Connection(connection)

    def _begin(self, cursor: Any, *, write: bool) -> None:
        # a writer takes the write lock up front, so two writers queue instead of failing
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _is_duplicate(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error)


class _Connection:
    """An autocommit sqlite3 connection; the store opens each transaction with BEGIN."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def cursor(self) -> sqlite3.Cursor:
        return self._connection.cursor()

    def commit(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("COMMIT")

    def rollback(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def close(self) -> None:
        self._connection.close()
