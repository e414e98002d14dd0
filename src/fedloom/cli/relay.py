"""``fedloom relay``: a server to its own clients and a client to an upstream server.

A relay (FEDn's combiner) listens for clients like ``fedloom server``, waits for
``--min-clients``, then joins ``--upstream`` as one client. Each upstream round
it runs the round on its own clients and sends back their mean weights with
their total number of examples, so a tree of relays gives the FedAvg of the
flat federation. It reads ``[run].seed`` from CONFIG.toml (the server's file),
so its clients get the seeds they would get from the server directly, and
``[server].fit_timeout_s`` as the deadline of its own rounds (a client that hangs
cannot hold the relay past the round its upstream server has given up on).

Security is on by default on both sides: towards its clients it needs what
``fedloom server`` needs (``--certs DIR`` or ``--cert``/``--key``, and ``--tokens``
or ``--secret-file``); towards upstream what ``fedloom client`` needs
(``--upstream-ca`` and ``--upstream-token-file`` or ``--upstream-token``).
``--insecure`` is the explicit opt-out for both (plain text, tokens optional).

``--forward-package`` fetches the upstream server's compute package before the
relay listens and hands it to the relay's clients (``fedloom client
--package-dir``), who check its digest and signature themselves.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.cli import server as server_command
from fedloom.cli._options import (
    SubParsers,
    fail,
    host_port,
    positive_int,
    read_secret,
    warn_insecure,
)
from fedloom.config import ServerConfig, load_config
from fedloom.errors import ConfigError, ConnectError, DecodeError

if TYPE_CHECKING:
    from fedloom.transport.grpc.security import TlsConfig

__all__ = ["add_parser", "run"]


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``relay`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "relay",
        help="serve clients and relay their rounds to an upstream server (a combiner)",
        description="Listen for clients, then join --upstream as one client that answers "
        "each round with its clients' FedAvg aggregate and total number of examples.",
    )
    parser.add_argument(
        "config", metavar="CONFIG.toml", type=Path, nargs="?", help="the server's config ([run])"
    )
    parser.add_argument("--upstream", required=True, type=host_port, metavar="HOST:PORT")
    parser.add_argument("--name", required=True, help="the relay's client name upstream")
    parser.add_argument(
        "--address",
        type=host_port,
        default="0.0.0.0:8081",
        metavar="HOST:PORT",
        help="listen here for the relay's clients (default 0.0.0.0:8081; port 0: any free)",
    )
    parser.add_argument(
        "--min-clients", type=positive_int, default=1, metavar="N", help="wait for N clients"
    )
    parser.add_argument("--max-clients", type=positive_int, metavar="N", help="admit at most N")
    parser.add_argument(
        "--min-fit", type=positive_int, default=1, metavar="N", help="results a round needs"
    )
    parser.add_argument("--seed", type=int, metavar="S", help="overrides [run].seed (default 0)")
    parser.add_argument(
        "--fit-timeout-s",
        type=float,
        metavar="S",
        help="downstream round deadline (default: the config's [server].fit_timeout_s, 600)",
    )
    parser.add_argument(
        "--join-timeout-s", type=float, default=300.0, metavar="S", help="wait for --min-clients"
    )
    parser.add_argument(
        "--heartbeat-s", type=float, default=2.0, metavar="S", help="clients' beat interval"
    )
    tls = parser.add_argument_group("TLS towards the relay's clients (required unless --insecure)")
    tls.add_argument("--certs", type=Path, metavar="DIR", help="use DIR/server.pem, server.key")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="the relay's PEM certificate")
    tls.add_argument("--key", type=Path, metavar="FILE", help="its PEM private key")
    tls.add_argument("--client-ca", type=Path, metavar="FILE", help="require client certificates")
    auth = parser.add_argument_group("tokens of the relay's clients").add_mutually_exclusive_group()
    auth.add_argument("--tokens", type=Path, metavar="FILE", help="per-client tokens (.toml/.json)")
    auth.add_argument("--secret-file", type=Path, metavar="FILE", help="one shared secret")
    up = parser.add_argument_group("upstream (required unless --insecure)")
    up.add_argument("--upstream-ca", type=Path, metavar="FILE", help="CA of upstream's certificate")
    up.add_argument("--upstream-cert", type=Path, metavar="FILE", help="relay's client cert (mTLS)")
    up.add_argument("--upstream-key", type=Path, metavar="FILE", help="its private key")
    token = up.add_mutually_exclusive_group()
    token.add_argument("--upstream-token", metavar="T", help="the relay's token upstream")
    token.add_argument(
        "--upstream-token-file", type=Path, metavar="FILE", help="a file with it, or tokens.toml"
    )
    parser.add_argument("--insecure", action="store_true", help="plain text on both sides")
    parser.add_argument(
        "--forward-package",
        action="store_true",
        help="fetch the upstream server's compute package and hand it to this relay's clients",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Listen, wait for clients, and relay rounds until the upstream server ends the run.

    Returns:
        0 when the upstream server ended the run, 2 for bad options or config, 1 when
        too few clients joined or upstream refused the relay, 130 when interrupted.
    """
    try:
        from fedloom.relaying import relay
    except ImportError as exc:  # no grpc extra: the message names it
        return fail(exc, status=2)
    try:
        config = None if args.config is None else load_config(args.config, role="server")
        seed = args.seed if args.seed is not None else (config.run.seed if config else 0)
        fit_timeout_s = args.fit_timeout_s
        if fit_timeout_s is None:  # the upstream deadline: past it the round is lost anyway
            server = config.server if config is not None else None
            fit_timeout_s = (server or ServerConfig()).fit_timeout_s
        tls, tokens = server_command.listening_security(args)
        upstream_tls = _upstream_tls(args)
        upstream_token = _upstream_token(args)
    except ConfigError as exc:
        return fail(exc, status=2)
    if args.insecure:
        warn_insecure()
    host = args.address.rpartition(":")[0]

    def ready(port: int) -> None:
        print(f"listening on {host}:{port}", flush=True)
        print(f"waiting for {args.min_clients} clients, then joining {args.upstream}", flush=True)

    try:
        tasks = relay(
            upstream=args.upstream,
            name=args.name,
            address=args.address,
            seed=seed,
            min_clients=args.min_clients,
            max_clients=args.max_clients,
            join_timeout_s=args.join_timeout_s,
            fit_timeout_s=fit_timeout_s,
            min_fit=args.min_fit,
            tls=tls,
            tokens=tokens,
            upstream_tls=upstream_tls,
            upstream_token=upstream_token,
            heartbeat_s=args.heartbeat_s,
            on_ready=ready,
            forward_package=args.forward_package,
        )
    except (ConnectError, DecodeError) as exc:
        return fail(exc, status=1)
    except ConfigError as exc:
        return fail(exc, status=2)
    except KeyboardInterrupt:
        return fail("interrupted", status=130)
    print(f"the server ended the run; relay '{args.name}' ran {tasks} tasks", flush=True)
    return 0


