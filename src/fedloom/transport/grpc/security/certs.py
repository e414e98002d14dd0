"""Development certificates: a CA, a server certificate and client certificates.

Made with the cryptography package to try TLS on one machine or a lab network
(`fedloom certs DIR`); production deployments bring their own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.errors import ConfigError
from fedloom.transport.grpc.security.tls import TlsConfig

__all__ = ["CertificateFiles", "DevCerts", "make_dev_certs"]

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A PEM certificate and the PEM private key that goes with it."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class DevCerts:
    """The files `make_dev_certs` wrote: the CA certificate, the server's and each client's."""

    ca: Path
    server: CertificateFiles
    clients: Mapping[str, CertificateFiles]

    def server_tls(self, *, mutual: bool = False) -> TlsConfig:
        """TLS for the server; with `mutual`, clients must present a certificate of this CA."""
        return TlsConfig(
            cert=self.server.cert, key=self.server.key, client_ca=self.ca if mutual else None
        )

    def client_tls(self, name: str | None = None) -> TlsConfig:
        """TLS for a client trusting this CA; with `name`, it presents that client's certificate."""
        if name is None:
            return TlsConfig(ca=self.ca)
        if name not in self.clients:
            raise ConfigError(
                f"no development certificate for client '{name}'; made for: "
                f"{', '.join(sorted(self.clients))}. Pass client_names to make_dev_certs.",
                field="name",
                value=name,
            )
        files = self.clients[name]
        return TlsConfig(ca=self.ca, cert=files.cert, key=files.key)


def make_dev_certs(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    client_names: Sequence[str] = ("client",),
    days: int = 30,
    overwrite: bool = False,
) -> DevCerts:
    """Make a development CA, a server certificate and client certificates (EC P-256).

    Writes ``ca.pem``, ``server.pem``/``server.key`` (valid for `hosts`, serverAuth) and
    ``<name>.pem``/``<name>.key`` per client (clientAuth), all signed by the CA. Private keys
    get mode 0600. The CA's key is not written, so no one can sign more certificates with it;
    run again with ``overwrite=True`` to add clients. For development only: a production
    deployment should use certificates from its own CA.

    Raises:
        ConfigError: an argument is invalid, or a file exists and `overwrite` is False.
    """
    target = Path(directory)
    _check_dev_cert_arguments(hosts, client_names, days)
    paths = DevCerts(
        ca=target / "ca.pem",
        server=CertificateFiles(target / "server.pem", target / "server.key"),
        clients=MappingProxyType(
            {n: CertificateFiles(target / f"{n}.pem", target / f"{n}.key") for n in client_names}
        ),
    )
    every_file = [paths.ca, paths.server.cert, paths.server.key]
    for files in paths.clients.values():
        every_file += [files.cert, files.key]
    if not overwrite:
        for path in every_file:
            if path.exists():
                raise ConfigError(
                    f"{path} already exists; refusing to overwrite it. Choose another "
                    "directory, delete the old certificates, or pass overwrite=True.",
                    field="directory",
                    value=str(path),
                )
    target.mkdir(parents=True, exist_ok=True)

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedloom development CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(paths.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)

    def issue(common_name: str, usage: x509.ObjectIdentifier, files: CertificateFiles) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, ca_name, key.public_key(), validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(_subject_alternative_name(hosts), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(files.key, pem_key, private=True)

    issue(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, paths.server)
    for name, files in paths.clients.items():
        issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, files)
    return paths


def _check_dev_cert_arguments(hosts: Sequence[str], names: Sequence[str], days: int) -> None:
    if isinstance(hosts, str) or not hosts:
        raise ConfigError(
            f"hosts must be a non-empty list of host names or IP addresses, got {hosts!r}. "
            "Pass e.g. ('localhost', '127.0.0.1').",
            field="hosts",
            value=hosts,
        )
    for host in hosts:
        if not host or not host.isascii() or any(c.isspace() for c in host):
            raise ConfigError(
                f"host {host!r} is not a host name or IP address. Use ASCII names like "
                "'server.example.org' or addresses like '10.0.0.5'.",
                field="hosts",
                value=host,
            )
    if isinstance(names, str) or len(set(names)) != len(names):
        raise ConfigError(
            f"client_names must be a list of distinct names, got {names!r}.",
            field="client_names",
            value=names,
        )
    for name in names:
        if not _FILE_NAME.fullmatch(name) or name in ("ca", "server"):
            raise ConfigError(
                f"client name {name!r} cannot name certificate files; use letters, digits, "
                "'_', '.', '-' (not starting with a symbol), and not 'ca' or 'server'.",
                field="client_names",
                value=name,
            )
    if days < 1:
        raise ConfigError(
            f"days must be at least 1, got {days}. Pass how long the certificates stay valid.",
            field="days",
            value=days,
        )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    validity: tuple[datetime.datetime, datetime.datetime],
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alternative_name(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(descriptor, "wb") as handle:
        os.chmod(path, mode)  # an overwritten file keeps its old mode otherwise
        handle.write(data)


# --- TLS credentials ----------------------------------------------------------------------
