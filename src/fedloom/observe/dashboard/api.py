"""The dashboard's read-only JSON API: request paths in, JSON-able documents out.

Pure functions over a `RunCatalog` (one store or many run folders); the HTTP
server (`fedloom.observe.dashboard.server`) only adds transport, authentication
and headers. Every input (path segments,
query parameters) is checked here, and an unusable one becomes an `ApiError`
with the HTTP status and a message saying what was expected.

Routes (all ``GET``):

- ``/api/runs``: every run, newest first;
- ``/api/runs/<run_id>``: one run, with its config and progress;
- ``/api/runs/<run_id>/rounds``: every recorded round;
- ``/api/runs/<run_id>/clients``: registered clients with their tallies;
- ``/api/runs/<run_id>/client-results[?round=N]``: per-client results;
- ``/api/runs/<run_id>/models``: the recorded model versions (files and sha256).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from fedloom.errors import ConfigError
from fedloom.observe.catalog import RunCatalog

__all__ = ["ApiError", "ConnectedFn", "handle", "run_progress"]

ConnectedFn = Callable[[], Collection[str]]
"""Returns the names of the clients connected right now (given by a live server)."""

_RUN_ID = re.compile(r"[^\x00-\x1f\x7f/\\]{1,255}")  # a lookup key, never a path
_MAX_ROUND = 10**9
CONNECTED_WITHIN_S = 30.0
"""In a running run, a client seen within this time, or within twice the last round's
duration if that is longer, counts as connected (the store sees clients once a round)."""


class ApiError(Exception):
    """A request the API refuses: `status` is the HTTP status, the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def handle(
    store: RunCatalog,
    path: str,
    query: str,
    *,
    connected: Mapping[str, ConnectedFn] | None = None,
) -> Any:
    """The JSON document for ``GET path?query``.

    Args:
        store: where runs are read from.
        path: the URL path, percent-encoded as received (e.g. ``/api/runs/r1/rounds``).
        query: the URL query string without ``?``.
        connected: for the runs a live server is running here (by run id), the names of
            their connected clients.

    Returns:
        A JSON-able value (non-finite floats already replaced by None).

    Raises:
        ApiError: 404 for an unknown route or run, 400 for a malformed id or parameter.
    """
    parts = path.split("/")
    if len(parts) < 3 or parts[:3] != ["", "api", "runs"]:
        raise ApiError(404, f"no such API route {path!r}; the routes start with /api/runs.")
    segments = [unquote(part, errors="strict") for part in parts[3:]]
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    params = _query(query)
    if not segments:
        _allow(params, set(), path)
        return _json_safe([_run_summary(info) for info in store.list_runs()])
    run_id = _run_id(segments[0])
    if len(segments) == 1:
        _allow(params, set(), path)
        return _json_safe(_run_detail(store, run_id))
    if len(segments) > 2:
        raise ApiError(404, f"no such API route {path!r}.{_routes()}")
    what = segments[1]
    if what == "rounds":
        _allow(params, set(), path)
        _known_run(store, run_id)
        return _json_safe([dataclasses.asdict(r) for r in store.rounds(run_id)])
    if what == "clients":
        _allow(params, set(), path)
        return _json_safe(_clients(store, run_id, (connected or {}).get(run_id)))
    if what == "client-results":
        _allow(params, {"round"}, path)
        server_round = _round(params["round"]) if "round" in params else None
        _known_run(store, run_id)
        results = store.client_results(run_id, server_round=server_round)
        return _json_safe([dataclasses.asdict(r) for r in results])
    if what == "models":
        _allow(params, set(), path)
        _known_run(store, run_id)
        return _json_safe([dataclasses.asdict(m) for m in store.model_versions(run_id)])
    raise ApiError(404, f"no such API route {path!r}.{_routes()}")


def _routes() -> str:
    return (
        " Routes: /api/runs, /api/runs/<run_id>, /api/runs/<run_id>/rounds, "
        "/api/runs/<run_id>/clients, /api/runs/<run_id>/client-results[?round=N], "
        "/api/runs/<run_id>/models."
    )


