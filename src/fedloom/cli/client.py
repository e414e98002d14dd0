"""``fedloom client``: build one client from the user's code and serve a server's tasks.

The client comes from a config (``[clients].app``, with ``[data]`` and ``[run].seed``)
or from ``--app module:function``; either way ``client_fn`` is called once with a
`ClientContext` naming this client and its partition. With ``--package-dir DIR``
the client's code is instead the server's compute package, fetched, checked
(digest, allow-listed signers with ``--trust``) and unpacked into DIR. The client then dials the
server, serves tasks until the server ends the run (exit 0), and retries with
backoff while the server cannot be reached. A refused token or certificate is
final (exit 1). Security is on by default: it needs the CA that signed the
server's certificate (``--certs DIR`` or ``--ca FILE``) and a token, or ``--insecure``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.cli._options import (
    SubParsers,
    fail,
    host_port,
    non_negative_int,
    positive_int,
    read_secret,
    warn_insecure,
)
from fedloom.config import ClientApp, load_config
from fedloom.core import Client, ClientContext
from fedloom.errors import ConfigError, ConnectError, PackageError

if TYPE_CHECKING:
    from fedloom.transport.grpc.security import TlsConfig

__all__ = ["add_parser", "run"]


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``client`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "client",
        help="join a `fedloom server` as one client",
        description="Build one client (from CONFIG.toml's [clients].app, or --app) and serve "
        "the server's tasks until it ends the run.",
    )
    parser.add_argument(
        "config", metavar="CONFIG.toml", type=Path, nargs="?", help="the federation's config"
    )
    parser.add_argument("--app", metavar="MODULE:FUNCTION", help="client_fn, instead of a config")
    parser.add_argument("--server", required=True, type=host_port, metavar="HOST:PORT")
    parser.add_argument("--name", required=True, help="this client's name (its token's owner)")
    parser.add_argument("--partition-id", type=non_negative_int, metavar="I", help="data share I")
    parser.add_argument(
        "--num-partitions", type=positive_int, metavar="N", help="default: [clients].num_clients"
    )
    parser.add_argument("--seed", type=int, metavar="S", help="overrides [run].seed (default 0)")
    tls = parser.add_argument_group("TLS (required unless --insecure)")
    trust = tls.add_mutually_exclusive_group()
    trust.add_argument("--ca", type=Path, metavar="FILE", help="the CA of the server's certificate")
    trust.add_argument(
        "--certs", type=Path, metavar="DIR", help="DIR/ca.pem, and DIR/NAME.pem if it exists"
    )
    tls.add_argument("--cert", type=Path, metavar="FILE", help="this client's certificate (mTLS)")
    tls.add_argument("--key", type=Path, metavar="FILE", help="its private key")
    token = parser.add_argument_group("token (required unless --insecure)")
    tokens = token.add_mutually_exclusive_group()
    tokens.add_argument("--token", metavar="T", help="the token (visible to `ps`; prefer a file)")
    tokens.add_argument(
        "--token-file", type=Path, metavar="FILE", help="a file with the token, or tokens.toml"
    )
    parser.add_argument("--insecure", action="store_true", help="plain text (trusted networks)")
    package = parser.add_argument_group("compute package (instead of CONFIG.toml or --app)")
    package.add_argument(
        "--package-dir", type=Path, metavar="DIR", help="fetch the server's package into DIR"
    )
    package.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="KEY.pub",
        help="run only packages signed by this key (repeat for several signers)",
    )
    package.add_argument("--package-sha256", metavar="HEX", help="the digest it must have")
    package.add_argument(
        "--data",
        default="",
        metavar="PATH",
        help="what {data} stands for (an existing relative path is made absolute, since entry "
        "points run in the unpacked package's folder)",
    )
    package.add_argument(
        "--train-timeout", type=float, default=3600.0, metavar="S", help="default 3600"
    )
    package.add_argument(
        "--validate-timeout", type=float, default=600.0, metavar="S", help="default 600"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the client, connect, and serve tasks until the run ends.

    Returns:
        0 when the server ended the run, 2 for bad options or config, 1 when the
        server refused this client or the client could not be built, 130 when interrupted.
    """
    try:
        from fedloom.deployment import connect
    except ImportError as exc:  # no grpc extra: the message names it
        return fail(exc, status=2)
    if args.package_dir is not None:
        return _run_package(args)
    try:
        app = _client_app(args)
        context = _context(args, app)
        tls = _tls(args)
        token = _token(args)
    except ConfigError as exc:
        return fail(exc, status=2)
    if args.insecure:
        warn_insecure()
    try:
        client: Client = app.client_fn(context)
    except Exception as exc:  # user code: say where it failed, keep the cause for -vv
        where = f"partition {context.partition_id} of {context.num_partitions}"
        return fail(
            f"building client '{args.name}' ({where}) raised {type(exc).__name__}: {exc}",
            status=1,
        )
    print(f"client '{args.name}' connecting to {args.server}", flush=True)
    try:
        tasks = connect(client, address=args.server, name=args.name, token=token, tls=tls)
    except ConnectError as exc:
        return fail(exc, status=1)
    except ConfigError as exc:
        return fail(exc, status=2)
    except KeyboardInterrupt:
        return fail("interrupted", status=130)
    print(f"the server ended the run; client '{args.name}' ran {tasks} tasks", flush=True)
    return 0


