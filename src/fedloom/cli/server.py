"""``fedloom server CONFIG.toml``: run the federation of a TOML config over gRPC.

The config is the one ``fedloom simulate`` reads; the server uses ``[run]``,
``[strategy]``, ``[stop]``, ``[clients].evaluate``/``initial_weights`` and the
optional ``[server]`` section, whose values the flags override. Security is on by
default: the server needs a certificate (``--certs DIR`` from ``fedloom certs DIR``,
or ``--cert``/``--key``) and tokens (``--tokens FILE`` or ``--secret-file FILE``);
``--insecure`` is the explicit opt-out (plain text, tokens optional).

It prints ``listening on HOST:PORT`` (flushed) as soon as it listens, a line per
round, the final metrics and the run folder, which holds the same files as a
simulation's. Every round is recorded whole in the store (``store.db`` in the run
folder, or ``--store URL``); ``--resume RUN`` restarts a killed server after the
run's last recorded round, and the clients reconnect by themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloom.cli._options import (
    SubParsers,
    fail,
    host_port,
    positive_int,
    read_secret,
    warn_insecure,
)
from fedloom.cli._runs import (
    add_store_options,
    start_recording,
    summarize,
)
from fedloom.cli.dashboard import check_for_server, dashboard_address, start_for_server
from fedloom.config import ServerConfig, ServerFederation, SimulationConfig, load_config
from fedloom.errors import ConfigError, FedloomError, PackageError, StoreError
from fedloom.observe import ProgressBar
from fedloom.observe.tensorboard import TensorBoardLogger
from fedloom.store import RunFolder

if TYPE_CHECKING:
    from fedloom.transport.grpc.security import TlsConfig, Tokens

__all__ = ["add_parser", "listening_security", "run"]


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``server`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "server",
        help="run a federation over gRPC for clients to join",
        description="Run the federation of a TOML config over gRPC; clients join with "
        "`fedloom client`. Needs TLS (--certs DIR, made by `fedloom certs DIR`) and tokens "
        "(--tokens FILE), or --insecure for plain text on a trusted network.",
    )
    parser.add_argument("config", metavar="CONFIG.toml", type=Path, help="the config file")
    parser.add_argument(
        "--address", type=host_port, metavar="HOST:PORT", help="listen here (port 0: any free)"
    )
    parser.add_argument("--min-clients", type=positive_int, metavar="N", help="wait for N clients")
    parser.add_argument("--max-clients", type=positive_int, metavar="N", help="admit at most N")
    parser.add_argument("--rounds", type=positive_int, metavar="N", help="overrides [run].rounds")
    parser.add_argument("--run-dir", type=Path, metavar="DIR", help="overrides [run].dir")
    tls = parser.add_argument_group("TLS (required unless --insecure)")
    tls.add_argument("--certs", type=Path, metavar="DIR", help="use DIR/server.pem, server.key")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="the server's PEM certificate")
    tls.add_argument("--key", type=Path, metavar="FILE", help="its PEM private key")
    tls.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS), e.g. DIR/ca.pem",
    )
    auth = parser.add_argument_group(
        "tokens (required unless --insecure)"
    ).add_mutually_exclusive_group()
    auth.add_argument("--tokens", type=Path, metavar="FILE", help="per-client tokens (.toml/.json)")
    auth.add_argument("--secret-file", type=Path, metavar="FILE", help="one shared secret")
    parser.add_argument(
        "--insecure", action="store_true", help="plain text; tokens optional (trusted networks)"
    )
    parser.add_argument("--no-progress", action="store_true", help="print no per-round lines")
    add_store_options(parser)
    parser.add_argument(
        "--dashboard",
        type=dashboard_address,
        metavar="[HOST:]PORT",
        help="also serve the web dashboard of the run (HOST: the server's by default; off "
        "loopback it needs the server's tokens and uses its certificate)",
    )
    parser.add_argument(
        "--package",
        type=Path,
        metavar="FILE.tar.gz",
        help="hand this compute package (`fedloom package build`) to clients that ask for it",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, check security options, serve the run, print a summary.

    Returns:
        0 on success, 2 for bad options or config, 1 when the run failed (e.g. too few
        clients joined in time), 130 when interrupted.
    """
    try:
        from fedloom.deployment import serve
    except ImportError as exc:  # no grpc extra: the message names it
        return fail(exc, status=2)
    try:
        config = _with_flags(load_config(args.config, role="server"), args)
        federation = config.build_server()
        tls, tokens = listening_security(args)
        if args.dashboard is not None:
            check_for_server(
                args.dashboard, server_address=federation.server.address, tokens=tokens
            )
    except ConfigError as exc:
        return fail(exc, status=2)
    if args.insecure:
        warn_insecure()
    settings = federation.server
    record = _record(config, federation, tls=tls is not None, tokens=tokens)
    try:
        folder, recording = start_recording(config, args, record, federation.seed)
    except (ConfigError, StoreError) as exc:
        return fail(exc, status=2)
    board = None
    if args.dashboard is not None:
        try:
            board = start_for_server(
                args.dashboard,
                server_address=settings.address,
                store=args.store if args.store is not None else folder,
                tokens=tokens,
                cert=tls.cert if tls is not None else None,
                key=tls.key if tls is not None else None,
            )
        except FedloomError as exc:
            recording.store.close()
            return fail(exc, status=2)
        print(f"dashboard on {board.url}", flush=True)
    progress = None if args.no_progress else ProgressBar(rounds=federation.rounds)
    host = settings.address.rpartition(":")[0]

    def ready(port: int) -> None:
        print(f"listening on {host}:{port}", flush=True)
        print(f"waiting for {settings.min_clients} clients", flush=True)

    try:
        result = serve(
            rounds=federation.rounds,
            strategy=federation.strategy,
            address=settings.address,
            min_clients=settings.min_clients or 1,
            max_clients=settings.max_clients,
            join_timeout_s=settings.join_timeout_s,
            fit_timeout_s=settings.fit_timeout_s,
            tls=tls,
            tokens=tokens,
            seed=federation.seed,
            initial_weights=federation.initial_weights,
            evaluate_fn=federation.evaluate_fn,
            callbacks=[
                *federation.callbacks,
                RunFolder(folder, config=record),
                TensorBoardLogger(folder),
                *([progress] if progress is not None else []),
            ],
            heartbeat_s=settings.heartbeat_s,
            on_ready=ready,
            recording=recording,
            on_connected=(
                None if board is None else functools.partial(board.show_connected, recording.run_id)
            ),
            package=args.package,
            **_protection(settings),
        )
    except (ConfigError, PackageError) as exc:
        return fail(exc, status=2)
    except FedloomError as exc:
        return fail(f"{exc}\nthe rounds done so far are in {folder}", status=1)
    except KeyboardInterrupt:
        return fail(f"interrupted; the rounds done so far are in {folder}", status=130)
    finally:
        if board is not None:
            board.stop()
        recording.store.close()
        if progress is not None:
            progress.close()
    summarize(result, folder, federation.keep_best)
    return 0