def _upstream_tls(args: argparse.Namespace) -> TlsConfig | None:
    """TLS towards the upstream server, with every file read now; None under ``--insecure``."""
    from fedloom.transport.grpc.security import TlsConfig, channel_credentials

    given = [args.upstream_ca, args.upstream_cert, args.upstream_key]
    if args.insecure:
        if any(value is not None for value in given):
            raise ConfigError(
                "--insecure turns TLS off, but --upstream-ca/--upstream-cert/--upstream-key "
                "were given. Drop --insecure (recommended) or those options."
            )
        return None
    if args.upstream_ca is None:
        raise ConfigError(
            "the relay needs the CA of the upstream server's certificate: pass "
            "--upstream-ca FILE (e.g. the server's certs/ca.pem); or pass --insecure for "
            "plain text on a trusted network.",
            field="--upstream-ca",
        )
    tls = TlsConfig(ca=args.upstream_ca, cert=args.upstream_cert, key=args.upstream_key)
    channel_credentials(tls)  # reads the files now, so a wrong path is a usage error
    return tls


def _upstream_token(args: argparse.Namespace) -> str | None:
    """The relay's upstream token (a tokens file: the entry of ``--name``)."""
    if args.upstream_token is not None:
        return str(args.upstream_token)
    path: Path | None = args.upstream_token_file
    if path is None:
        if args.insecure:
            return None
        raise ConfigError(
            "the relay needs a token upstream: pass --upstream-token-file FILE (a file with "
            "its token, or the server's tokens.toml) or --upstream-token T; or pass "
            "--insecure for a server that checks none.",
            field="--upstream-token-file",
        )
    if path.suffix not in (".toml", ".json"):
        return read_secret(path, what="token", option="--upstream-token-file")
    from fedloom.transport.grpc.security import load_tokens

    known = load_tokens(path).clients
    if args.name not in known:
        raise ConfigError(
            f"--upstream-token-file {path} has no token for relay '{args.name}'; it lists: "
            f"{', '.join(sorted(known))}. Pass --name as listed there.",
            field="--upstream-token-file",
            value=str(path),
        )
    return known[args.name]
