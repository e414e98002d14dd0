"""The dashboard's HTTP server and JSON API: routes, validation, credentials, headers."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from fedloom.errors import ConfigError
from fedloom.observe.dashboard import Dashboard, is_loopback, start_dashboard
from fedloom.transport.grpc.security import Tokens
from recorded_runs import make_runs_dir, record_run


def _get(
    board: Dashboard, path: str, *, method: str = "GET", token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(board.host, board.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _json(board: Dashboard, path: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, body = _get(board, path, **kwargs)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One read-only dashboard for the tests that only read."""
    with start_dashboard(make_runs_dir(tmp_path_factory.mktemp("board"))) as running:
        yield running


def test_api_lists_runs_with_their_progress(board: Dashboard) -> None:
    status, runs = _json(board, "/api/runs")

    assert status == 200
    assert [(r["name"], r["status"], r["rounds_done"], r["rounds_planned"]) for r in runs] == [
        ("alpha", "finished", 3, 3),
        ("beta", "running", 1, 1),
    ]
    assert "config" not in runs[0]  # the list stays small; /api/runs/<id> has it


def test_api_run_detail_has_config_and_last_round_end(board: Dashboard) -> None:
    status, run = _json(board, "/api/runs/run-alpha")

    assert status == 200
    assert run["config"]["config"]["strategy"] == {"name": "fedavg"}
    assert run["last_round_ended_at"] == 1_700_000_000.0 + 34  # round 3 ended at T0 + 30 + 4


