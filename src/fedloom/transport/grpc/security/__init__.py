"""Security for deployments: TLS, development certificates, tokens, and per-call checks.

- `tls`: `TlsConfig` and the gRPC credentials made from it;
- `certs`: `make_dev_certs`, a development CA with server and client certificates;
- `tokens`: per-client tokens or a shared secret (`Tokens`, `load_tokens`);
- `auth`: the server interceptor that checks every call, and the client's metadata.
"""

from fedloom.transport.grpc.security.auth import (
    AuthInterceptor,
    RpcMethod,
    ServiceDescriptorLike,
    bearer_metadata,
    call_credentials,
    caller_identity,
    insecure_warning,
    methods_of,
)
from fedloom.transport.grpc.security.certs import CertificateFiles, DevCerts, make_dev_certs
from fedloom.transport.grpc.security.tls import TlsConfig, channel_credentials, server_credentials
from fedloom.transport.grpc.security.tokens import SHARED, Tokens, generate_token, load_tokens

__all__ = [
    "SHARED",
    "AuthInterceptor",
    "CertificateFiles",
    "DevCerts",
    "RpcMethod",
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
