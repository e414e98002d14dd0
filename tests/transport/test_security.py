"""TLS, development certificates and tokens, checked against real gRPC servers on loopback."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedloom.errors import ConfigError
from fedloom.transport.grpc.security import (
    SHARED,
    AuthInterceptor,
    DevCerts,
    RpcMethod,
    TlsConfig,
    Tokens,
    bearer_metadata,
    call_credentials,
    caller_identity,
    channel_credentials,
    generate_token,
    insecure_warning,
    load_tokens,
    make_dev_certs,
    methods_of,
    server_credentials,
)

TIMEOUT_S = 5.0
SERVICE = "test.Echo"
UNARY = f"/{SERVICE}/Unary"
UNARY_STREAM = f"/{SERVICE}/UnaryStream"
STREAM_UNARY = f"/{SERVICE}/StreamUnary"
UNDECLARED = f"/{SERVICE}/Undeclared"
DECLARED = [
    (UNARY, False, False),
    (UNARY_STREAM, False, True),
    (STREAM_UNARY, True, False),
]
TOKENS = Tokens(clients={"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"})


def _who(context: grpc.ServicerContext) -> bytes:
    return caller_identity(context, TOKENS).encode()


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda request, context: _who(context)),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(
                lambda request, context: iter([_who(context), b"again"])
            ),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(
                lambda requests, context: b"+".join(requests)
            ),
            "Undeclared": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        },
    )


def _serve(
    *, tokens: Tokens | None = None, tls: TlsConfig | None = None
) -> tuple[grpc.Server, str]:
    interceptors = [] if tokens is None else [AuthInterceptor(tokens, DECLARED)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    server.add_generic_rpc_handlers((_handler(),))
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    server.start()
    return server, f"127.0.0.1:{port}"


def _call(channel: grpc.Channel, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    """One call of `method`'s streaming kind; the (joined) response."""
    if method == UNARY_STREAM:
        stream = channel.unary_stream(method)
        return b"|".join(stream(b"x", timeout=TIMEOUT_S, metadata=metadata))
    if method == STREAM_UNARY:
        upload = channel.stream_unary(method)
        reply: bytes = upload(iter([b"a", b"b"]), timeout=TIMEOUT_S, metadata=metadata)
        return reply
    reply = channel.unary_unary(method)(b"x", timeout=TIMEOUT_S, metadata=metadata)
    return reply


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), client_names=("alice", "bob"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("other"), client_names=("mallory",))


@pytest.fixture(scope="module")
def token_server() -> Iterator[str]:
    server, address = _serve(tokens=TOKENS)
    try:
        yield address
    finally:
        server.stop(grace=None)


@pytest.fixture
def token_channel(token_server: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(token_server) as channel:
        yield channel


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- development certificates ---


def test_make_dev_certs_writes_a_ca_signed_server_certificate_for_the_hosts(
    certs: DevCerts,
) -> None:
    ca, server = _load(certs.ca), _load(certs.server.cert)

    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_make_dev_certs_writes_client_certificates_for_client_auth(certs: DevCerts) -> None:
    alice = _load(certs.clients["alice"].cert)

    alice.verify_directly_issued_by(_load(certs.ca))
    usage = alice.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert alice.subject.rfc4514_string() == "CN=alice"
    assert sorted(p.name for p in certs.ca.parent.iterdir()) == [
        "alice.key",
        "alice.pem",
        "bob.key",
        "bob.pem",
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def test_make_dev_certs_keeps_private_keys_private(certs: DevCerts) -> None:
    keys = [certs.server.key, *(files.key for files in certs.clients.values())]

    modes = {stat.S_IMODE(key.stat().st_mode) for key in keys}

    assert modes == {0o600}


def test_make_dev_certs_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("precious")

    with pytest.raises(ConfigError, match=r"server\.key already exists; refusing to overwrite"):
        make_dev_certs(tmp_path)
    assert (tmp_path / "server.key").read_text() == "precious"
    assert not (tmp_path / "ca.pem").exists()

    made = make_dev_certs(tmp_path, overwrite=True)
    assert b"PRIVATE KEY" in made.server.key.read_bytes()
    assert stat.S_IMODE(made.server.key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"client_names": ("../evil",)}, "cannot name certificate files"),
        ({"client_names": ("server",)}, "not 'ca' or 'server'"),
        ({"hosts": ()}, "hosts must be a non-empty list"),
        ({"days": 0}, "days must be at least 1, got 0"),
    ],
)
def test_make_dev_certs_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_dev_certs(tmp_path, **kwargs)  # type: ignore[arg-type]


# --- TLS ---