def test_api_rounds_clients_results_and_models(board: Dashboard) -> None:
    _, rounds = _json(board, "/api/runs/run-alpha/rounds")
    _, clients = _json(board, "/api/runs/run-alpha/clients")
    _, results = _json(board, "/api/runs/run-alpha/client-results?round=2")
    _, models = _json(board, "/api/runs/run-alpha/models")

    assert [r["server_round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[2]["metrics"] == {"central.loss": 2 / 3, "fit.loss": 1 / 3}
    by_id = {c["client_id"]: c for c in clients}
    # "a" succeeded in rounds 1-3; "b" failed round 2 ("timed out") and succeeded in 1 and 3
    assert (by_id["a"]["num_results"], by_id["a"]["num_failures"]) == (3, 0)
    assert (by_id["b"]["num_results"], by_id["b"]["num_failures"]) == (2, 1)
    assert by_id["b"]["last_failure"] == "timed out"
    assert by_id["a"]["connected"] is False  # the run is finished
    assert [(r["client_id"], r["failure"]) for r in results] == [("a", None), ("b", "timed out")]
    assert [m["server_round"] for m in models] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("path", "status", "phrase"),
    [
        ("/api/runs/nope", 404, "no run 'nope'"),
        ("/api/runs/nope/rounds", 404, "no run 'nope'"),
        ("/api/runs/run-alpha/secrets", 404, "no such API route"),
        ("/api/runs/run-alpha/rounds/1/x", 404, "no such API route"),
        ("/api/other", 404, "no such API route"),
        ("/api/runs/..%2F..%2Fetc", 400, "malformed run id"),
        ("/api/runs/%FF", 400, "not valid percent-encoded UTF-8"),
        ("/api/runs/run-alpha/client-results?round=-1", 400, "round must be a whole number"),
        ("/api/runs/run-alpha/client-results?round=1&round=2", 400, "give each once"),
        ("/api/runs?limit=3", 400, "unknown query parameters ['limit']"),
        ("/etc/passwd", 404, "no page"),
        ("/../store.db", 404, "no page"),
    ],
)
def test_api_refuses_bad_requests_with_a_reason(
    board: Dashboard, path: str, status: int, phrase: str
) -> None:
    got, document = _json(board, path)

    assert got == status
    assert phrase in document["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_dashboard_is_read_only(board: Dashboard, method: str) -> None:
    status, headers, _ = _get(board, "/api/runs", method=method)

    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_page_is_served_with_a_strict_content_security_policy(board: Dashboard) -> None:
    status, headers, body = _get(board, "/")
    script_status, script_headers, _ = _get(board, "/app.js")
    head_status, head_headers, head_body = _get(board, "/api/runs", method="HEAD")

    assert status == 200
    assert b'<script src="app.js"' in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "http" not in body.decode().replace("http-equiv", "")  # nothing from the internet
    assert (script_status, script_headers["Content-Type"]) == (
        200,
        "text/javascript; charset=utf-8",
    )
    assert head_status == 200
    assert head_body == b""
    assert int(head_headers["Content-Length"]) > 0


def test_api_needs_a_valid_token_when_tokens_are_given(runs_dir: Path) -> None:
    tokens = Tokens(clients={"site-1": "token-one-0123456789", "site-2": "token-two-0123456789"})

    with start_dashboard(runs_dir, tokens=tokens) as board:
        missing, headers, _ = _get(board, "/api/runs")
        wrong, _ = _json(board, "/api/runs", token="token-three-0123456789")
        right, runs = _json(board, "/api/runs", token="token-two-0123456789")
        page, _, _ = _get(board, "/")

    assert missing == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong == 401
    assert right == 200
    assert len(runs) == 2
    assert page == 200  # the page holds no data; it asks for the token


def test_dashboard_refuses_a_public_address_without_credentials(runs_dir: Path) -> None:
    with pytest.raises(ConfigError, match="not a loopback address, without credentials"):
        start_dashboard(runs_dir, host="0.0.0.0")


def test_dashboard_serves_a_public_address_with_tokens(runs_dir: Path) -> None:
    tokens = Tokens(shared_secret="shared-secret-0123456789")

    with start_dashboard(runs_dir, host="0.0.0.0", tokens=tokens) as board:
        connection = http.client.HTTPConnection("127.0.0.1", board.port, timeout=10)
        connection.request(
            "GET", "/api/runs", headers={"Authorization": f"Bearer {tokens.shared_secret}"}
        )
        status = connection.getresponse().status
        connection.close()

    assert status == 200


def test_api_counts_clients_seen_lately_in_a_running_run_as_connected(tmp_path: Path) -> None:
    """Rounds last 4 s, so the window is 30 s; the last round (1) saw both clients 10 s ago."""
    record_run(tmp_path, run_id="now", name="now", rounds=1, status="running", t0=time.time() - 20)

    with start_dashboard(tmp_path) as board:
        _, clients = _json(board, "/api/runs/now/clients")

    assert [(c["client_id"], c["connected"]) for c in clients] == [("a", True), ("b", True)]


def test_is_loopback_knows_loopback_addresses() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost")] == [
        True
    ] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.org", "")] == [False] * 5


def test_api_serves_runs_named_with_spaces_and_unicode(tmp_path: Path) -> None:
    record_run(tmp_path / "näme with space", run_id="näme with space", name="näme", rounds=1)

    with start_dashboard(tmp_path) as board:
        status, run = _json(board, "/api/runs/n%C3%A4me%20with%20space")
        by_name, _ = _json(board, "/api/runs/n%C3%A4me/rounds")

    assert status == 200
    assert run["name"] == "näme"
    assert by_name == 200


def test_dashboard_closes_a_silent_connection(runs_dir: Path) -> None:
    with start_dashboard(runs_dir, idle_timeout_s=0.3) as board:
        idle = socket.create_connection((board.host, board.port), timeout=10)
        try:
            closed = idle.recv(1)  # blocks until the server gives up on the silent client
        finally:
            idle.close()
        status, _ = _json(board, "/api/runs")  # and it still serves others

    assert closed == b""
    assert status == 200


def test_dashboard_reads_runs_from_a_postgresql_store(postgres_url: str, tmp_path: Path) -> None:
    """A shared server's database: two runs in one store, read through its URL."""
    record_run(tmp_path / "one", run_id="pg-one", name="one", rounds=2, store_url=postgres_url)
    record_run(tmp_path / "two", run_id="pg-two", name="two", rounds=1, store_url=postgres_url)

    with start_dashboard(postgres_url) as board:
        _, runs = _json(board, "/api/runs")
        _, rounds = _json(board, "/api/runs/one/rounds")

    assert [(run["run_id"], run["rounds_done"]) for run in runs] == [("pg-one", 2), ("pg-two", 1)]
    assert [r["server_round"] for r in rounds] == [0, 1, 2]