def _run_package(args: argparse.Namespace) -> int:
    """Serve the server's compute package: fetch, check, unpack, then run its entry points."""
    from fedloom.deployment import connect_package
    from fedloom.package import load_public_keys

    try:
        if args.config is not None or args.app is not None:
            raise ConfigError(
                "--package-dir runs the server's compute package; drop CONFIG.toml and --app, "
                "or drop --package-dir to run your own code."
            )
        tls = _tls(args)
        token = _token(args)
        trusted = load_public_keys(args.trust)
    except ConfigError as exc:
        return fail(exc, status=2)
    if args.insecure:
        warn_insecure()
    print(f"client '{args.name}' fetching the package from {args.server}", flush=True)
    try:
        tasks = connect_package(
            address=args.server,
            name=args.name,
            workdir=args.package_dir,
            token=token,
            tls=tls,
            trusted_keys=trusted,
            sha256=args.package_sha256,
            data=_data_argument(args.data),
            train_timeout_s=args.train_timeout,
            validate_timeout_s=args.validate_timeout,
        )
    except (ConfigError, PackageError) as exc:
        return fail(exc, status=2)
    except ConnectError as exc:
        return fail(exc, status=1)
    except KeyboardInterrupt:
        return fail("interrupted", status=130)
    print(f"the server ended the run; client '{args.name}' ran {tasks} tasks", flush=True)
    return 0


def _data_argument(data: str) -> str:
    """``--data`` as entry points see it: an existing relative path, made absolute.

    Entry points run in the unpacked package's folder, where a path relative to the
    folder the client was started in would name nothing.
    """
    path = Path(data)
    if data and not path.is_absolute() and path.exists():
        return str(path.resolve())
    return data


def _client_app(args: argparse.Namespace) -> ClientApp:
    """The client factory and data split, from the config or from ``--app``."""
    if (args.config is None) == (args.app is None):
        raise ConfigError(
            "pass either CONFIG.toml (its [clients].app builds the client) or "
            "--app MODULE:FUNCTION, not "
            f"{'both' if args.app is not None else 'neither'}."
        )
    if args.config is not None:
        return load_config(args.config, role="client").build_client()
    from fedloom._entrypoints import resolve_entry_point

    # The "file" only frames messages ("--app in the current folder: ...");
    # its folder, the current one, is searched first, as a config's folder is.
    client_fn = resolve_entry_point(
        args.app, key="--app", config_file=Path("the current folder"), num_args=1
    )
    return ClientApp(client_fn=client_fn, partitioner=None, seed=0, num_partitions=None)


def _context(args: argparse.Namespace, app: ClientApp) -> ClientContext:
    """This client's `ClientContext`; its partition must be unambiguous."""
    num_partitions = args.num_partitions or app.num_partitions or 1
    partition_id = args.partition_id
    if partition_id is None and num_partitions > 1:
        raise ConfigError(
            f"the data is split {num_partitions} ways; pass --partition-id I with I in "
            f"0..{num_partitions - 1}, a different one for each client.",
            field="--partition-id",
        )
    partition_id = partition_id or 0
    if partition_id >= num_partitions:
        raise ConfigError(
            f"--partition-id {partition_id} is not below the number of partitions "
            f"{num_partitions}. Pass --num-partitions N with N > {partition_id}.",
            field="--partition-id",
            value=partition_id,
        )
    return ClientContext(
        client_id=args.name,
        partition_id=partition_id,
        num_partitions=num_partitions,
        seed=args.seed if args.seed is not None else app.seed,
        partitioner=app.partitioner,
    )


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    """The client's TLS settings, with every file read now; None under ``--insecure``."""
    from fedloom.transport.grpc.security import TlsConfig, channel_credentials

    cert, key = args.cert, args.key
    ca = args.ca
    if args.certs is not None:
        ca = args.certs / "ca.pem"
        if cert is None and key is None and (args.certs / f"{args.name}.pem").exists():
            cert, key = args.certs / f"{args.name}.pem", args.certs / f"{args.name}.key"
    wants_tls = ca is not None or cert is not None or key is not None
    if args.insecure and wants_tls:
        raise ConfigError(
            "--insecure turns TLS off, but TLS options were given. Drop --insecure "
            "(recommended) or the TLS options."
        )
    if not wants_tls:
        if args.insecure:
            return None
        raise ConfigError(
            "the client needs TLS: pass --certs DIR (the server's `fedloom certs DIR` "
            "folder, or a copy of its ca.pem) or --ca FILE; or pass --insecure for a "
            "plain-text server on a trusted network."
        )
    tls = TlsConfig(ca=ca, cert=cert, key=key)
    channel_credentials(tls)  # reads the files now, so a wrong path is a usage error
    return tls


def _token(args: argparse.Namespace) -> str | None:
    """The token from ``--token`` or ``--token-file`` (a tokens file: this name's entry)."""
    if args.token is not None:
        return str(args.token)
    if args.token_file is None:
        if args.insecure:
            return None
        raise ConfigError(
            "the client needs a token: pass --token-file FILE (a file with this client's "
            "token, or the server's tokens.toml) or --token T; or pass --insecure for a "
            "server that checks none."
        )
    path: Path = args.token_file
    if path.suffix not in (".toml", ".json"):
        return read_secret(path, what="token", option="--token-file")
    from fedloom.transport.grpc.security import load_tokens

    known = load_tokens(path).clients
    if args.name not in known:
        raise ConfigError(
            f"--token-file {path} has no token for client '{args.name}'; it lists: "
            f"{', '.join(sorted(known))}. Pass --name as listed there.",
            field="--token-file",
            value=str(path),
        )
    return known[args.name]
