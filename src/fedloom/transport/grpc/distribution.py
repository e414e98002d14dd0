"""Hand a compute package from the server to its clients over the fleet's frames.

The server offers at most one package; a client fetches it with the
``FetchPackage`` call before it joins. The stream is the usual frames (a
header of kind ``"package"``, data, a sha256 of the data): the declared size
is checked against the client's limit before anything is allocated, and the
digest against the bytes. Trusting the package (a pinned digest, a signature
from an allow-listed key) is the client's decision, made by
`fedloom.package.check_package` on the bytes written here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedloom.errors import ConfigError, DecodeError
from fedloom.proto import fleet_pb2, fleet_pb2_grpc
from fedloom.transport.grpc.security import TlsConfig, bearer_metadata, channel_credentials
from fedloom.transport.grpc.wire import (
    CHUNK_BYTES,
    WIRE_SCHEMA,
    Limits,
    _frames,
    _read,
    _scalars,
    _Stream,
    scalars_to_proto,
)

__all__ = ["PackageOffer", "decode_package", "encode_package", "fetch_package"]

_PACKAGE_KINDS = {"package": (True, False)}


@dataclass(frozen=True, slots=True)
class PackageOffer:
    """The package a server hands out: its bytes, digest, file name and signature (hex)."""

    data: bytes
    sha256: str
    filename: str
    signature: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> PackageOffer:
        """Offer the package at `path`, with ``<path>.sig`` when it exists."""
        archive = Path(path)
        try:
            data = archive.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the package '{archive}': {exc.strerror}. Build one with "
                "`fedloom package build DIR`.",
                field="package",
            ) from None
        signature = Path(f"{archive}.sig")
        return cls(
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            filename=archive.name,
            signature=signature.read_text().strip() if signature.is_file() else "",
        )


def encode_package(
    offer: PackageOffer, *, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[fleet_pb2.Frame]:
    """The frames of `offer`."""
    header = fleet_pb2.Header(schema=WIRE_SCHEMA, kind="package")
    config = {"sha256": offer.sha256, "filename": offer.filename, "signature": offer.signature}
    scalars_to_proto(config, header.config)
    return _frames(header, ((offer.data,),), chunk_bytes)


def decode_package(frames: Iterable[fleet_pb2.Frame], *, max_bytes: int) -> PackageOffer:
    """Read a package stream of at most `max_bytes` bytes of archive.

    Raises:
        DecodeError: the stream is malformed, truncated, damaged, or over `max_bytes`.
    """
    stream = _Stream("package stream", "the server", None)
    header, payload = _read(
        frames, stream, _PACKAGE_KINDS, Limits(max_message_bytes=max_bytes), None
    )
    config = _scalars(header.config, stream, "config")
    data = bytes(payload)
    declared = config.get("sha256")
    if declared != hashlib.sha256(data).hexdigest():
        raise DecodeError(
            f"the server's package stream declares sha256 {declared!r}, which does not match "
            "its bytes; fetch it again."
        )
    filename = Path(str(config.get("filename", "package.tar.gz"))).name or "package.tar.gz"
    return PackageOffer(
        data=data,
        sha256=str(declared),
        filename=filename,
        signature=str(config.get("signature", "")),
    )


def fetch_package(
    address: str,
    *,
    name: str,
    token: str | None,
    tls: TlsConfig | None,
    max_bytes: int,
    timeout_s: float = 120.0,
) -> PackageOffer:
    """Ask the server at `address` for its package (one attempt).

    Raises:
        grpc.RpcError: the call failed (UNAVAILABLE while the server is not up yet;
            NOT_FOUND when it offers no package; UNAUTHENTICATED for a bad token).
        DecodeError: the stream is damaged or larger than `max_bytes`.
    """
    options = [("grpc.max_receive_message_length", CHUNK_BYTES + (1 << 20))]
    if tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, channel_credentials(tls), options)
    with channel:
        stub = fleet_pb2_grpc.FleetStub(channel)
        frames = stub.FetchPackage(
            fleet_pb2.PackageRequest(name=name),
            metadata=bearer_metadata(token) if token else (),
            timeout=timeout_s,
        )
        return decode_package(frames, max_bytes=max_bytes)
