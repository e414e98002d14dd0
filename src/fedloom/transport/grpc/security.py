"""Security for the gRPC deployment: TLS credentials, development certificates and tokens.

Security is on by default. The server presents a certificate (optionally requiring client
certificates, i.e. mutual TLS) and every call carries ``authorization: Bearer <token>``
metadata, checked by `AuthInterceptor` for every method of the service, enumerated from its
descriptor so that new RPCs are covered without further code. Tokens are either one per
client (a TOML or JSON file, see `load_tokens`) or one shared secret. `make_dev_certs` backs
``fedloom certs DIR``; plain text is only for an explicit ``--insecure`` (`insecure_warning`).
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn, Protocol, runtime_checkable

import grpc  # type: ignore[import-untyped, unused-ignore]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AuthInterceptor",
    "CertificateFiles",
    "DevCerts",
    "RpcMethod",
    "SHARED",
    "ServiceDescriptorLike",
    "TlsConfig",
    "Tokens",
    "bearer_metadata",
    "call_credentials",
    "caller_identity",
    "channel_credentials",
    "generate_token",
    "insecure_warning",
    "load_tokens",
    "make_dev_certs",
    "methods_of",
    "server_credentials",
]

_log = logging.getLogger(__name__)

SHARED = "*"
"""The owner `Tokens.owner` reports for the shared secret: any client name is allowed."""

_HOW_TO_MAKE_CERTS = (
    "Make development certificates with `fedloom certs DIR`, or pass the path of an existing "
    "PEM file."
)
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: valid metadata
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_METADATA_KEY = "authorization"
_SCHEME = "bearer "


# --- development certificates -------------------------------------------------------------


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


@dataclass(frozen=True, kw_only=True, repr=False)
class Tokens:
    """The tokens a server accepts: one per client (`clients`) or one `shared_secret`.

    The repr names the clients but never shows a token.
    """

    clients: Mapping[str, str] = field(default_factory=dict)
    shared_secret: str | None = None

    def __post_init__(self) -> None:
        if bool(self.clients) == (self.shared_secret is not None):
            raise ConfigError(
                "give either per-client tokens or one shared secret, "
                f"got {'both' if self.clients else 'neither'}. Load a tokens file with "
                "load_tokens(path), or pass shared_secret=generate_token().",
                field="tokens",
            )
        if self.shared_secret is not None:
            _check_token(self.shared_secret, "the shared secret")
        seen: set[str] = set()
        for name, token in self.clients.items():
            if not isinstance(name, str) or not name or name == SHARED:
                raise ConfigError(
                    f"client name {name!r} is not allowed in tokens; use a non-empty name "
                    f"other than {SHARED!r}.",
                    field="tokens",
                    value=name,
                )
            _check_token(token, f"the token of client '{name}'")
            if token in seen:
                raise ConfigError(
                    f"client '{name}' has the same token as another client; each client "
                    "needs its own token so the server knows who calls. Make one with "
                    "generate_token().",
                    field=f"tokens.{name}",
                )
            seen.add(token)
        object.__setattr__(self, "clients", MappingProxyType(dict(self.clients)))

    def __repr__(self) -> str:
        if self.shared_secret is not None:
            return "Tokens(shared_secret=<hidden>)"
        return f"Tokens(clients={sorted(self.clients)!r})"

    def owner(self, token: str) -> str | None:
        """The client `token` belongs to, `SHARED` for the shared secret, or None.

        Compares in constant time against every known token, so timing tells nothing
        about which token came close.
        """
        presented = token.encode("utf-8", "surrogateescape")
        if self.shared_secret is not None:
            return SHARED if hmac.compare_digest(presented, self.shared_secret.encode()) else None
        found: str | None = None
        for name, expected in self.clients.items():
            if hmac.compare_digest(presented, expected.encode()):
                found = name
        return found


def _check_token(token: object, what: str) -> None:
    if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token):
        shown = type(token).__name__ if not isinstance(token, str) else f"{len(token)} chars"
        raise ConfigError(
            f"{what} must be a non-empty string of printable ASCII without spaces, got "
            f"{shown}. Make one with generate_token().",
            field="tokens",
        )


def generate_token() -> str:
    """A fresh random token: 32 bytes from `secrets`, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def load_tokens(path: str | os.PathLike[str]) -> Tokens:
    """Read per-client tokens from a TOML (``name = "token"``) or JSON (``{"name": "token"}``) file.

    Raises:
        ConfigError: the file is unreadable, does not parse, or is not a name-to-token table.
    """
    file = Path(path)
    example = 'client-1 = "<token>"' if file.suffix == ".toml" else '{"client-1": "<token>"}'
    hint = f"Write one entry per client, e.g. {example}, with tokens from generate_token()."
    if file.suffix not in (".toml", ".json"):
        raise ConfigError(
            f"tokens file {file} must end in .toml or .json, got {file.suffix or 'no suffix'!r}.",
            field="tokens",
            value=str(file),
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read tokens file {file}: {exc}. Check the path. {hint}",
            field="tokens",
            value=str(file),
        ) from exc
    try:
        data: object = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"tokens file {file} does not parse as {file.suffix[1:].upper()}: {exc}. {hint}",
            field="tokens",
            value=str(file),
        ) from exc
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"tokens file {file} must map client names to tokens, got "
            f"{'an empty table' if data == {} else type(data).__name__}. {hint}",
            field="tokens",
            value=str(file),
        )
    bad = sorted(name for name, token in data.items() if not isinstance(token, str))
    if bad:
        raise ConfigError(
            f"tokens file {file}: the entries {bad} are not strings. {hint}",
            field="tokens",
            value=str(file),
        )
    try:
        return Tokens(clients=data)
    except ConfigError as exc:
        raise ConfigError(f"tokens file {file}: {exc}", field="tokens", value=str(file)) from exc


