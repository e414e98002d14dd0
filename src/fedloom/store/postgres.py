"""The PostgreSQL store: one database shared by many runs (``pip install 'fedloom[postgres]'``).

It talks to the server through psycopg 3. Opening it connects at once, so an
unreachable database fails before anything starts, with the URL (password
masked) in the message. Checkpoint files still live in each run's folder; the
database records their paths and sha256.
"""

from __future__ import annotations

from typing import Any

from fedloom.errors import StoreUnreachable
from fedloom.store.base import mask_url
from fedloom.store.sql import SqlStore

__all__ = ["PostgresStore"]

_CONNECT_TIMEOUT_S = 10


class PostgresStore(SqlStore):
    """A store in the PostgreSQL database at `url` (``postgresql://user:pw@host:port/db``).

    Raises:
        ImportError: psycopg is not installed; the message names the extra.
        StoreUnreachable: the server cannot be reached, or refuses the login.
    """

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        self._raw_url = url
        super().__init__(mask_url(url))

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:
            raise ImportError(
                "a postgresql:// store needs psycopg 3: pip install 'fedloom[postgres]'"
            ) from exc
        try:
            return psycopg.connect(
                self._raw_url, connect_timeout=_CONNECT_TIMEOUT_S, autocommit=False
            )
        except psycopg.Error as exc:
            reason = str(exc).replace(self._raw_url, self.url).strip().splitlines()
            raise StoreUnreachable(
                f"cannot reach the store database {self.url}: {reason[0] if reason else exc}. "
                "Check the host, port, database name and credentials, and that the server "
                "runs; nothing was started.",
                url=self.url,
            ) from None

    def _is_duplicate(self, error: Exception) -> bool:
        import psycopg.errors

        return isinstance(error, psycopg.errors.UniqueViolation)
