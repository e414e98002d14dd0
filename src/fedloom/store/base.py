"""The run store: one small interface over SQLite (default) and PostgreSQL.

A store records runs (config, seed, code version), rounds (start, end,
outcome, aggregate metrics, and the strategy state file), each client's
results, the clients seen, and the model version of every round (a
safetensors file and its sha256). Writers call `create_run`, then
`record_round` once per finished round: one transaction per round, so a round
is in the store whole or not at all. Readers (``fedloom runs``, the dashboard)
use the read side: `list_runs`, `get_run`, `rounds`, `client_results`,
`clients`, `model_versions`, `load_weights`.

`open_store` picks the backend from a URL: a path or ``sqlite:///path`` is a
SQLite file (embedded, nothing to start); ``postgresql://user:pw@host/db`` a
PostgreSQL server (``pip install 'fedloom[postgres]'``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from fedloom.core import Weights

__all__ = [
    "BEST_RULE",
    "ClientInfo",
    "ClientResultInfo",
    "ModelVersion",
    "RoundInfo",
    "RoundWrite",
    "RunEvent",
    "RunInfo",
    "RunStatus",
    "STORE_FILE",
    "Store",
    "mask_url",
    "open_store",
]

STORE_FILE = "store.db"
"""The SQLite store's file name in a run folder (the default store)."""

RunStatus = Literal["running", "finished", "failed", "interrupted"]
STATUSES: tuple[str, ...] = ("running", "finished", "failed", "interrupted")

BEST_RULE = (
    "the round whose metrics have the lowest 'central.loss', else the lowest 'evaluate.loss', "
    "else the highest 'central.accuracy', else the highest 'evaluate.accuracy'; ties go to "
    "the earlier round; a run that recorded none of these has no best round"
)
"""How ``load_weights(run_id, "best")`` picks the best round."""

