"""Regenerate ``src/fedloom/proto/fleet_pb2*.py`` and ``fleet_pb2.pyi`` from ``fleet.proto``.

Run from anywhere with grpcio-tools installed (``pip install grpcio-tools``)::

    python scripts/gen_proto.py

It is the same as running, in the repository root::

    python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src \\
        --pyi_out=src src/fedloom/proto/fleet.proto

so the generated modules import each other as ``fedloom.proto.fleet_pb2``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ARGS", "main"]

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "grpc_tools.protoc",
    "-I",
    "src",
    "--python_out=src",
    "--grpc_python_out=src",
    "--pyi_out=src",
    "src/fedloom/proto/fleet.proto",
]


def main() -> int:
    """Run protoc in the repository root and return its exit status."""
    try:
        from grpc_tools import protoc
    except ImportError:
        print("gen_proto needs grpcio-tools: pip install grpcio-tools", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    status = int(protoc.main(ARGS))
    if status != 0:
        print(f"protoc failed with status {status}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
