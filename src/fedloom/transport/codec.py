"""The only module that knows byte layout: weights as safetensors blobs, and atomic file writes.

A weights blob is a safetensors file: an 8-byte little-endian header length, a
JSON header naming each tensor's dtype, shape and byte range, then the raw
little-endian tensor bytes. fedloom adds three ``__metadata__`` keys: the schema
version (``fedloom.schema``), the tensor order (``fedloom.names``, because
safetensors sorts tensors on disk) and the shared dtype (``fedloom.dtype``).
`decode_weights` checks the whole header against the data before it allocates
anything, so bytes from a peer or a damaged checkpoint raise `DecodeError`, and
nothing else. There is no pickle anywhere on this path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from fedloom.core import VectorSpec, Weights
from fedloom.errors import ConfigError, DecodeError, ShapeMismatch

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_HEADER_BYTES",
    "SCHEMA_VERSION",
    "decode_metadata",
    "decode_weights",
    "encode_weights",
    "fsync_directory",
    "load_weights",
    "save_weights",
    "weights_blob_parts",
    "write_atomic",
    "write_atomic_parts",
]

SCHEMA_VERSION = "1"
"""The blob schema this module writes and reads (``__metadata__["fedloom.schema"]``)."""

DEFAULT_MAX_BYTES = 8 * 1024**3
"""Largest blob (8 GiB) that `decode_weights` and `load_weights` accept by default."""

MAX_HEADER_BYTES = 16 * 1024**2
"""Largest JSON header (16 MiB) accepted: room for about 100,000 tensors."""

_MESSAGE = "weights blob"
_SCHEMA_KEY = "fedloom.schema"
_NAMES_KEY = "fedloom.names"
_DTYPE_KEY = "fedloom.dtype"
_RESERVED_PREFIX = "fedloom."
_MAX_DEPTH = 4  # the header object, a tensor entry, its shape list: 3 levels, plus slack
_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64"}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_MAX_NDIM = 32  # numpy 1.x's limit; 2.x allows 64
_MAX_NBYTES = int(np.iinfo(np.intp).max)
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_RESEND = (
    "The bytes are damaged or were not written by fedloom.transport.encode_weights; "
    "re-encode the weights with it and send them again."
)


@dataclass(frozen=True, slots=True)
class _Layout:
    """A validated header: the spec, each tensor's byte range, and the user metadata."""

    spec: VectorSpec
    ranges: tuple[tuple[int, int], ...]
    data_start: int
    metadata: dict[str, str]


