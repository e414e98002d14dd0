"""The weights codec: round trips, hostile bytes, layout checks, and atomic files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedloom.core import VectorSpec, Weights
from fedloom.errors import ConfigError, DecodeError, ShapeMismatch
from fedloom.transport import (
    MAX_HEADER_BYTES,
    decode_metadata,
    decode_weights,
    encode_weights,
    load_weights,
    save_weights,
    write_atomic,
)

Header = dict[str, object]


def _sample() -> Weights:
    # On disk safetensors sorts by name: b at bytes [0, 4), w at [4, 20) (4 float32 values).
    return Weights(
        {
            "w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
            "b": np.array([0.5], dtype=np.float32),
        }
    )


def _split(blob: bytes) -> tuple[Header, bytes]:
    length = int.from_bytes(blob[:8], "little")
    header: Header = json.loads(blob[8 : 8 + length])
    return header, blob[8 + length :]


def _join(header: object, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def _edit(change: Callable[[Header], None]) -> bytes:
    header, data = _split(encode_weights(_sample()))
    change(header)
    return _join(header, data)


def _set_entry(name: str, key: str, value: object) -> Callable[[Header], None]:
    def change(header: Header) -> None:
        entry = header[name]
        assert isinstance(entry, dict)
        entry[key] = value

    return change


def _without_metadata(header: Header) -> None:
    del header["__metadata__"]


def _set_metadata(key: str, value: str | None) -> Callable[[Header], None]:
    def change(header: Header) -> None:
        metadata = header["__metadata__"]
        assert isinstance(metadata, dict)
        if value is None:
            del metadata[key]
        else:
            metadata[key] = value

    return change


_names = st.lists(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=8).filter(
        lambda name: name != "__metadata__"
    ),
    unique=True,
    max_size=5,
)


@st.composite
def _weights(draw: st.DrawFn) -> Weights:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    width: Literal[32, 64] = 32 if dtype is np.float32 else 64
    names = draw(_names)
    tensors = {
        name: draw(
            arrays(
                dtype,
                st.lists(st.integers(0, 4), max_size=3).map(tuple),
                elements=st.floats(allow_nan=False, width=width),
            )
        )
        for name in names
    }
    return Weights(tensors, dtype=np.dtype(dtype).name)


@given(_weights())
def test_encode_weights_round_trips_through_decode(weights: Weights) -> None:
    blob = encode_weights(weights)

    decoded = decode_weights(blob, expected=weights.spec)

    assert decoded.equals(weights)
    assert list(decoded) == list(weights)


def test_decode_weights_preserves_tensor_order() -> None:
    weights = Weights({"z": [1.0], "a": [[2.0, 3.0]], "m": 4.0, "empty": np.zeros((0, 3))})

    decoded = decode_weights(encode_weights(weights))

    assert list(decoded) == ["z", "a", "m", "empty"]
    assert decoded["m"].shape == ()
    assert decoded["empty"].shape == (0, 3)
    assert decoded.equals(weights)


def test_decode_weights_returns_weights_that_do_not_share_the_blob() -> None:
    blob = bytearray(encode_weights(_sample()))

    decoded = decode_weights(bytes(blob))
    blob[-4:] = b"\0\0\0\0"

    assert decoded["w"][1, 1] == 4.0
    assert decoded.flat.flags.c_contiguous


def test_encode_weights_writes_standard_safetensors() -> None:
    blob = encode_weights(_sample(), metadata={"round": "3"})

    tensors = safetensors.numpy.load(blob)

    np.testing.assert_array_equal(tensors["w"], _sample()["w"])
    np.testing.assert_array_equal(tensors["b"], _sample()["b"])


def test_decode_metadata_returns_callers_metadata_without_codec_keys() -> None:
    blob = encode_weights(_sample(), metadata={"round": "3", "run": "a"})

    metadata = decode_metadata(blob)

    assert metadata == {"round": "3", "run": "a"}


def test_encode_weights_rejects_reserved_metadata_key() -> None:
    with pytest.raises(ConfigError, match=r"metadata key 'fedloom.schema' is reserved"):
        encode_weights(_sample(), metadata={"fedloom.schema": "9"})


def test_encode_weights_rejects_metadata_that_is_not_strings() -> None:
    with pytest.raises(ConfigError, match="metadata must map str to str"):
        encode_weights(_sample(), metadata={"round": 3})  # type: ignore[dict-item]


def test_encode_weights_rejects_reserved_tensor_name() -> None:
    with pytest.raises(ConfigError, match="'__metadata__' is reserved"):
        encode_weights(Weights({"__metadata__": [1.0]}))


def test_encode_weights_rejects_extended_precision() -> None:
    if np.dtype(np.longdouble).itemsize == 8:
        pytest.skip("longdouble is float64 on this platform")
    weights = Weights({"w": [1.0]}, dtype="longdouble")

    with pytest.raises(ConfigError, match=r"cannot encode weights of dtype float(96|128)"):
        encode_weights(weights)


@settings(max_examples=300)
@given(st.binary(max_size=256))
def test_decode_weights_raises_only_decode_error_on_random_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError, match="weights blob field"):
        decode_weights(data)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_decode_weights_raises_only_decode_error_on_mutated_blob(
    changes: list[tuple[int, int]],
) -> None:
    blob = bytearray(encode_weights(_sample()))
    for position, value in changes:
        blob[position % len(blob)] = value

    try:
        decoded = decode_weights(bytes(blob))
    except DecodeError:
        return

    assert list(decoded) == ["w", "b"]  # only tensor bytes changed


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["__metadata__", "w", "b"]), _json), st.binary(max_size=24))
def test_decode_weights_raises_only_decode_error_on_random_headers(
    header: Header, data: bytes
) -> None:
    with pytest.raises(DecodeError, match="weights blob field"):
        decode_weights(_join(header, data))


_CORRUPTIONS: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", r"field 'header length' needs 8 bytes, but the blob has only 0"),
    "truncated header": (
        lambda: encode_weights(_sample())[:40],
        r"'header length' is \d+, but only 32 bytes follow it",
    ),
    "truncated data": (
        lambda: encode_weights(_sample())[:-3],
        r"'b.data_offsets' is \[16, 20\], outside the data region of 17 bytes",
    ),
    "header length beyond blob": (
        lambda: (10_000).to_bytes(8, "little") + encode_weights(_sample())[8:],
        r"'header length' is 10000, but only \d+ bytes follow",
    ),
    "huge header length": (
        lambda: (2**63).to_bytes(8, "little") + b"{}",
        rf"'header length' is {2**63}, over the {MAX_HEADER_BYTES} limit",
    ),
    "header not utf-8": (lambda: (2).to_bytes(8, "little") + b"\xff\xfe", r"'header' is not UTF-8"),
    "header not json": (lambda: (1).to_bytes(8, "little") + b"{", r"'header' is not valid JSON"),
    "header json list": (lambda: _join([1, 2], b""), r"'header' must be a JSON object, got list"),
    "header nested deeply": (
        lambda: _edit(_set_entry("w", "shape", [[[[[2]]]]])),
        r"'header' is nested more than 4 levels deep",
    ),
    "header nested beyond recursion limit": (
        lambda: (200_000).to_bytes(8, "little") + b"[" * 200_000,
        r"'header' is nested more than 4 levels deep",
    ),
    "duplicate key": (
        lambda: (16).to_bytes(8, "little") + b'{"a": 1, "a": 2}',
        r"not valid JSON \(key 'a' appears twice\)",
    ),
    "nan in header": (
        lambda: (10).to_bytes(8, "little") + b'{"a": NaN}',
        r"not valid JSON \(NaN is not a number\)",
    ),
    "metadata missing": (
        lambda: _edit(_without_metadata),
        r"'__metadata__' must be an object of strings, got None",
    ),
    "schema missing": (
        lambda: _edit(_set_metadata("fedloom.schema", None)),
        r"'fedloom.schema' is missing from __metadata__",
    ),
    "schema unsupported": (
        lambda: _edit(_set_metadata("fedloom.schema", "2")),
        r"'fedloom.schema' is '2'; this fedloom reads schema '1'",
    ),
    "names missing": (
        lambda: _edit(_set_metadata("fedloom.names", None)),
        r"'fedloom.names' must be a JSON list of tensor names, got None",
    ),
    "names disagree with tensors": (
        lambda: _edit(_set_metadata("fedloom.names", '["w", "c"]')),
        r"'fedloom.names' lists \['c', 'w'\] but the header holds tensors \['b', 'w'\]",
    ),
    "dtype metadata unknown": (
        lambda: _edit(_set_metadata("fedloom.dtype", "int64")),
        r"'fedloom.dtype' is 'int64'; expected one of float16, float32, float64",
    ),
    "dtype I64": (
        lambda: _edit(_set_entry("w", "dtype", "I64")),
        r"'w.dtype' is 'I64'; expected one of F16, F32, F64",
    ),
    "dtype O": (
        lambda: _edit(_set_entry("w", "dtype", "O")),
        r"'w.dtype' is 'O'; expected one of F16, F32, F64",
    ),
    "dtype not a string": (
        lambda: _edit(_set_entry("w", "dtype", ["F32"])),
        r"'w.dtype' is \['F32'\]; expected one of",
    ),
    "dtype BF16": (
        lambda: _edit(_set_entry("w", "dtype", "BF16")),
        r"'w.dtype' is BF16, which numpy cannot hold. Cast bfloat16 tensors to float32",
    ),
    "dtype disagrees with metadata": (
        lambda: _edit(_set_entry("w", "dtype", "F64")),
        r"'w.dtype' is F64, but fedloom.dtype says float32",
    ),
    "entry with extra key": (
        lambda: _edit(_set_entry("w", "extra", 1)),
        r"'w' must be an object with keys \['data_offsets', 'dtype', 'shape'\]",
    ),
    "negative shape": (
        lambda: _edit(_set_entry("w", "shape", [-2, -2])),
        r"'w.shape' must be a list of non-negative ints, got \[-2, -2\]",
    ),
    "garbage shape": (
        lambda: _edit(_set_entry("w", "shape", "2x2")),
        r"'w.shape' must be a list of non-negative ints, got '2x2'",
    ),
    "boolean shape": (
        lambda: _edit(_set_entry("w", "shape", [True, 4])),
        r"'w.shape' must be a list of non-negative ints",
    ),
    "float shape": (
        lambda: _edit(_set_entry("w", "shape", [2.0, 2])),
        r"'w.shape' must be a list of non-negative ints",
    ),
    "shape beyond numpy": (
        lambda: _edit(_set_entry("w", "shape", [0, 2**62, 2**62])),
        r"'w.shape' is \[0, \d+, \d+\], larger than numpy can hold",
    ),
    "shape disagrees with offsets": (
        lambda: _edit(_set_entry("w", "shape", [3, 3])),
        r"'w.data_offsets' spans 16 bytes, but shape \[3, 3\] of F32 needs 36",
    ),
    "offsets outside data": (
        lambda: _edit(_set_entry("w", "data_offsets", [1_000_000, 1_000_016])),
        r"'w.data_offsets' is \[1000000, 1000016\], outside the data region of 20 bytes",
    ),
    "offsets reversed": (
        lambda: _edit(_set_entry("w", "data_offsets", [20, 4])),
        r"'w.data_offsets' is \[20, 4\], outside the data region",
    ),
    "offsets negative": (
        lambda: _edit(_set_entry("w", "data_offsets", [-16, 0])),
        r"'w.data_offsets' must be two non-negative ints, got \[-16, 0\]",
    ),
    "offsets overlapping": (
        # w keeps [0, 16); b moved to [8, 12) starts inside w.
        lambda: _edit(_set_entry("b", "data_offsets", [8, 12])),
        r"'b.data_offsets' is \[8, 12\] and overlaps the previous tensor",
    ),
    "offsets with gap": (
        # b keeps [0, 4); w moved to [8, 24) in 24 data bytes leaves [4, 8) unused.
        lambda: _join(_split(_edit(_set_entry("w", "data_offsets", [8, 24])))[0], b"\0" * 24),
        r"'w.data_offsets' is \[8, 24\] and leaves a gap before it",
    ),
    "trailing bytes": (
        lambda: encode_weights(_sample()) + b"\0" * 8,
        r"'data' has 8 bytes after the last tensor \(of 28\)",
    ),
}


@pytest.mark.parametrize(
    ("make_blob", "message"), list(_CORRUPTIONS.values()), ids=list(_CORRUPTIONS)
)
def test_decode_weights_rejects_corrupt_blob(make_blob: Callable[[], bytes], message: str) -> None:
    blob = make_blob()

    with pytest.raises(DecodeError, match=message) as caught:
        decode_weights(blob, source="client 'c3'")

    assert str(caught.value).startswith("client 'c3': weights blob field '")


def test_decode_weights_rejects_blob_over_max_bytes() -> None:
    blob = encode_weights(_sample())

    with pytest.raises(DecodeError, match=rf"is {len(blob)} bytes, over the limit max_bytes=100"):
        decode_weights(blob, max_bytes=100)


def test_decode_weights_raises_shape_mismatch_naming_tensor() -> None:
    expected = VectorSpec(names=("w", "b"), shapes=((2, 3), (1,)), dtype="float32")

    with pytest.raises(
        ShapeMismatch,
        match=r"client 'c3' sent tensor 'w' with shape \(2, 2\) float32; "
        r"expected shape \(2, 3\) float32",
    ) as caught:
        decode_weights(encode_weights(_sample()), expected=expected, source="client 'c3'")

    assert caught.value.tensor == "w"


def test_decode_weights_raises_shape_mismatch_on_other_dtype() -> None:
    expected = VectorSpec(names=("w", "b"), shapes=((2, 2), (1,)), dtype="float64")

    with pytest.raises(
        ShapeMismatch,
        match=r"tensor 'w' with shape \(2, 2\) float32; expected shape \(2, 2\) float64",
    ):
        decode_weights(encode_weights(_sample()), expected=expected)


def test_decode_weights_raises_shape_mismatch_on_missing_tensor() -> None:
    expected = VectorSpec(names=("w", "b", "c"), shapes=((2, 2), (1,), (3,)), dtype="float32")

    with pytest.raises(ShapeMismatch, match=r"missing \['c'\], unexpected \[\]") as caught:
        decode_weights(encode_weights(_sample()), expected=expected)

    assert caught.value.tensor == "c"


def test_decode_weights_accepts_equivalent_expected_spec() -> None:
    expected = VectorSpec(names=("w", "b"), shapes=((2, 2), (1,)), dtype="f4")

    decoded = decode_weights(encode_weights(_sample()), expected=expected)

    assert decoded.spec is expected


def test_decode_weights_raises_shape_mismatch_on_other_order() -> None:
    expected = VectorSpec(names=("b", "w"), shapes=((1,), (2, 2)), dtype="float32")

    with pytest.raises(ShapeMismatch, match=r"in the order \['w', 'b'\]; expected \['b', 'w'\]"):
        decode_weights(encode_weights(_sample()), expected=expected)


def test_save_weights_round_trips_through_load_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"

    save_weights(path, _sample(), metadata={"round": "1"})
    loaded = load_weights(path, expected=_sample().spec)

    assert loaded.equals(_sample())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_load_weights_names_file_in_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(encode_weights(_sample())[:-1])

    with pytest.raises(DecodeError, match=rf"^file '{path}': weights blob field 'b.data_offsets'"):
        load_weights(path)


def test_load_weights_rejects_file_over_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_weights(path, _sample())

    with pytest.raises(
        DecodeError, match=r"file '.*model.safetensors'.* over the limit max_bytes=10"
    ):
        load_weights(path, max_bytes=10)


def test_load_weights_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.safetensors")


def test_write_atomic_replaces_content_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    path.chmod(0o600)

    write_atomic(path, b"new")

    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600


def test_write_atomic_keeps_old_content_when_replace_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def fail(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")

    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomic_leaves_nothing_when_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(descriptor: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        write_atomic(tmp_path / "state.json", b"new")

    assert list(tmp_path.iterdir()) == []