_BEST_KEYS: tuple[tuple[str, Literal["min", "max"]], ...] = (
    ("central.loss", "min"),
    ("evaluate.loss", "min"),
    ("central.accuracy", "max"),
    ("evaluate.accuracy", "max"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """A run as the store knows it. Timestamps are float epoch seconds.

    `rounds_done` is the last round recorded whole (0: only the initial state).
    `folder` is where the run's checkpoint files live.
    """

    run_id: str
    name: str
    created_at: float
    status: RunStatus
    config: dict[str, Any]
    seed: int
    code_version: str
    rounds_done: int
    folder: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundInfo:
    """One recorded round. Round 0 is the initial state (outcome ``"initial"``).

    `outcome` is ``"completed"`` for a normal round; `state_path`/`state_sha256`
    name the strategy-state file (server-optimizer moments, plug-in state such
    as SCAFFOLD's control variate), empty when the strategy keeps no state.
    """

    server_round: int
    started_at: float
    ended_at: float
    outcome: str
    metrics: dict[str, float]
    num_results: int
    num_failures: int
    state_path: str = ""
    state_sha256: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientResultInfo:
    """One client's result (or failure) in a round; `failure` holds the reason."""

    server_round: int
    client_id: str
    kind: Literal["fit", "evaluate"]
    metrics: dict[str, Any]
    num_examples: int
    duration_s: float
    failure: str | None
    staleness: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientInfo:
    """A client the run has seen: its name, what it told the server, when it was seen."""

    client_id: str
    metadata: dict[str, Any]
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersion:
    """The global weights after `server_round`: a safetensors file and its sha256."""

    server_round: int
    path: str
    sha256: str
    num_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """Something that happened to a run besides rounds: a resume, a changed setting, an end."""

    at: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundWrite:
    """Everything `Store.record_round` writes in one transaction."""

    round: RoundInfo
    model: ModelVersion
    results: tuple[ClientResultInfo, ...] = ()
    clients: tuple[ClientInfo, ...] = ()


class Store(ABC):
    """Where runs are recorded. Use `open_store` to get one; `close` it when done.

    The write side is used by the server's recorder; the read side is stable
    for readers (``fedloom runs``, the dashboard).
    """

    url: str
    """The store's URL with any password masked."""

    # -- write side --------------------------------------------------------

    @abstractmethod
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
        """Record a new run with status ``"running"``.

        Raises:
            ConfigError: a run with `run_id` exists already.
        """

    @abstractmethod
    def record_round(self, run_id: str, write: RoundWrite) -> None:
        """Record a finished round whole, in one transaction (files must exist already).

        Raises:
            StoreError: the round is recorded already (a round is never applied twice).
        """

    @abstractmethod
    def set_status(self, run_id: str, status: RunStatus) -> None:
        """Mark the run running, finished, failed or interrupted."""

    @abstractmethod
    def update_config(self, run_id: str, config: dict[str, Any]) -> None:
        """Replace the run's recorded config (a resume with harmless changes)."""

    @abstractmethod
    def add_event(self, run_id: str, kind: str, detail: dict[str, Any]) -> None:
        """Record an event of the run (e.g. ``"resumed"`` with the changed settings)."""

    # -- read side ---------------------------------------------------------

    @abstractmethod
    def list_runs(self) -> list[RunInfo]:
        """Every run, oldest first."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunInfo:
        """The run `run_id`.

        Raises:
            ConfigError: no such run; the message names the known runs.
        """

    @abstractmethod
    def rounds(self, run_id: str) -> list[RoundInfo]:
        """The run's recorded rounds, round 0 (the initial state) first."""

    @abstractmethod
    def client_results(
        self, run_id: str, server_round: int | None = None
    ) -> list[ClientResultInfo]:
        """Every client result of the run, or of one round, in round then arrival order."""

    @abstractmethod
    def clients(self, run_id: str) -> list[ClientInfo]:
        """The clients the run has seen, by first appearance."""

    @abstractmethod
    def model_versions(self, run_id: str) -> list[ModelVersion]:
        """The checkpoint of every recorded round, round 0 first."""

    @abstractmethod
    def events(self, run_id: str) -> list[RunEvent]:
        """The run's events (resumes, changed settings), oldest first."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the store cannot be used afterwards."""

    def load_weights(self, run_id: str, which: int | Literal["last", "best"]) -> Weights:
        """The global weights after a round, checked against their recorded sha256.

        Args:
            run_id: the run.
            which: a round number, ``"last"`` (the last recorded round) or ``"best"``
                (see `BEST_RULE`).

        Raises:
            ConfigError: no such run, round, or (for "best") no metric to rank rounds by.
            CorruptState: the file is missing, damaged or changed since it was recorded.
        """
        from fedloom.store.checkpoints import read_model

        versions = {version.server_round: version for version in self.model_versions(run_id)}
        if which == "last":
            server_round = self.get_run(run_id).rounds_done
        elif which == "best":
            server_round = best_round(run_id, self.rounds(run_id))
        else:
            server_round = which
        version = versions.get(server_round)
        if version is None:
            from fedloom.errors import ConfigError

            raise ConfigError(
                f"run '{run_id}' has no weights for round {which!r}; recorded rounds: "
                f"{sorted(versions)}. Pass one of them, 'last' or 'best'.",
                field="which",
                value=which,
            )
        return read_model(version)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def best_round(run_id: str, rounds: list[RoundInfo]) -> int:
    """The round `BEST_RULE` picks.

    Raises:
        ConfigError: no round recorded a metric the rule ranks by.
    """
    from fedloom.errors import ConfigError

    for key, mode in _BEST_KEYS:
        scored = [(r.metrics[key], r.server_round) for r in rounds if key in r.metrics]
        scored = [(value, rnd) for value, rnd in scored if value == value]  # drop NaN
        if scored:
            if mode == "min":
                return min(scored, key=lambda item: (item[0], item[1]))[1]
            return min(scored, key=lambda item: (-item[0], item[1]))[1]
    raise ConfigError(
        f"run '{run_id}' has no best round: {BEST_RULE}. Ask for a round number or 'last'.",
        field="which",
        value="best",
    )


def mask_url(url: str) -> str:
    """`url` with its password replaced by ``***`` (``postgresql://u:***@host/db``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def open_store(url: str | Path) -> Store:
    """Open (creating if needed) the store at `url`.

    Args:
        url: a file path or ``sqlite:///relative/store.db`` (``sqlite:////abs/store.db``)
            for SQLite;
            ``postgresql://user:password@host:port/db`` (or ``postgres://``) for PostgreSQL.

    Returns:
        The store, with its tables created.

    Raises:
        StoreUnreachable: the database cannot be reached or opened; nothing was written.
        ConfigError: the URL's scheme is not sqlite or postgresql.

    Example:
        >>> import tempfile, os
        >>> store = open_store(os.path.join(tempfile.mkdtemp(), "store.db"))
        >>> store.list_runs()
        []
        >>> store.close()
    """
    text = str(url)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres"):
        from fedloom.store.postgres import PostgresStore

        return PostgresStore(text)
    if scheme in ("", "sqlite", "file"):
        from fedloom.store.sqlite import SQLiteStore

        # as SQLAlchemy: sqlite:///relative/path, sqlite:////absolute/path
        path = text.split("://", 1)[1] if scheme else text
        if scheme and path.startswith("/"):
            path = path[1:]
        return SQLiteStore(Path(path))
    from fedloom.errors import ConfigError

    raise ConfigError(
        f"store URL {mask_url(text)!r} has scheme '{scheme}'; use a file path, "
        "'sqlite:///path/to/store.db' or 'postgresql://user:password@host:port/db'.",
        field="store",
        value=mask_url(text),
    )
