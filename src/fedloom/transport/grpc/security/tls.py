"""TLS settings, and the gRPC credentials made from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc  # type: ignore[import-untyped, unused-ignore]

from fedloom.errors import ConfigError

__all__ = ["TlsConfig", "channel_credentials", "server_credentials"]

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
