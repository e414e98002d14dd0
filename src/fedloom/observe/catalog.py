"""Every run under one roof: a read-only view over one store or many run folders' stores.

By default each run folder holds its own SQLite store (``runs/<name>/store.db``),
while a shared server may keep many runs in one PostgreSQL database. ``fedloom
runs`` and the dashboard read through `RunCatalog`, which gives one list of runs
over a store URL, a SQLite file, a run folder, or a folder of run folders
(``runs/``), and finds a run by its id or its name. Store files that appear later
(a run started after the dashboard) are picked up on the next `list_runs`.
A lock serializes calls, so one catalog may serve many threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from fedloom.core import Weights
from fedloom.errors import ConfigError, did_you_mean
from fedloom.store import (
    STORE_FILE,
    ClientInfo,
    ClientResultInfo,
    ModelVersion,
    RoundInfo,
    RunInfo,
    Store,
    mask_url,
    open_store,
)

__all__ = ["RunCatalog", "open_catalog"]


def _discover(location: str | Path) -> Callable[[], list[str]]:
    """A function listing the store URLs at `location` now.

    Raises:
        ConfigError: nothing at `location` is or holds a store.
    """
    text = str(location)
    if "://" in text:
        return lambda: [text]
    path = Path(location)
    if path.is_file():
        return lambda: [str(path)]
    if path.is_dir():

        def found() -> list[str]:
            own = [path / STORE_FILE] if (path / STORE_FILE).is_file() else []
            children = sorted(path.glob(f"*/{STORE_FILE}"))
            return [str(file) for file in [*own, *children]]

        return found
    raise ConfigError(
        f"no store at {mask_url(text)!r}: it does not exist. Pass a store URL "
        "(postgresql://user:password@host/db, sqlite:///path/store.db), a SQLite file, "
        "a run folder or the folder of run folders (e.g. runs/).",
        field="store",
        value=mask_url(text),
    )


class RunCatalog:
    """The runs of one or more stores, read-only. Close it when done.

    Args:
        discover: returns the URLs of the stores to read (called again on refresh).
        location: what the user named, for messages.
    """

    def __init__(self, discover: Callable[[], list[str]], *, location: str) -> None:
        self._discover = discover
        self._location = location
        self._stores: dict[str, Store] = {}
        self._owner: dict[str, Store] = {}
        self._lock = threading.RLock()
        self.refresh()

    def refresh(self) -> None:
        """Open stores that appeared since the last look, and re-index their runs.

        Raises:
            StoreUnreachable: a store cannot be opened.
            CorruptState: a store file is damaged.
        """
        with self._lock:
            for url in self._discover():
                if url not in self._stores:
                    self._stores[url] = open_store(url)
            self._owner = {
                run.run_id: store for store in self._stores.values() for run in store.list_runs()
            }

    def list_runs(self) -> list[RunInfo]:
        """Every run, oldest first (stores are looked at again first)."""
        with self._lock:
            self.refresh()
            runs = [run for store in self._stores.values() for run in store.list_runs()]
        return sorted(runs, key=lambda run: (run.created_at, run.run_id))

    def resolve(self, run: str) -> str:
        """The run id of `run`, given as a run id or a run name.

        Raises:
            ConfigError: no run has that id or name, or several runs share the name.
        """
        with self._lock:
            if run not in self._owner:
                self.refresh()
            if run in self._owner:
                return run
            runs = self.list_runs()
        named = [info.run_id for info in runs if info.name == run]
        if len(named) == 1:
            return named[0]
        if named:
            raise ConfigError(
                f"{len(named)} runs are named {run!r}: {named}. Pass the run id instead.",
                field="run",
                value=run,
            )
        known = [info.name for info in runs] + [info.run_id for info in runs]
        listed = ", ".join(f"{info.name} ({info.run_id})" for info in runs[-10:]) or "none"
        raise ConfigError(
            f"no run {run!r} in {mask_url(self._location)}.{did_you_mean(run, known)} "
            f"Known runs (latest 10): {listed}. `fedloom runs list` shows them all.",
            field="run",
            value=run,
        )

    def _store(self, run: str) -> tuple[Store, str]:
        run_id = self.resolve(run)
        return self._owner[run_id], run_id

    def get_run(self, run: str) -> RunInfo:
        """The run `run` (an id or a name). Raises ConfigError for an unknown run."""
        with self._lock:
            store, run_id = self._store(run)
            return store.get_run(run_id)

    def rounds(self, run: str) -> list[RoundInfo]:
        """The run's recorded rounds, round 0 first."""
        with self._lock:
            store, run_id = self._store(run)
            return store.rounds(run_id)

    def client_results(self, run: str, server_round: int | None = None) -> list[ClientResultInfo]:
        """The run's client results, of every round or of `server_round`."""
        with self._lock:
            store, run_id = self._store(run)
            return store.client_results(run_id, server_round=server_round)

    def clients(self, run: str) -> list[ClientInfo]:
        """The clients the run has seen."""
        with self._lock:
            store, run_id = self._store(run)
            return store.clients(run_id)

    def model_versions(self, run: str) -> list[ModelVersion]:
        """The checkpoint of every recorded round."""
        with self._lock:
            store, run_id = self._store(run)
            return store.model_versions(run_id)

    def load_weights(self, run: str, which: int | Literal["last", "best"]) -> Weights:
        """The checked global weights after round `which` (a number, "last" or "best")."""
        with self._lock:
            store, run_id = self._store(run)
            return store.load_weights(run_id, which)

    def close(self) -> None:
        """Close every store."""
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            self._owner.clear()

    def __enter__(self) -> RunCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_catalog(location: str | Path) -> RunCatalog:
    """The runs at `location`: a store URL, a SQLite file, a run folder, or a folder of them.

    Raises:
        ConfigError: `location` does not exist (a path) or has an unknown URL scheme.
        StoreUnreachable: a database cannot be reached.
        CorruptState: a store file is damaged.

    Example:
        >>> import tempfile
        >>> with open_catalog(tempfile.mkdtemp()) as catalog:
        ...     catalog.list_runs()
        []
    """
    return RunCatalog(_discover(location), location=str(location))
