"""TLS settings, the gRPC credentials made from them, and a probe for refused certificates."""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc  # type: ignore[import-untyped, unused-ignore]

from fedloom.errors import ConfigError

__all__ = ["TlsConfig", "channel_credentials", "refused_client_certificate", "server_credentials"]

_HOW_TO_MAKE_CERTS = (
    "Make development certificates with `fedloom certs DIR`, or pass the path of an existing "
    "PEM file."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Paths of PEM files for TLS.

    A server sets `cert` and `key`, and `client_ca` to require client certificates signed by
    that CA (mutual TLS). A client sets `ca`, the CA that signed the server's certificate
    (None trusts the system's roots), and `cert`/`key` when the server wants mutual TLS.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError(
                f"a certificate and its private key go together, got cert={self.cert} and "
                f"key={self.key}. Pass both (e.g. server.pem and server.key from "
                "`fedloom certs DIR`) or neither.",
                field="cert" if self.cert is None else "key",
            )


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """gRPC server credentials; requires client certificates when `tls.client_ca` is set.

    Raises:
        ConfigError: the certificate or key is not given, missing, unreadable or not PEM.
    """
    if tls.cert is None or tls.key is None:
        raise ConfigError(
            "a TLS server needs its certificate and private key (cert and key). "
            f"{_HOW_TO_MAKE_CERTS} Use --insecure only for local tests.",
            field="cert",
        )
    pair = (_read_pem(tls.key, "private key"), _read_pem(tls.cert, "certificate"))
    if tls.client_ca is None:
        return grpc.ssl_server_credentials([pair])
    client_ca = _read_pem(tls.client_ca, "certificate")
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=True
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """gRPC channel credentials trusting `tls.ca`, presenting `tls.cert` when set.

    Raises:
        ConfigError: a file is missing, unreadable or not PEM.
    """
    ca = None if tls.ca is None else _read_pem(tls.ca, "certificate")
    if tls.cert is None or tls.key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read_pem(tls.key, "private key"),
        certificate_chain=_read_pem(tls.cert, "certificate"),
    )


# the HTTP/2 client preface, then an empty SETTINGS frame (length 0, type 4, stream 0)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/]+)):(?P<port>\d{1,5})$")


def refused_client_certificate(address: str, tls: TlsConfig, *, timeout_s: float = 3.0) -> bool:
    """Whether the gRPC server at `address` refuses this client's certificate (mutual TLS).

    Under TLS 1.3 a server checks the client's certificate after the client has finished
    its side of the handshake, so gRPC only reports "Socket closed" and would retry
    forever. This probe repeats the handshake with the standard library, offering HTTP/2
    as gRPC does, then sends the HTTP/2 preface: a gRPC server that accepted the
    certificate answers with its SETTINGS frame; one that refused it closes the
    connection before sending a byte. Anything else (no connection, a server this
    client does not trust, a timeout, another protocol) answers False, so the caller
    keeps its usual retry.

    Args:
        address: ``host:port`` or ``[ipv6]:port`` (other gRPC target forms answer False).
        tls: the client's TLS settings (its CA, certificate and key).
        timeout_s: bound on the whole probe.
    """
    match = _HOST_PORT.match(address)
    if match is None:
        return False
    host = match["v6"] or match["host"]
    try:
        context = ssl.create_default_context(cafile=None if tls.ca is None else str(tls.ca))
        if tls.cert is not None and tls.key is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        context.set_alpn_protocols(["h2"])
        with socket.create_connection((host, int(match["port"])), timeout=timeout_s) as raw:
            raw.settimeout(timeout_s)
            with context.wrap_socket(raw, server_hostname=host) as secure:
                if secure.selected_alpn_protocol() != "h2":
                    return False  # not a gRPC server
                try:
                    secure.sendall(_HTTP2_PREFACE)
                    first = secure.recv(1)
                except (ssl.SSLError, ConnectionError):
                    return True  # closed with an alert or a reset right after the handshake
                return first == b""  # closed before any HTTP/2 byte: the certificate was refused
    except (OSError, ValueError):  # unreachable, untrusted server, timeout, unreadable files
        return False


def _read_pem(path: Path, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TLS {kind} {path}: {exc.strerror or exc}. {_HOW_TO_MAKE_CERTS}",
            field=kind,
            value=str(path),
        ) from exc
    marker = "PRIVATE KEY-----" if kind == "private key" else "-----BEGIN CERTIFICATE-----"
    if marker.encode() not in data:
        raise ConfigError(
            f"{path} is not a PEM {kind}: no {marker!r} line. {_HOW_TO_MAKE_CERTS}",
            field=kind,
            value=str(path),
        )
    return data


# --- tokens -------------------------------------------------------------------------------
