"""The gRPC transport: tasks and results as chunked protobuf streams (needs ``fedloom[grpc]``).

`wire` holds the pure functions that turn tasks and replies into ``Frame`` streams and
back; it is the only place that knows that layout. Importing this package does not
import ``grpc`` itself (only ``google.protobuf``, for the generated messages), but it
checks that both are installed and raises `ImportError` naming the extra otherwise.
"""

from __future__ import annotations

import importlib.util

_INSTALL = "fedloom.transport.grpc needs grpcio and protobuf: pip install 'fedloom[grpc]'"

if importlib.util.find_spec("grpc") is None:
    raise ImportError(f"{_INSTALL} (grpc is not installed).", name="grpc")
try:
    from google.protobuf import runtime_version as _runtime_version
except ImportError as exc:  # no protobuf, or one older than the generated code's checks
    raise ImportError(f"{_INSTALL} ({exc}).", name="google.protobuf") from exc
try:
    from fedloom.proto import fleet_pb2 as _fleet_pb2  # noqa: F401
except _runtime_version.VersionError as exc:  # protobuf older than the generated code
    raise ImportError(f"{_INSTALL} --upgrade ({exc})", name="google.protobuf") from exc

from fedloom.transport.grpc.wire import (  # noqa: E402
    CHUNK_BYTES,
    DEFAULT_LIMITS,
    NO_TASK,
    STOP,
    WIRE_SCHEMA,
    Limits,
    decode_result,
    decode_task,
    encode_result,
    encode_signal,
    encode_task,
    peek_header,
    scalars_from_proto,
    scalars_to_proto,
)

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_LIMITS",
    "NO_TASK",
    "STOP",
    "WIRE_SCHEMA",
    "Limits",
    "decode_result",
    "decode_task",
    "encode_result",
    "encode_signal",
    "encode_task",
    "peek_header",
    "scalars_from_proto",
    "scalars_to_proto",
]
