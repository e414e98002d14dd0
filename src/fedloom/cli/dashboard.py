"""``fedloom dashboard``: the web dashboard over a store, on its own.

It serves the page and its read-only JSON API (`fedloom.observe.dashboard`)
until Ctrl-C, printing ``dashboard on URL`` (flushed) once it listens. On a
loopback address (the default, 127.0.0.1) it needs no credentials; on any other
address it needs the server's tokens (``--tokens FILE`` or ``--secret-file
FILE``), and ``--certs DIR`` (or ``--cert``/``--key``) makes it HTTPS.
``fedloom server --dashboard PORT`` serves the same dashboard next to a run.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.cli._options import SubParsers, fail, read_secret
from fedloom.errors import ConfigError, FedloomError

if TYPE_CHECKING:
    from fedloom.observe.dashboard import Dashboard, TokenCheck

__all__ = [
    "DEFAULT_PORT",
    "add_parser",
    "add_security_options",
    "check_for_server",
    "dashboard_host",
    "dashboard_address",
    "run",
    "ssl_context",
    "start_for_server",
    "tokens_from",
]

DEFAULT_PORT = 8050


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: any free), got {text!r}")
    return int(text)


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``dashboard`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard over a store",
        description="Serve a web page with the runs of a store: live round progress, "
        "clients, metric plots and configs, and the read-only JSON API behind it. Off "
        "loopback it needs the server's tokens (--tokens or --secret-file).",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default="runs",
        help="a store URL (postgresql://..., sqlite:///...), a SQLite file, a run folder "
        "or a folder of run folders (default: runs)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen here (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"listen on this port (default: {DEFAULT_PORT}; 0: any free port)",
    )
    add_security_options(parser)
    parser.set_defaults(handler=run)


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """``--tokens``/``--secret-file`` and ``--certs``/``--cert``/``--key``."""
    auth = parser.add_argument_group(
        "credentials (required unless on a loopback address)"
    ).add_mutually_exclusive_group()
    auth.add_argument("--tokens", type=Path, metavar="FILE", help="the server's tokens file")
    auth.add_argument("--secret-file", type=Path, metavar="FILE", help="the shared secret")
    tls = parser.add_argument_group("HTTPS")
    tls.add_argument("--certs", type=Path, metavar="DIR", help="use DIR/server.pem, server.key")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="a PEM certificate")
    tls.add_argument("--key", type=Path, metavar="FILE", help="its PEM private key")


def tokens_from(args: argparse.Namespace) -> TokenCheck | None:
    """The tokens named by ``--tokens`` or ``--secret-file`` (None if neither).

    Raises:
        ConfigError: the file cannot be read or holds no valid tokens.
    """
    if args.tokens is None and args.secret_file is None:
        return None
    from fedloom.transport.grpc.security.tokens import Tokens, load_tokens

    if args.tokens is not None:
        return load_tokens(args.tokens)
    secret = read_secret(args.secret_file, what="shared secret", option="--secret-file")
    return Tokens(shared_secret=secret)


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context with `cert` and `key` (PEM).

    Raises:
        ConfigError: a file cannot be read, or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the certificate {cert} with key {key}: {exc}. Check the paths "
            "(`fedloom certs DIR` makes a pair).",
            field="--cert",
            value=str(cert),
        ) from exc
    return context


def _context_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    explicit = args.cert is not None or args.key is not None
    if args.certs is not None and explicit:
        raise ConfigError("pass either --certs DIR or --cert FILE --key FILE, not both.")
    if args.certs is not None:
        return ssl_context(args.certs / "server.pem", args.certs / "server.key")
    if explicit:
        if args.cert is None or args.key is None:
            raise ConfigError("--cert and --key go together; pass both (or --certs DIR).")
        return ssl_context(args.cert, args.key)
    return None


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted.

    Returns:
        0 when stopped with Ctrl-C, 2 for bad options (no credentials off loopback, an
        unreadable tokens file, a port in use, a store that does not exist), 1 when the
        store cannot be opened.
    """
    from fedloom.observe.dashboard import start_dashboard

    try:
        tokens = tokens_from(args)
        context = _context_from(args)
        board = start_dashboard(
            args.store, host=args.host, port=args.port, tokens=tokens, ssl_context=context
        )
    except ImportError as exc:  # tokens need the grpc extra's security module
        return fail(exc, status=2)
    except ConfigError as exc:
        return fail(exc, status=2)
    except FedloomError as exc:
        return fail(exc, status=1)
    print(f"dashboard on {board.url}", flush=True)
    try:
        board.wait()
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


def dashboard_address(text: str) -> str:
    """An argparse type: ``PORT`` or ``HOST:PORT`` for ``fedloom server --dashboard``."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535 or (":" in text and not host):
        raise argparse.ArgumentTypeError(
            f"expected PORT or HOST:PORT (e.g. 8050 or 127.0.0.1:8050), got {text!r}"
        )
    return text


def start_for_server(
    spec: str,
    *,
    server_address: str,
    store: str | Path,
    tokens: TokenCheck | None,
    cert: Path | None,
    key: Path | None,
) -> Dashboard:
    """The dashboard ``fedloom server --dashboard [HOST:]PORT`` serves next to its run.

    It listens on HOST (default: the server's host) with the server's tokens, and
    speaks HTTPS with the server's certificate when the server uses TLS.

    Raises:
        ConfigError: no tokens while HOST is not loopback, or the port is taken.
    """
    from fedloom.observe.dashboard import start_dashboard

    host, port = dashboard_host(spec, server_address)
    context = ssl_context(cert, key) if cert is not None and key is not None else None
    return start_dashboard(store, host=host, port=port, tokens=tokens, ssl_context=context)


def dashboard_host(spec: str, server_address: str) -> tuple[str, int]:
    """The host and port of ``--dashboard [HOST:]PORT``; HOST defaults to the server's."""
    host, _, port = spec.rpartition(":")
    if not host:
        host = server_address.rpartition(":")[0].strip("[]") or "127.0.0.1"
    return host, int(port)


def check_for_server(spec: str, *, server_address: str, tokens: TokenCheck | None) -> None:
    """Refuse ``--dashboard`` off loopback without tokens, before anything is written.

    Raises:
        ConfigError: the dashboard's host is not loopback and the server has no tokens.
    """
    from fedloom.observe.dashboard import check_exposure

    check_exposure(dashboard_host(spec, server_address)[0], tokens)