# --- per-call authentication --------------------------------------------------------------


class RpcMethod(NamedTuple):
    """A method the server serves: ``/package.Service/Method`` and its streaming kind."""

    full_name: str
    client_streaming: bool
    server_streaming: bool


class _MethodDescriptor(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def client_streaming(self) -> bool: ...
    @property
    def server_streaming(self) -> bool: ...


@runtime_checkable
class ServiceDescriptorLike(Protocol):
    """What `methods_of` reads from a ``google.protobuf`` ``ServiceDescriptor``."""

    @property
    def full_name(self) -> str: ...
    @property
    def methods(self) -> Sequence[_MethodDescriptor]: ...


def methods_of(service: ServiceDescriptorLike) -> tuple[RpcMethod, ...]:
    """Every method of a service, e.g. ``fleet_pb2.DESCRIPTOR.services_by_name["Fleet"]``."""
    return tuple(
        RpcMethod(f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming)
        for m in service.methods
    )


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """Refuses every call without a valid ``authorization: Bearer <token>`` metadata entry.

    Args:
        tokens: the tokens the server accepts.
        methods: a service descriptor, or explicit `RpcMethod` triples. A call to any other
            method is refused with UNIMPLEMENTED, so nothing is served unchecked.

    Refusals abort with UNAUTHENTICATED and a message saying how to fix it, and are logged
    at WARNING with the method and peer, never the token. The server keeps serving others.
    """

    def __init__(
        self,
        tokens: Tokens,
        methods: ServiceDescriptorLike | Iterable[tuple[str, bool, bool]],
    ) -> None:
        self._tokens = tokens
        if isinstance(methods, ServiceDescriptorLike):
            methods = methods_of(methods)
        self._methods = {name: RpcMethod(name, cs, ss) for name, cs, ss in methods}

    @property
    def methods(self) -> frozenset[str]:
        """The full names of the methods this interceptor lets through with a valid token."""
        return frozenset(self._methods)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Pass the call on when its token is valid; otherwise a handler that aborts."""
        method: str = handler_call_details.method
        spec = self._methods.get(method)
        if spec is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None  # gRPC answers UNIMPLEMENTED itself
            spec = RpcMethod(method, handler.request_streaming, handler.response_streaming)
            return _refusal(
                spec,
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {method} is not part of the authenticated service; "
                "the server does not serve it.",
            )
        refused = _check_metadata(handler_call_details.invocation_metadata, self._tokens)
        if refused is not None:
            return _refusal(spec, grpc.StatusCode.UNAUTHENTICATED, refused)
        return continuation(handler_call_details)


def caller_identity(context: grpc.ServicerContext, tokens: Tokens) -> str:
    """The client name the call's token belongs to, or `SHARED` for the shared secret.

    A service calls this, e.g. when a client joins, to check that the name it gives matches
    its token (any name is allowed for `SHARED`). Aborts with UNAUTHENTICATED when the token
    is missing or wrong, which `AuthInterceptor` already refused before the service ran.
    """
    metadata = context.invocation_metadata()
    refused = _check_metadata(metadata, tokens)
    if refused is not None:
        _log_refusal("<service>", context, refused)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, refused)
    owner = tokens.owner(_bearer(metadata) or "")
    assert owner is not None  # _check_metadata accepted it
    return owner


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    values = [v for k, v in metadata or () if k.lower() == _METADATA_KEY]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    if values[0][: len(_SCHEME)].lower() != _SCHEME:
        return None
    return values[0][len(_SCHEME) :].strip()


def _check_metadata(metadata: Iterable[tuple[str, Any]] | None, tokens: Tokens) -> str | None:
    """None when the metadata carries a valid token, else the reason for the caller."""
    entries = [v for k, v in metadata or () if k.lower() == _METADATA_KEY]
    if not entries:
        return (
            "missing token: this server requires 'authorization: Bearer <token>' metadata "
            "on every call. Start the client with its token (the one listed for it in the "
            "server's tokens file, or the shared secret)."
        )
    token = _bearer(metadata)
    if token is None:
        return (
            "malformed authorization metadata: expected exactly one "
            "'authorization: Bearer <token>' entry."
        )
    if tokens.owner(token) is None:
        return (
            "invalid token: it matches no client of this server. Check the client's token "
            "against the server's tokens file (or shared secret)."
        )
    return None


def _log_refusal(method: str, context: grpc.ServicerContext, reason: str) -> None:
    _log.warning("refused call to %s from %s: %s", method, context.peer(), reason)


def _refusal(
    spec: RpcMethod, code: grpc.StatusCode, reason: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the method's streaming kind that logs the refusal and aborts."""

    def refuse(_request: object, context: grpc.ServicerContext) -> NoReturn:
        _log_refusal(spec.full_name, context, reason)
        context.abort(code, reason)
        raise AssertionError("context.abort returned")  # pragma: no cover

    if spec.client_streaming and spec.server_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if spec.client_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if spec.server_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


# --- client side --------------------------------------------------------------------------


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Per-call metadata carrying `token`; pass as ``metadata=`` on every call.

    Works on any channel, so it is the way to send the token under ``--insecure``.
    """
    _check_token(token, "the token")
    return ((_METADATA_KEY, f"Bearer {token}"),)


class _BearerPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc, unused-ignore]
    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def __repr__(self) -> str:
        return "_BearerPlugin(<hidden>)"

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


def call_credentials(token: str) -> grpc.CallCredentials:
    """Call credentials sending `token` on every call of a channel.

    Combine with `channel_credentials` via ``grpc.composite_channel_credentials``. gRPC
    sends call credentials only over secure channels; use `bearer_metadata` with
    ``--insecure``.
    """
    return grpc.metadata_call_credentials(_BearerPlugin(token), name="fedloom-bearer")


def insecure_warning() -> None:
    """Warn (UserWarning, and a WARNING log) that ``--insecure`` sends plain text."""
    message = (
        "--insecure: gRPC traffic is plain text. Model updates and tokens can be read and "
        "changed by anyone on the network path, and the server's identity is not checked; "
        "only the token authenticates clients. Use it only on a trusted network or for local "
        "tests; for TLS, make certificates with `fedloom certs DIR`."
    )
    _log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=2)