def encode_weights(weights: Weights, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Encode `weights` as a safetensors blob that `decode_weights` turns back into them.

    Args:
        weights: the tensors to encode; their order is kept.
        metadata: extra string pairs for the header; keys starting ``fedloom.`` are reserved.

    Returns:
        The blob.

    Raises:
        ConfigError: a metadata key is reserved or not a string, a tensor name cannot be
            encoded, or the dtype is not float16, float32 or float64.

    Example:
        >>> blob = encode_weights(Weights({"w": [1.0, 2.0]}))
        >>> decode_weights(blob)["w"]
        array([1., 2.])
    """
    header, data = weights_blob_parts(weights, metadata=metadata)
    return header + bytes(data)


def weights_blob_parts(
    weights: Weights, *, metadata: Mapping[str, str] | None = None
) -> tuple[bytes, memoryview]:
    """The blob of `encode_weights` as (header, data) without copying the tensors.

    The data part is a view of ``weights.flat`` (tensors lie in the blob in
    their order, back to back), so a sender can stream a model of any size
    without a second copy of it in memory.

    Raises:
        ConfigError: as `encode_weights`.
    """
    spec = weights.spec
    dtype = np.dtype(spec.dtype).name
    if dtype not in _CODES:
        raise ConfigError(
            f"cannot encode weights of dtype {dtype}; a weights blob holds one of "
            f"{', '.join(sorted(_CODES))}. Cast the weights before encoding them.",
            field="dtype",
            value=dtype,
        )
    user = dict(metadata or {})
    for key, value in user.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"metadata must map str to str, got {key!r}: {value!r}. "
                "Convert numbers with str() or json.dumps().",
                field="metadata",
                value=key,
            )
        if key.startswith(_RESERVED_PREFIX):
            raise ConfigError(
                f"metadata key '{key}' is reserved: keys starting '{_RESERVED_PREFIX}' are "
                "written by the codec. Rename the key.",
                field="metadata",
                value=key,
            )
    if "__metadata__" in spec.names:
        raise ConfigError(
            "tensor name '__metadata__' is reserved by safetensors; rename the tensor.",
            field="names",
            value="__metadata__",
        )
    user[_SCHEMA_KEY] = SCHEMA_VERSION
    user[_NAMES_KEY] = json.dumps(list(spec.names))
    user[_DTYPE_KEY] = dtype
    entries: dict[str, object] = {"__metadata__": user}
    itemsize = np.dtype(spec.dtype).itemsize
    offset = 0
    for name, shape, size in zip(spec.names, spec.shapes, spec.sizes, strict=True):
        end = offset + size * itemsize
        entries[name] = {
            "dtype": _CODES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, end],
        }
        offset = end
    try:
        text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"a tensor name or metadata string is not valid Unicode ({exc}). "
            "Use names without lone surrogates.",
            field="names",
        ) from exc
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    if len(text) > MAX_HEADER_BYTES:
        raise ConfigError(
            f"the blob header is {len(text)} bytes, over the {MAX_HEADER_BYTES}-byte "
            "limit that decoders accept. Use fewer tensors or less metadata.",
            field="metadata",
        )
    flat = weights.flat
    if flat.dtype.byteorder == ">":  # the wire is little-endian
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    return len(text).to_bytes(8, "little") + text, flat.data.cast("B")


def decode_weights(
    data: bytes,
    *,
    expected: VectorSpec | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    source: str = "payload",
    copy: bool = True,
) -> Weights:
    """Decode a blob from `encode_weights`, checking its layout before allocating.

    Args:
        data: the blob.
        expected: the layout the weights must have; ``None`` accepts any valid layout.
        max_bytes: refuse blobs longer than this.
        source: where the bytes came from, for messages (``"client 'c3'"``).
        copy: False lets the weights view `data` when its tensors lie in order, back
            to back and aligned (as `encode_weights` writes them); the caller must then
            own `data` and never change it.

    Returns:
        The weights: a new buffer, or with ``copy=False`` possibly a view of `data`.

    Raises:
        DecodeError: the bytes are not a valid weights blob, or exceed `max_bytes`.
        ShapeMismatch: the blob is valid but its names, shapes or dtype differ from `expected`.
    """
    layout = _parse(data, max_bytes=max_bytes, source=source)
    spec = layout.spec
    if expected is not None:
        spec = _match_expected(spec, expected, source)
    wire = np.dtype(spec.dtype).newbyteorder("<")
    if not copy and _in_order(layout, spec) and wire == np.dtype(spec.dtype):
        view = np.frombuffer(data, wire, count=spec.size, offset=layout.data_start)
        return Weights.from_flat(spec, view)
    flat = np.empty(spec.size, dtype=spec.dtype)
    cursor = 0
    for (begin, _end), size in zip(layout.ranges, spec.sizes, strict=True):
        if size:
            offset = layout.data_start + begin
            flat[cursor : cursor + size] = np.frombuffer(data, wire, count=size, offset=offset)
        cursor += size
    return Weights.from_flat(spec, flat)


def _in_order(layout: _Layout, spec: VectorSpec) -> bool:
    """Whether the tensors lie in spec order, back to back, from an aligned start."""
    itemsize = np.dtype(spec.dtype).itemsize
    expected_begin = 0
    for (begin, end), size in zip(layout.ranges, spec.sizes, strict=True):
        if begin != expected_begin or end - begin != size * itemsize:
            return False
        expected_begin = end
    return layout.data_start % itemsize == 0


def decode_metadata(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, source: str = "payload"
) -> dict[str, str]:
    """Return the caller's metadata of a blob (without the ``fedloom.`` keys) after validating it.

    Raises:
        DecodeError: the bytes are not a valid weights blob, or exceed `max_bytes`.
    """
    return _parse(data, max_bytes=max_bytes, source=source).metadata


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed to disk, and
    the file is renamed onto `path`; the directory is then synced where the platform
    allows. On failure the temporary file is removed and `path` is untouched.
    A new file gets mode 0644; an existing file keeps its mode.
    """
    write_atomic_parts(path, (data,))


def write_atomic_parts(
    path: str | os.PathLike[str],
    parts: Iterable[bytes | memoryview],
    *,
    sync_directory: bool = True,
) -> None:
    """`write_atomic` for data given in parts (e.g. `weights_blob_parts`), without joining them.

    With ``sync_directory=False`` the rename is not yet durable: the caller writes
    several files and then calls `fsync_directory` once for all of them.
    """
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o644
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with open(descriptor, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if sync_directory:
        _fsync_directory(directory)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make the renames into folder `path` durable (where the platform can sync a folder)."""
    _fsync_directory(os.fspath(path))


def save_weights(
    path: str | os.PathLike[str],
    weights: Weights,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `weights` to `path` as a safetensors file, atomically (see `write_atomic`)."""
    write_atomic(path, encode_weights(weights, metadata=metadata))


def load_weights(
    path: str | os.PathLike[str],
    *,
    expected: VectorSpec | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Weights:
    """Read weights written by `save_weights`.

    Raises:
        FileNotFoundError: `path` does not exist.
        DecodeError: the file is not a valid weights blob, or is larger than `max_bytes`.
        ShapeMismatch: the file's names, shapes or dtype differ from `expected`.
    """
    source = f"file '{os.fspath(path)}'"
    size = os.stat(path).st_size
    if size > max_bytes:
        _fail(source, "length", f"is {size} bytes, over the limit max_bytes={max_bytes}", _LARGER)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return decode_weights(data, expected=expected, max_bytes=max_bytes, source=source)


_LARGER = "Pass a larger max_bytes if the model really is this large."


def _fail(source: str, field: str, problem: str, fix: str = _RESEND) -> NoReturn:
    raise DecodeError(f"{source}: {_MESSAGE} field '{field}' {problem}. {fix}")


def _fsync_directory(directory: str) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(descriptor)


class _JsonRejectedError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonRejectedError(f"key {key!r:.80} appears twice")
        result[key] = value
    return result


def _no_constants(name: str) -> NoReturn:
    raise _JsonRejectedError(f"{name} is not a number")


def _load_json(text: str, source: str, field: str) -> object:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        _fail(source, field, f"is nested more than {_MAX_DEPTH} levels deep")
    except ValueError as exc:  # JSONDecodeError, _JsonRejectedError, int digit limit
        _fail(source, field, f"is not valid JSON ({exc})")
    if _depth(value) > _MAX_DEPTH:
        _fail(source, field, f"is nested more than {_MAX_DEPTH} levels deep")
    return value


def _depth(value: object) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack and deepest <= _MAX_DEPTH:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(data: bytes, *, max_bytes: int, source: str) -> _Layout:
    total = len(data)
    if total > max_bytes:
        _fail(source, "length", f"is {total} bytes, over the limit max_bytes={max_bytes}", _LARGER)
    if total < 8:
        _fail(source, "header length", f"needs 8 bytes, but the blob has only {total}")
    header_length = int.from_bytes(data[:8], "little")
    if header_length > MAX_HEADER_BYTES:
        _fail(source, "header length", f"is {header_length}, over the {MAX_HEADER_BYTES} limit")
    if header_length > total - 8:
        _fail(
            source,
            "header length",
            f"is {header_length}, but only {total - 8} bytes follow it (truncated?)",
        )
    try:
        text = bytes(data[8 : 8 + header_length]).decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(source, "header", f"is not UTF-8 ({exc})")
    header = _load_json(text, source, "header")
    if not isinstance(header, dict):
        _fail(source, "header", f"must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        _fail(source, "__metadata__", f"must be an object of strings, got {metadata!r:.80}")
    user = {k: v for k, v in metadata.items() if not k.startswith(_RESERVED_PREFIX)}
    names, dtype = _parse_metadata(metadata, set(header), source)
    data_length = total - 8 - header_length
    shapes = []
    ranges = []
    for name in names:
        shape, offsets = _parse_entry(name, header[name], dtype, data_length, source)
        shapes.append(shape)
        ranges.append(offsets)
    _check_coverage(names, ranges, data_length, source)
    spec = VectorSpec(names=tuple(names), shapes=tuple(shapes), dtype=dtype)
    return _Layout(spec=spec, ranges=tuple(ranges), data_start=8 + header_length, metadata=user)


def _parse_metadata(
    metadata: dict[str, str], tensors: set[str], source: str
) -> tuple[list[str], str]:
    schema = metadata.get(_SCHEMA_KEY)
    if schema is None:
        _fail(source, _SCHEMA_KEY, "is missing from __metadata__, so the schema is unknown")
    if schema != SCHEMA_VERSION:
        _fail(
            source,
            _SCHEMA_KEY,
            f"is {schema!r:.40}; this fedloom reads schema {SCHEMA_VERSION!r}",
            "Run the same fedloom version on both sides.",
        )
    names = _load_json(metadata.get(_NAMES_KEY, "null"), source, _NAMES_KEY)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        _fail(source, _NAMES_KEY, f"must be a JSON list of tensor names, got {names!r:.80}")
    if len(set(names)) != len(names) or set(names) != tensors:
        _fail(
            source,
            _NAMES_KEY,
            f"lists {sorted(names)!r:.200} but the header holds tensors {sorted(tensors)!r:.200}",
        )
    dtype = metadata.get(_DTYPE_KEY)
    if dtype not in _CODES:
        _fail(source, _DTYPE_KEY, f"is {dtype!r:.40}; expected one of {', '.join(_CODES)}")
    return names, dtype


def _parse_entry(
    name: str, entry: object, dtype: str, data_length: int, source: str
) -> tuple[tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        _fail(source, name, f"must be an object with keys {sorted(_ENTRY_KEYS)}, got {entry!r:.80}")
    code = entry["dtype"]
    if code == "BF16":
        _fail(
            source,
            f"{name}.dtype",
            "is BF16, which numpy cannot hold",
            "Cast bfloat16 tensors to float32 before encoding them.",
        )
    if not isinstance(code, str) or code not in _DTYPES:
        _fail(source, f"{name}.dtype", f"is {code!r:.40}; expected one of {', '.join(_DTYPES)}")
    if _DTYPES[code] != dtype:
        _fail(source, f"{name}.dtype", f"is {code}, but {_DTYPE_KEY} says {dtype}")
    itemsize = np.dtype(dtype).itemsize
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        _fail(source, f"{name}.shape", f"must be a list of non-negative ints, got {shape!r:.80}")
    if len(shape) > _MAX_NDIM or math.prod(n for n in shape if n) * itemsize > _MAX_NBYTES:
        _fail(source, f"{name}.shape", f"is {shape!r:.80}, larger than numpy can hold")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        _fail(source, f"{name}.data_offsets", f"must be two non-negative ints, got {offsets!r:.80}")
    begin, end = offsets
    if not begin <= end <= data_length:
        _fail(
            source,
            f"{name}.data_offsets",
            f"is [{begin}, {end}], outside the data region of {data_length} bytes",
        )
    nbytes = math.prod(shape) * itemsize
    if end - begin != nbytes:
        _fail(
            source,
            f"{name}.data_offsets",
            f"spans {end - begin} bytes, but shape {shape} of {code} needs {nbytes}",
        )
    return tuple(shape), (begin, end)


def _check_coverage(
    names: list[str], ranges: list[tuple[int, int]], data_length: int, source: str
) -> None:
    cursor = 0
    for (begin, end), name in sorted(zip(ranges, names, strict=True)):
        if begin != cursor:
            problem = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            _fail(source, f"{name}.data_offsets", f"is [{begin}, {end}] and {problem}")
        cursor = end
    if cursor != data_length:
        _fail(
            source,
            "data",
            f"has {data_length - cursor} bytes after the last tensor (of {data_length})",
        )


def _match_expected(spec: VectorSpec, expected: VectorSpec, source: str) -> VectorSpec:
    """Return `expected` when `spec` describes the same layout; raise `ShapeMismatch` otherwise."""
    if spec == expected:
        return expected
    fix = "Check that both sides build the same model (compare the VectorSpec sent in round 0)."
    missing = [n for n in expected.names if n not in spec.names]
    extra = [n for n in spec.names if n not in expected.names]
    if missing or extra:
        raise ShapeMismatch(
            f"{source} sent tensors that differ from the expected model: missing {missing}, "
            f"unexpected {extra}. {fix}",
            tensor=(missing or extra)[0],
        )
    same_dtype = np.dtype(spec.dtype) == np.dtype(expected.dtype)
    for name, wanted in zip(expected.names, expected.shapes, strict=True):
        received = spec.shapes[spec.names.index(name)]
        if received != tuple(wanted) or not same_dtype:
            raise ShapeMismatch(
                f"{source} sent tensor '{name}' with shape {received} {spec.dtype}; expected "
                f"shape {tuple(wanted)} {expected.dtype}. {fix}",
                tensor=name,
            )
    if not same_dtype:  # only reachable with no tensors
        raise ShapeMismatch(f"{source} sent dtype {spec.dtype}; expected {expected.dtype}. {fix}")
    if spec.names != expected.names:
        raise ShapeMismatch(
            f"{source} sent tensors in the order {list(spec.names)}; expected "
            f"{list(expected.names)}. {fix}",
            tensor=next(n for n, m in zip(spec.names, expected.names, strict=True) if n != m),
        )
    return expected