def _protection(settings: ServerConfig) -> dict[str, Any]:
    """``serve``'s `limits` and `quotas` from ``[server]`` (absent keys keep their defaults)."""
    from fedloom.transport.grpc.quotas import Quotas
    from fedloom.transport.grpc.wire import Limits

    quotas: dict[str, Any] = {
        "upload_bytes": settings.upload_quota_bytes,
        "joins_per_client": settings.joins_per_client,
        "window_s": settings.quota_window_s,
    }
    given = {key: value for key, value in quotas.items() if value is not None}
    limits = None
    if settings.max_message_bytes is not None:
        limits = Limits(max_message_bytes=settings.max_message_bytes)
    return {"limits": limits, "quotas": Quotas(**given)}


def _with_flags(config: SimulationConfig, args: argparse.Namespace) -> SimulationConfig:
    """`config` with the command-line flags in place of its values."""
    flags = {
        "address": args.address,
        "min_clients": args.min_clients,
        "max_clients": args.max_clients,
    }
    server = config.server if config.server is not None else ServerConfig()
    server = dataclasses.replace(server, **{k: v for k, v in flags.items() if v is not None})
    run = config.run
    if args.rounds is not None:
        run = dataclasses.replace(run, rounds=args.rounds)
    return dataclasses.replace(config, run=run, server=server)


def listening_security(args: argparse.Namespace) -> tuple[TlsConfig | None, Tokens | None]:
    """The `TlsConfig` and `Tokens` of a listening command (server, relay, peer) from its options.

    None where --insecure allows. The relay and peer commands share it so that their
    downstream security is checked exactly as the server's is.

    Raises:
        ConfigError: security options are missing, conflict, or name unreadable files.
    """
    from fedloom.transport.grpc.security import (
        TlsConfig,
        Tokens,
        load_tokens,
        server_credentials,
    )

    explicit = args.cert is not None or args.key is not None
    if args.certs is not None and explicit:
        raise ConfigError("pass either --certs DIR or --cert FILE --key FILE, not both.")
    wants_tls = args.certs is not None or explicit or args.client_ca is not None
    if args.insecure and wants_tls:
        raise ConfigError(
            "--insecure turns TLS off, but TLS options were given. Drop --insecure "
            "(recommended) or the TLS options."
        )
    tls: TlsConfig | None = None
    if args.certs is not None:
        tls = TlsConfig(
            cert=args.certs / "server.pem", key=args.certs / "server.key", client_ca=args.client_ca
        )
    elif wants_tls:
        tls = TlsConfig(cert=args.cert, key=args.key, client_ca=args.client_ca)
    if tls is None and not args.insecure:
        raise ConfigError(
            "the server needs TLS: pass --certs DIR (made with `fedloom certs DIR`) or "
            "--cert FILE --key FILE; or pass --insecure for plain text on a trusted network."
        )
    if tls is not None:
        server_credentials(tls)  # reads the files now, before any run folder is made
    tokens: Tokens | None = None
    if args.tokens is not None:
        tokens = load_tokens(args.tokens)
    elif args.secret_file is not None:
        secret = read_secret(args.secret_file, what="shared secret", option="--secret-file")
        tokens = Tokens(shared_secret=secret)
    elif not args.insecure:
        raise ConfigError(
            "the server needs tokens: pass --tokens FILE (one token per client, e.g. "
            "DIR/tokens.toml from `fedloom certs DIR --client NAME`) or --secret-file FILE "
            "(one shared secret); or pass --insecure to accept any client."
        )
    return tls, tokens


def _record(
    config: SimulationConfig, federation: ServerFederation, *, tls: bool, tokens: Tokens | None
) -> dict[str, Any]:
    """What ``config.json`` holds: the checked config, the strategy and the security used."""
    resolved = {
        "strategy": federation.strategy.get_config(),
        "server": dataclasses.asdict(federation.server),
        "callbacks": [repr(callback) for callback in federation.callbacks],
        "tls": tls,
        "tokens": repr(tokens),  # Tokens' repr never shows a token
    }
    record = {"file": str(config.path.resolve()), "config": config.to_dict(), "resolved": resolved}
    loaded: dict[str, Any] = json.loads(json.dumps(record, default=str))
    return loaded
