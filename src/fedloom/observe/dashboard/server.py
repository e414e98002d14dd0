"""The dashboard's HTTP server: the page, its script, and the JSON API, read-only.

Built on the standard library's `ThreadingHTTPServer`. Only ``GET`` and ``HEAD``
are served; the page's three files come from a fixed table (no path from a
request ever reaches the file system), and the API reads through one `RunCatalog`,
whose lock serializes the requests' reads.

Security: the API needs ``Authorization: Bearer <token>`` with a token the
server accepts (its per-client tokens or shared secret) whenever tokens are
given, and tokens are required for any address that is not loopback. The page
itself holds no data; it reads the token from the URL fragment
(``http://host:port/#token=...``, never sent to the server) or asks for it.
With an `ssl.SSLContext` the dashboard speaks HTTPS.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from fedloom.errors import ConfigError, FedloomError
from fedloom.observe.catalog import RunCatalog, open_catalog
from fedloom.observe.dashboard.api import ApiError, ConnectedFn, handle

__all__ = ["Dashboard", "TokenCheck", "check_exposure", "is_loopback", "start_dashboard"]

logger = logging.getLogger(__name__)

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_MAX_PATH = 2048


class TokenCheck(Protocol):
    """What the dashboard needs of the server's tokens (`fedloom...security.Tokens` fits)."""

    def owner(self, token: str) -> str | None:
        """The name the token belongs to, or None for an unknown token."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
        (True, False, True)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class _Settings:
    catalog: RunCatalog
    tokens: TokenCheck | None
    connected: dict[str, ConnectedFn]
    static: dict[str, bytes]


class _Handler(BaseHTTPRequestHandler):
    server_version = "fedloom-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    settings: _Settings  # set on the subclass made per dashboard

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _refuse_method(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": f"{self.command} is not allowed; the dashboard is read-only (GET, HEAD)."},
            extra={"Allow": "GET, HEAD"},
        )

    def do_POST(self) -> None:
        self._refuse_method()

    def do_PUT(self) -> None:
        self._refuse_method()

    def do_DELETE(self) -> None:
        self._refuse_method()

    def do_PATCH(self) -> None:
        self._refuse_method()

    def do_OPTIONS(self) -> None:
        self._refuse_method()

    def _answer(self, *, send_body: bool) -> None:
        if len(self.path) > _MAX_PATH:
            self._send_json(HTTPStatus.REQUEST_URI_TOO_LONG, {"error": "the URL is too long."})
            return
        try:
            parts = urlsplit(self.path)
        except ValueError:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "malformed URL."})
            return
        if parts.path == "/favicon.ico":  # browsers ask for it; there is none
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", False)
            return
        static = _STATIC.get(parts.path)
        if static is not None and not parts.query:
            name, content_type = static
            self._send(HTTPStatus.OK, self.settings.static[name], content_type, send_body)
            return
        if parts.path != "/api" and not parts.path.startswith("/api/"):
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {parts.path[:200]!r}."})
            return
        if not self._authorized():
            return
        try:
            document = self._api(parts.path, parts.query)
        except ApiError as exc:
            self._send_json(HTTPStatus(exc.status), {"error": str(exc)}, send_body=send_body)
            return
        self._send_json(HTTPStatus.OK, document, send_body=send_body)

    def _api(self, path: str, query: str) -> Any:
        try:
            return handle(self.settings.catalog, path, query, connected=self.settings.connected)
        except UnicodeDecodeError as exc:
            raise ApiError(400, "the URL path is not valid percent-encoded UTF-8.") from exc
        except FedloomError as exc:
            logger.warning("dashboard: %s failed: %s", path, exc)
            raise ApiError(503, f"the store could not answer: {exc}") from exc

    def _authorized(self) -> bool:
        tokens = self.settings.tokens
        if tokens is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip() and tokens.owner(token.strip()):
            return True
        self._send_json(
            HTTPStatus.UNAUTHORIZED,
            {
                "error": "this dashboard needs a token: send 'Authorization: Bearer <token>' "
                "with a token the server accepts (open the page as /#token=<token>)."
            },
            extra={"WWW-Authenticate": 'Bearer realm="fedloom"'},
        )
        return False

    def _send_json(
        self,
        status: HTTPStatus,
        document: Any,
        *,
        extra: dict[str, str] | None = None,
        send_body: bool = True,
    ) -> None:
        body = json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json", send_body, extra=extra)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        send_body: bool,
        *,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("dashboard %s: " + format, self.address_string(), *args)


class Dashboard:
    """A running dashboard; `stop` it (or use it as a context manager) when done.

    Attributes:
        host: the address it listens on.
        port: the port it listens on (the one picked when 0 was asked for).
        url: the page's URL (``http://`` or ``https://``).
    """

    def __init__(
        self, server: ThreadingHTTPServer, settings: _Settings, *, host: str, scheme: str
    ) -> None:
        self._server = server
        self._settings = settings
        self.host = host
        self.port: int = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}/"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def show_connected(self, run_id: str, names: ConnectedFn) -> None:
        """Show, for the running run `run_id`, the clients `names()` says are connected.

        A server hosting the dashboard passes its fleet's live clients; without this, a
        client counts as connected when the store saw it lately.
        """
        self._settings.connected[run_id] = names

    def wait(self) -> None:
        """Block until the dashboard stops (e.g. until Ctrl-C in the main thread)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def stop(self) -> None:
        """Stop serving and close the socket (safe to call more than once)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10.0)
        self._server.server_close()
        self._settings.catalog.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_exposure(host: str, tokens: TokenCheck | None) -> None:
    """Refuse to serve run data on a non-loopback `host` without tokens.

    Raises:
        ConfigError: `host` is not loopback and `tokens` is None.
    """
    if tokens is None and not is_loopback(host):
        raise ConfigError(
            f"the dashboard would serve run data on {host!r}, which is not a loopback address, "
            "without credentials. Pass the server's tokens (--tokens FILE or --secret-file "
            "FILE), or bind it to 127.0.0.1 and reach it through an SSH tunnel.",
            field="host",
            value=host,
        )


def start_dashboard(
    store: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: TokenCheck | None = None,
    ssl_context: ssl.SSLContext | None = None,
    idle_timeout_s: float = 30.0,
) -> Dashboard:
    """Serve the dashboard over the store at `store` in a background thread.

    Args:
        store: a store URL, a SQLite file, a run folder or a folder of run folders
            (see `fedloom.observe.catalog.open_catalog`).
        host: the address to listen on; any non-loopback address needs `tokens`.
        port: the port (0: any free port; see `Dashboard.port`).
        tokens: the tokens the federation's server accepts; the API then requires one.
        ssl_context: serve HTTPS with this server-side context.
        idle_timeout_s: close a connection silent for this long, so a slow or idle
            client holds no thread.

    Returns:
        The running `Dashboard`.

    Raises:
        ConfigError: `host` is not loopback and no tokens were given, or the address
            cannot be bound.
        StoreUnreachable: the store cannot be opened.
        CorruptState: a store file is damaged.

    Example:
        >>> import tempfile, os
        >>> board = start_dashboard(os.path.join(tempfile.mkdtemp(), "store.db"))
        >>> board.url.startswith("http://127.0.0.1:")
        True
        >>> board.stop()
    """
    check_exposure(host, tokens)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in 0..65535, got {port}.", field="port", value=port)
    static = {
        name: resources.files("fedloom.observe.dashboard").joinpath("static", name).read_bytes()
        for name in ("index.html", "app.js", "app.css")
    }
    catalog = open_catalog(store)  # fails now, with the store's message, if it cannot open
    settings = _Settings(catalog=catalog, tokens=tokens, connected={}, static=static)
    handler = type(
        "DashboardHandler", (_Handler,), {"settings": settings, "timeout": idle_timeout_s}
    )
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    try:
        server = server_class((host.strip("[]"), port), handler)
    except OSError as exc:
        catalog.close()
        raise ConfigError(
            f"the dashboard cannot listen on {host}:{port}: {exc}. Pick another port "
            "(0: any free one) or address.",
            field="port",
            value=port,
        ) from exc
    server.daemon_threads = True
    if ssl_context is not None:
        # the handshake happens in the request's thread, so a slow client blocks no one else
        server.socket = ssl_context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    scheme = "https" if ssl_context is not None else "http"
    return Dashboard(server, settings, host=host.strip("[]"), scheme=scheme)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