def test_tls_call_succeeds_with_the_dev_ca(certs: DevCerts) -> None:
    server, address = _serve(tls=certs.server_tls())
    try:
        with grpc.secure_channel(address, channel_credentials(certs.client_tls())) as channel:
            reply = channel.unary_unary(UNDECLARED)(b"hello", timeout=TIMEOUT_S)
    finally:
        server.stop(grace=None)

    assert reply == b"hello"


def test_tls_client_trusting_another_ca_is_refused(certs: DevCerts, other_certs: DevCerts) -> None:
    server, address = _serve(tls=certs.server_tls())
    try:
        credentials = channel_credentials(other_certs.client_tls())
        with (
            grpc.secure_channel(address, credentials) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            channel.unary_unary(UNDECLARED)(b"hello", timeout=TIMEOUT_S)
    finally:
        server.stop(grace=None)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    certs: DevCerts, other_certs: DevCerts
) -> None:
    server, address = _serve(tls=certs.server_tls(mutual=True))
    foreign = TlsConfig(
        ca=certs.ca,
        cert=other_certs.clients["mallory"].cert,
        key=other_certs.clients["mallory"].key,
    )
    try:
        codes = []
        for tls in (certs.client_tls(), foreign):
            with (
                grpc.secure_channel(address, channel_credentials(tls)) as channel,
                pytest.raises(grpc.RpcError) as caught,
            ):
                channel.unary_unary(UNDECLARED)(b"hello", timeout=TIMEOUT_S)
            codes.append(caught.value.code())
        with grpc.secure_channel(address, channel_credentials(certs.client_tls("alice"))) as ok:
            reply = ok.unary_unary(UNDECLARED)(b"hello", timeout=TIMEOUT_S)
    finally:
        server.stop(grace=None)

    assert codes == [grpc.StatusCode.UNAVAILABLE] * 2
    assert reply == b"hello"


def test_tls_with_call_credentials_sends_the_token(certs: DevCerts) -> None:
    server, address = _serve(tls=certs.server_tls(), tokens=TOKENS)
    credentials = grpc.composite_channel_credentials(
        channel_credentials(certs.client_tls()), call_credentials("bob-token-0123456789")
    )
    try:
        with grpc.secure_channel(address, credentials) as channel:
            reply = channel.unary_unary(UNARY)(b"x", timeout=TIMEOUT_S)
    finally:
        server.stop(grace=None)

    assert reply == b"bob"


def test_server_credentials_names_a_missing_file_and_how_to_make_one(tmp_path: Path) -> None:
    tls = TlsConfig(cert=tmp_path / "server.pem", key=tmp_path / "server.key")

    with pytest.raises(ConfigError, match=r"server\.key.*fedloom certs DIR"):
        server_credentials(tls)


def test_channel_credentials_rejects_a_file_that_is_not_pem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")

    with pytest.raises(ConfigError, match=r"ca\.pem is not a PEM certificate"):
        channel_credentials(TlsConfig(ca=tmp_path / "ca.pem"))


def test_tls_config_rejects_a_certificate_without_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a certificate and its private key go together"):
        TlsConfig(cert=tmp_path / "server.pem")


# --- tokens on every call ---

KINDS = [UNARY, UNARY_STREAM, STREAM_UNARY]


