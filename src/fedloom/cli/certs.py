"""``fedloom certs DIR``: development certificates and tokens for ``fedloom server``/``client``.

Writes a CA (``ca.pem``; its key is not kept), a server certificate for the
``--host`` names, a certificate per ``--client`` and ``tokens.toml`` with one
generated token per client. An existing ``tokens.toml`` keeps its tokens; clients
missing from it are added, and its clients get certificates too (so ``--overwrite``
re-issues every known client's certificate under the new CA). Certificates are never
overwritten without ``--overwrite``. For development only: production deployments use their own CA.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.cli._options import SubParsers, fail, positive_int
from fedloom.errors import ConfigError

if TYPE_CHECKING:
    from fedloom.transport.grpc.security import DevCerts

__all__ = ["TOKENS_FILE", "add_parser", "run"]

TOKENS_FILE = "tokens.toml"
_HOSTS = ("localhost", "127.0.0.1")


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``certs`` and its options on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "certs",
        help="make development TLS certificates and client tokens",
        description="Make a development CA, a server certificate, client certificates and "
        f"{TOKENS_FILE} (one token per client) in DIR, for `fedloom server --certs DIR`.",
    )
    parser.add_argument("directory", metavar="DIR", type=Path, help="where to write the files")
    parser.add_argument(
        "--host",
        action="append",
        metavar="H",
        help=f"a name or IP the server is reached by (repeat; default: {', '.join(_HOSTS)})",
    )
    parser.add_argument(
        "--client", action="append", metavar="NAME", help="a client name (repeat; default: client)"
    )
    parser.add_argument("--days", type=positive_int, default=30, help="validity (default 30)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing certificates")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the certificates and tokens, then print the files and how to use them.

    Returns:
        0 on success, 2 for bad options or when a file exists (without ``--overwrite``).
    """
    try:
        from fedloom.transport.grpc.security import make_dev_certs
    except ImportError as exc:  # no grpc extra: the message names it
        return fail(exc, status=2)
    directory: Path = args.directory
    hosts: list[str] = args.host or list(_HOSTS)
    try:
        existing = _existing_tokens(directory / TOKENS_FILE)
        # Every known client gets a certificate of the (new) CA, so none is left stale.
        listed: list[str] = args.client or ([] if existing else ["client"])
        names = [*listed, *(name for name in existing if name not in listed)]
        certs = make_dev_certs(
            directory, hosts=hosts, client_names=names, days=args.days, overwrite=args.overwrite
        )
    except ConfigError as exc:
        if exc.field == "directory":  # a file exists: say which, in the command's terms
            return fail(
                f"{exc.value} already exists; refusing to overwrite it. Choose another "
                "DIR, or pass --overwrite to replace the certificates (tokens are kept).",
                status=2,
            )
        return fail(exc, status=2)
    added = _add_tokens(directory / TOKENS_FILE, names, existing)
    _report(certs, hosts, added, days=args.days)
    return 0


def _existing_tokens(path: Path) -> dict[str, str]:
    """The tokens already in `path` (none if it does not exist)."""
    if not path.exists():
        return {}
    from fedloom.transport.grpc.security import load_tokens

    return dict(load_tokens(path).clients)


def _add_tokens(path: Path, names: Sequence[str], existing: dict[str, str]) -> list[str]:
    """Append a generated token for each of `names` not in `existing`; the names added."""
    from fedloom.transport.grpc.security import generate_token

    added = [name for name in names if name not in existing]
    if not added and path.exists():
        return added
    lines = [f'"{name}" = "{token}"' for name, token in existing.items()]
    lines += [f'"{name}" = "{generate_token()}"' for name in added]
    header = "# One token per client: give each client only its own. Keep this file secret.\n"
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8") as handle:
        handle.write(header + "\n".join(lines) + "\n")
    os.replace(temporary, path)
    return added


def _report(certs: DevCerts, hosts: Sequence[str], added: Sequence[str], *, days: int) -> None:
    folder = certs.ca.parent
    rows = [
        (certs.ca, "the CA: clients trust the server's certificate through it"),
        (certs.server.cert, f"the server's certificate, for {', '.join(hosts)}"),
        (certs.server.key, "its private key (keep it on the server)"),
    ]
    for name, files in certs.clients.items():
        rows += [(files.cert, f"client '{name}': certificate for mutual TLS"), (files.key, "")]
    kept = "" if added else " (kept as it was)"
    rows.append((folder / TOKENS_FILE, f"one token per client{kept}; keep it secret"))
    width = max(len(path.name) for path, _ in rows)
    print(f"wrote development certificates, valid for {days} days, to {folder}:")
    for path, what in rows:
        print(f"  {path.name:<{width}}  {what or 'its private key'}")
    name = next(iter(certs.clients))
    tokens = folder / TOKENS_FILE
    print(
        "\nstart the server (add --client-ca "
        f"{certs.ca} to require client certificates):\n"
        f"  fedloom server CONFIG.toml --certs {folder} --tokens {tokens}\n"
        "start each client (its token is read from the tokens file by --name):\n"
        f"  fedloom client CONFIG.toml --server {hosts[0]}:8080 --name {name} "
        f"--partition-id 0 --certs {folder} --token-file {tokens}\n"
        "on other machines, give each client ca.pem, its own NAME.pem/NAME.key and a file\n"
        "with only its own token (--token-file). The CA's key was not kept: to add clients,\n"
        "run again with --overwrite and hand out the new ca.pem."
    )
