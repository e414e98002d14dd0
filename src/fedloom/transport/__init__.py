"""Bytes on the wire and on disk: the weights codec and atomic file writes.

`codec` is the only module that knows byte layout. Channel implementations (in-process,
gRPC) live in their own modules here and are imported from them directly, so that
``import fedloom.transport`` needs numpy and safetensors only.
"""

from fedloom.transport.codec import (
    DEFAULT_MAX_BYTES,
    MAX_HEADER_BYTES,
    SCHEMA_VERSION,
    decode_metadata,
    decode_weights,
    encode_weights,
    load_weights,
    save_weights,
    write_atomic,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_HEADER_BYTES",
    "SCHEMA_VERSION",
    "decode_metadata",
    "decode_weights",
    "encode_weights",
    "load_weights",
    "save_weights",
    "write_atomic",
]
