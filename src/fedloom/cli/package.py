"""``fedloom package``: build, check and sign compute packages.

``build DIR`` packs a folder holding ``fedloom.yaml`` into a reproducible tar.gz
and writes its sha256 next to it (and a signature with ``--sign KEY``); ``check
FILE`` runs every check a client makes before it unpacks; ``keygen FILE``
makes an Ed25519 signing key and its public half for clients' ``--trust``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedloom.cli._options import SubParsers, fail
from fedloom.errors import ConfigError, PackageError

__all__ = ["add_parser"]


def add_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``package`` and its subcommands on the ``fedloom`` parser."""
    parser = subparsers.add_parser(
        "package",
        help="build, check and sign compute packages",
        description="Compute packages hold a client's code; the server hands them out and "
        "clients run their train/validate entry points as subprocesses.",
    )
    commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)
    build = commands.add_parser("build", help="pack DIR (with fedloom.yaml) into a tar.gz")
    build.add_argument("folder", type=Path, metavar="DIR")
    build.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: DIR.tar.gz")
    build.add_argument("--sign", type=Path, metavar="KEY", help="sign with this private key")
    build.set_defaults(handler=_build)
    check = commands.add_parser("check", help="check a package as a client would")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--sha256", metavar="HEX", help="the digest it must have")
    check.add_argument(
        "--trust", type=Path, action="append", default=[], metavar="KEY.pub", help="signers"
    )
    check.set_defaults(handler=_check)
    keygen = commands.add_parser("keygen", help="make an Ed25519 signing key (and KEY.pub)")
    keygen.add_argument("key", type=Path, metavar="KEY")
    keygen.set_defaults(handler=_keygen)


def _build(args: argparse.Namespace) -> int:
    from fedloom.package import build_package

    try:
        package = build_package(args.folder, args.output, signing_key=args.sign)
    except (PackageError, ConfigError) as exc:
        return fail(exc, status=2)
    print(f"{package.path}  {len(package.files)} files")
    print(f"sha256 {package.sha256}")
    if args.sign is not None:
        print(f"signed: {package.path}.sig")
    return 0


def _check(args: argparse.Namespace) -> int:
    from fedloom.package import check_package, load_public_keys

    try:
        trusted = load_public_keys(args.trust)
        package = check_package(args.file, sha256=args.sha256, trusted_keys=trusted)
    except FileNotFoundError:
        return fail(f"no package at '{args.file}'.", status=2)
    except (PackageError, ConfigError) as exc:
        return fail(exc, status=1)
    entry_points = [
        name for name in ("train", "validate", "startup", "init") if package.manifest.command(name)
    ]
    print(f"ok: {package.path} ({len(package.files)} files)")
    print(f"sha256 {package.sha256}")
    print(f"entry points: {', '.join(entry_points)}")
    if trusted:
        print("signature: valid, from an allow-listed key")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from fedloom.package import generate_signing_key

    if args.key.exists():
        return fail(f"'{args.key}' exists; choose another file name.", status=2)
    private, public = generate_signing_key(args.key)
    print(f"private key: {private} (keep it secret)")
    print(f"public key:  {public} (give it to clients: --trust {public})")
    return 0
