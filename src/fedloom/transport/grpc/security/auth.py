"""Every call's token checked on the server, and sent from the client.

The interceptor enumerates the service's methods from its descriptor, so a
new RPC is covered without anyone remembering to add it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, NoReturn, Protocol, runtime_checkable

import grpc  # type: ignore[import-untyped, unused-ignore]

from fedloom.transport.grpc.security.tokens import Tokens, check_token

__all__ = [
    "AuthInterceptor",
    "RpcMethod",
    "ServiceDescriptorLike",
    "bearer_metadata",
    "call_credentials",
    "caller_identity",
    "insecure_warning",
    "methods_of",
]

_log = logging.getLogger(__name__)

_METADATA_KEY = "authorization"
_SCHEME = "bearer "


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
    check_token(token, "the token")
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