@pytest.mark.parametrize("method", KINDS)
def test_auth_interceptor_refuses_a_call_without_token(
    token_channel: grpc.Channel, method: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _call(token_channel, method)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith("missing token: this server requires")


@pytest.mark.parametrize("method", KINDS)
def test_auth_interceptor_refuses_a_wrong_token(token_channel: grpc.Channel, method: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _call(token_channel, method, bearer_metadata("not-a-known-token"))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith("invalid token")
    assert "not-a-known-token" not in caught.value.details()


@pytest.mark.parametrize(
    ("method", "expected"),
    [(UNARY, b"alice"), (UNARY_STREAM, b"alice|again"), (STREAM_UNARY, b"a+b")],
)
def test_auth_interceptor_passes_a_valid_token(
    token_channel: grpc.Channel, method: str, expected: bytes
) -> None:
    reply = _call(token_channel, method, bearer_metadata("alice-token-0123456789"))

    assert reply == expected


def test_auth_interceptor_refuses_a_token_without_bearer_scheme(
    token_channel: grpc.Channel,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _call(token_channel, UNARY, (("authorization", "alice-token-0123456789"),))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith("malformed authorization metadata")


def test_auth_interceptor_refuses_methods_not_in_the_service(token_channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _call(token_channel, UNDECLARED, bearer_metadata("alice-token-0123456789"))

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_auth_interceptor_logs_refusals_without_the_token(
    token_channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fedloom.transport.grpc.security")

    with pytest.raises(grpc.RpcError):
        _call(token_channel, UNARY, bearer_metadata("secret-guess-42"))
    reply = _call(token_channel, UNARY, bearer_metadata("bob-token-0123456789"))

    [record] = [r for r in caplog.records if r.name.startswith("fedloom.transport.grpc.security")]
    assert record.levelno == logging.WARNING
    assert UNARY in record.getMessage()
    assert "127.0.0.1" in record.getMessage()
    assert "invalid token" in record.getMessage()
    assert "secret-guess-42" not in caplog.text
    assert reply == b"bob"  # the server keeps serving others


def test_methods_of_lists_every_method_of_a_descriptor() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    proto = descriptor_pb2.FileDescriptorProto(name="echo_test.proto", package="test")
    proto.message_type.add(name="M")
    service = proto.service.add(name="Echo")
    service.method.add(name="Unary", input_type=".test.M", output_type=".test.M")
    service.method.add(
        name="UnaryStream", input_type=".test.M", output_type=".test.M", server_streaming=True
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindFileByName("echo_test.proto").services_by_name["Echo"]

    methods = methods_of(descriptor)
    interceptor = AuthInterceptor(TOKENS, descriptor)

    assert methods == (
        RpcMethod(UNARY, client_streaming=False, server_streaming=False),
        RpcMethod(UNARY_STREAM, client_streaming=False, server_streaming=True),
    )
    assert interceptor.methods == {UNARY, UNARY_STREAM}


# --- token values ---


def test_tokens_owner_names_the_client_of_a_per_client_token() -> None:
    assert TOKENS.owner("alice-token-0123456789") == "alice"
    assert TOKENS.owner("bob-token-0123456789") == "bob"
    assert TOKENS.owner("alice-token-012345678") is None
    assert TOKENS.owner("") is None
    assert TOKENS.owner("ünïcode") is None


def test_tokens_shared_secret_is_owned_by_everyone() -> None:
    secret = generate_token()

    tokens = Tokens(shared_secret=secret)

    assert tokens.owner(secret) == SHARED == "*"
    assert tokens.owner(secret + "x") is None
    assert secret not in repr(tokens)


def test_tokens_repr_hides_the_tokens() -> None:
    assert repr(TOKENS) == "Tokens(clients=['alice', 'bob'])"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "either per-client tokens or one shared secret, got neither"),
        ({"clients": {"a": "t1"}, "shared_secret": "t2"}, "got both"),
        ({"clients": {"a": "same", "b": "same"}}, "client 'b' has the same token"),
        ({"clients": {"a": "has space"}}, "printable ASCII without spaces"),
        ({"shared_secret": ""}, "the shared secret must be a non-empty string"),
    ],
)
def test_tokens_rejects_invalid_tokens(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Tokens(**kwargs)  # type: ignore[arg-type]


def test_generate_token_is_random_and_url_safe() -> None:
    first, second = generate_token(), generate_token()

    assert first != second
    assert len(first) == 43  # 32 bytes in unpadded base64
    assert bearer_metadata(first) == (("authorization", f"Bearer {first}"),)


def test_load_tokens_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('alice = "alice-token-0123456789"\n"client-2" = "c2-token-0123456789"\n')

    tokens = load_tokens(path)

    assert tokens.owner("c2-token-0123456789") == "client-2"
    assert tokens.owner("alice-token-0123456789") == "alice"


def test_load_tokens_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"alice": "alice-token-0123456789"}))

    assert load_tokens(path).owner("alice-token-0123456789") == "alice"


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("tokens.toml", "alice = ", "does not parse as TOML"),
        ("tokens.json", "{", "does not parse as JSON"),
        ("tokens.json", "[1, 2]", "must map client names to tokens, got list"),
        ("tokens.toml", "", "must map client names to tokens, got an empty table"),
        ("tokens.toml", "alice = 3", r"the entries \['alice'\] are not strings"),
        ("tokens.toml", 'a = "x"\nb = "x"', "client 'b' has the same token"),
        ("tokens.yaml", "alice: x", "must end in .toml or .json"),
    ],
)
def test_load_tokens_rejects_bad_files(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ConfigError, match=match):
        load_tokens(path)


def test_load_tokens_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read tokens file .*missing\.toml"):
        load_tokens(tmp_path / "missing.toml")


def test_insecure_warning_warns_that_traffic_is_plain_text() -> None:
    with pytest.warns(UserWarning, match="gRPC traffic is plain text"):
        insecure_warning()
