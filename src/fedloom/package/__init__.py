"""Compute packages (FEDn's job): a client's code as a tar.gz, run as subprocesses on model files.

``fedloom package build DIR`` packs a folder holding ``fedloom.yaml``; the
server hands the package to each client when it joins; the client checks its
digest (and, when configured, a signature from an allow-listed key), unpacks it
inside its own folder and runs the entry points with `PackageClient`.
"""

from fedloom.package.archive import (
    Package,
    PackageLimits,
    build_package,
    check_package,
    generate_signing_key,
    load_public_keys,
    sign_package,
    unpack_package,
)
from fedloom.package.client import PackageClient, read_model_file
from fedloom.package.manifest import MANIFEST_NAME, Manifest, parse_manifest
from fedloom.package.runner import run_entry_point

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "Package",
    "PackageClient",
    "PackageLimits",
    "build_package",
    "check_package",
    "generate_signing_key",
    "load_public_keys",
    "parse_manifest",
    "read_model_file",
    "run_entry_point",
    "sign_package",
    "unpack_package",
]