def _query(query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ApiError(400, f"malformed query string {query!r}: {exc}.") from exc
    repeated = sorted(key for key, values in parsed.items() if len(values) > 1)
    if repeated:
        raise ApiError(400, f"query parameters {repeated} repeat; give each once.")
    return {key: values[0] for key, values in parsed.items()}


def _allow(params: Mapping[str, str], allowed: set[str], path: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        accepted = f"accepts only {sorted(allowed)}" if allowed else "takes no query parameters"
        raise ApiError(400, f"unknown query parameters {unknown} for {path!r}; it {accepted}.")


def _run_id(text: str) -> str:
    if not _RUN_ID.fullmatch(text):
        raise ApiError(
            400,
            f"malformed run id {text[:80]!r}; expected a run id or name of 1-255 characters "
            "without slashes or control characters, as /api/runs lists them.",
        )
    return text


def _round(text: str) -> int:
    if not text.isdigit() or int(text) > _MAX_ROUND:
        raise ApiError(400, f"round must be a whole number >= 0, got {text[:40]!r}.")
    return int(text)


def _known_run(store: RunCatalog, run_id: str) -> Any:
    try:
        return store.get_run(run_id)
    except ConfigError as exc:  # the store's "no such run"
        raise ApiError(404, f"no run {run_id!r}; see /api/runs for the recorded runs.") from exc


def run_progress(config: Mapping[str, Any]) -> int | None:
    """The number of rounds a run's config asks for, if the config says.

    Looks for ``rounds`` at the top level, under ``run`` and under ``config.run``
    (the layouts fedloom's commands record).

    Example:
        >>> run_progress({"config": {"run": {"rounds": 20}}})
        20
    """
    candidates: list[Any] = [config.get("rounds")]
    for outer in (config, config.get("config")):
        if isinstance(outer, Mapping) and isinstance(outer.get("run"), Mapping):
            candidates.append(outer["run"].get("rounds"))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _run_summary(info: Any) -> dict[str, Any]:
    summary = dataclasses.asdict(info)
    summary.pop("config", None)
    summary["rounds_planned"] = run_progress(info.config)
    return summary


def _run_detail(store: RunCatalog, run_id: str) -> dict[str, Any]:
    info = _known_run(store, run_id)
    detail = dataclasses.asdict(info)
    detail["rounds_planned"] = run_progress(info.config)
    rounds = store.rounds(run_id)
    detail["last_round_ended_at"] = max((r.ended_at for r in rounds), default=None)
    detail["now"] = time.time()
    return detail


def _clients(store: RunCatalog, run_id: str, connected: ConnectedFn | None) -> list[dict[str, Any]]:
    info = _known_run(store, run_id)
    tallies: dict[str, dict[str, Any]] = {}
    for result in store.client_results(run_id):
        tally = tallies.setdefault(
            result.client_id,
            {"num_results": 0, "num_failures": 0, "last_round": None, "last_failure": None},
        )
        if result.failure:
            tally["num_failures"] += 1
            tally["last_failure"] = result.failure
        else:
            tally["num_results"] += 1
        last = tally["last_round"]
        tally["last_round"] = (
            result.server_round if last is None else max(last, result.server_round)
        )
    live = set(connected()) if connected is not None and info.status == "running" else None
    now = time.time()
    rounds = [r for r in store.rounds(run_id) if r.server_round > 0]
    window = max(
        CONNECTED_WITHIN_S, 2 * (rounds[-1].ended_at - rounds[-1].started_at) if rounds else 0
    )
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for client in store.clients(run_id):
        row = dataclasses.asdict(client)
        if live is not None:
            row["connected"] = client.client_id in live
        else:
            recent = now - client.last_seen < window
            row["connected"] = info.status == "running" and recent
        row.update(tallies.get(client.client_id, _empty_tally()))
        rows.append(row)
        seen.add(client.client_id)
    for client_id in sorted(set(tallies) - seen):  # results from clients never registered
        rows.append(
            {
                "client_id": client_id,
                "metadata": {},
                "first_seen": None,
                "last_seen": None,
                "connected": live is not None and client_id in live,
                **tallies[client_id],
            }
        )
    for client_id in sorted((live or set()) - seen - set(tallies)):  # joined, no round yet
        rows.append(
            {
                "client_id": client_id,
                "metadata": {},
                "first_seen": None,
                "last_seen": None,
                "connected": True,
                **_empty_tally(),
            }
        )
    return rows


def _empty_tally() -> dict[str, Any]:
    return {"num_results": 0, "num_failures": 0, "last_round": None, "last_failure": None}


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None and tuples as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
