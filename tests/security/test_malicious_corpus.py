"""A corpus of malicious payloads fed to every entry point that parses outside input.

Pickle gadgets (whose ``__reduce__`` creates a canary file), numpy object arrays,
``torch.save``'d objects with code, YAML python tags, safetensors with hostile
headers, truncated streams and forged frames go to the wire decoders (results and
tasks), the weights-file loader (checkpoints and run folders), and the TOML/JSON
config and tokens loaders. Each is rejected at parse time with a typed fedloom
error, and the canary file never appears: no code ran.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle  # safe: builds the gadgets of this corpus; the package never imports pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.config import load_config
from fedloom.core import Weights
from fedloom.errors import ConfigError, DecodeError, FedloomError, ShapeMismatch
from fedloom.proto import fleet_pb2
from fedloom.store import RunFolder
from fedloom.transport.codec import encode_weights, load_weights
from fedloom.transport.grpc import Limits, decode_result, decode_task
from fedloom.transport.grpc.security import load_tokens

MODEL = Weights({"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)})
LIMITS = Limits(max_message_bytes=1 << 20, max_header_bytes=1 << 16, max_config_entries=64)


class _OpenGadget:
    """Unpickling calls ``open(canary, "w")``: the canary file appears."""

    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.canary, "w"))


class _ExecGadget(_OpenGadget):
    def __reduce__(self) -> tuple[object, ...]:
        return (exec, (f"open({self.canary!r}, 'w').close()",))


class _TouchGadget(_OpenGadget):
    def __reduce__(self) -> tuple[object, ...]:
        return (Path(self.canary).touch, ())


GADGETS = {"open": _OpenGadget, "exec": _ExecGadget, "touch": _TouchGadget}


# --- payload builders: canary -> bytes ---


def _safetensors(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(text) if length is None else length
    return struct.pack("<Q", size) + text + data


def _meta(names: list[str], dtype: str = "float32") -> dict[str, str]:
    return {"fedloom.schema": "1", "fedloom.names": json.dumps(names), "fedloom.dtype": dtype}


def _entry(dtype: str = "F32", shape: object = (2,), offsets: object = (0, 8)) -> dict[str, object]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}  # type: ignore[call-overload]


def _one(entry: dict[str, object], data: bytes = bytes(8), **meta: str) -> bytes:
    return _safetensors({"__metadata__": {**_meta(["x"]), **meta}, "x": entry}, data)


def _npy_object(canary: Path) -> bytes:
    buffer = io.BytesIO()
    array = np.array([_OpenGadget(canary)], dtype=object)
    np.save(buffer, array, allow_pickle=True)  # safe: writes the malicious test payload
    return buffer.getvalue()


def _npz_object(canary: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, w=np.array([_OpenGadget(canary)], dtype=object))
    return buffer.getvalue()


def _torch(obj_of: Callable[[Path], object], *, zipfile: bool = True) -> Callable[[Path], bytes]:
    def build(canary: Path) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj_of(canary), buffer, _use_new_zipfile_serialization=zipfile)
        return buffer.getvalue()

    return build


def _pickle_in_safetensors_data(canary: Path) -> bytes:
    gadget = pickle.dumps(_OpenGadget(canary))
    return _safetensors({"__metadata__": _meta(["x"]), "x": _entry(offsets=(0, 8))}, gadget)


def _valid_blob() -> bytes:
    return encode_weights(MODEL)


BLOBS: dict[str, Callable[[Path], bytes]] = {
    # pickle gadgets, every protocol, three ways to run code
    **{
        f"pickle-{how}-protocol-{protocol}": (
            lambda canary, how=how, protocol=protocol: pickle.dumps(
                GADGETS[how](canary), protocol=protocol
            )
        )
        for how in GADGETS
        for protocol in (0, 2, 4, 5)
    },
    "pickle-gadget-in-a-list": lambda c: pickle.dumps([MODEL["w"], _OpenGadget(c)]),
    # numpy object arrays
    "npy-object-array": _npy_object,
    "npz-object-array": _npz_object,
    # torch files with code
    "torch-zip-gadget": _torch(_OpenGadget),
    "torch-zip-dict-with-gadget": _torch(lambda c: {"w": torch.zeros(2), "x": _ExecGadget(c)}),
    "torch-legacy-gadget": _torch(_TouchGadget, zipfile=False),
    "torch-zip-state-dict-only": _torch(lambda c: {"w": torch.zeros(2, 2)}),
    # safetensors with hostile headers
    "header-length-2^64-1": lambda c: _safetensors(b"{}", length=2**64 - 1),
    "header-length-2^63": lambda c: _safetensors(b"{}", length=2**63),
    "header-length-past-the-end": lambda c: _safetensors(b"{}", length=1000),
    "header-length-16-MiB-plus-1": lambda c: _safetensors(b"{}", length=16 * 2**20 + 1),
    "header-only-4-bytes": lambda c: b"\x08\x00\x00\x00",
    "empty": lambda c: b"",
    "header-not-utf8": lambda c: _safetensors(b'{"\xff\xfe": 1}'),
    "header-deeply-nested": lambda c: _safetensors(b"[" * 100_000 + b"]" * 100_000),
    "header-nested-objects": lambda c: _safetensors(b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    "header-a-list": lambda c: _safetensors([1, 2, 3]),
    "header-duplicate-keys": lambda c: _safetensors(b'{"x": 1, "x": 2}'),
    "header-nan-constant": lambda c: _safetensors(b'{"x": NaN}'),
    "header-5000-digit-int": lambda c: _safetensors(b'{"x": ' + b"9" * 5000 + b"}"),
    "metadata-missing": lambda c: _safetensors({"x": _entry()}, bytes(8)),
    "metadata-not-strings": lambda c: _safetensors({"__metadata__": {"a": 1}}),
    "schema-99": lambda c: _one(_entry(), **{"fedloom.schema": "99"}),
    "names-disagree-with-tensors": lambda c: _one(_entry(), **{"fedloom.names": '["y"]'}),
    "names-not-json": lambda c: _one(_entry(), **{"fedloom.names": "[[[["}),
    "dtype-object": lambda c: _one(_entry(dtype="O")),
    "dtype-bf16": lambda c: _one(_entry(dtype="BF16")),
    "dtype-int64": lambda c: _one(_entry(dtype="I64")),
    "dtype-not-a-string": lambda c: _one(_entry(dtype=7)),  # type: ignore[arg-type]
    "dtype-disagrees-with-metadata": lambda c: _one(
        _entry(dtype="F64", offsets=(0, 16)), bytes(16)
    ),
    "metadata-dtype-object": lambda c: _one(_entry(), **{"fedloom.dtype": "object"}),
    "shape-negative": lambda c: _one(_entry(shape=(-2,))),
    "shape-huge": lambda c: _one(_entry(shape=(2**40, 2**40))),
    "shape-float": lambda c: _one(_entry(shape=(1.5,))),
    "shape-nested": lambda c: _one(_entry(shape=([2],))),
    "shape-40-dims": lambda c: _one(_entry(shape=(1,) * 40, offsets=(0, 4)), bytes(4)),
    "offsets-negative": lambda c: _one(_entry(offsets=(-8, 0))),
    "offsets-reversed": lambda c: _one(_entry(offsets=(8, 0))),
    "offsets-past-the-data": lambda c: _one(_entry(offsets=(0, 2**62))),
    "offsets-three": lambda c: _one(_entry(offsets=(0, 4, 8))),
    "offsets-wrong-span": lambda c: _one(_entry(offsets=(0, 4)), bytes(4)),
    "offsets-overlapping": lambda c: _safetensors(
        {
            "__metadata__": _meta(["x", "y"]),
            "x": _entry(offsets=(0, 8)),
            "y": _entry(offsets=(4, 12)),
        },
        bytes(12),
    ),
    "offsets-leave-a-gap": lambda c: _one(_entry(offsets=(8, 16)), bytes(16)),
    "data-after-the-tensors": lambda c: _one(_entry(), bytes(8 + 1024)),
    "entry-extra-key": lambda c: _one({**_entry(), "__reduce__": "os.system"}),
    "pickle-in-the-data-region": _pickle_in_safetensors_data,
    "valid-blob-truncated": lambda c: _valid_blob()[:-3],
    "valid-blob-header-truncated": lambda c: _valid_blob()[:20],
}

CONFIGS: dict[str, Callable[[Path], bytes]] = {
    "yaml-python-tag": lambda c: f"!!python/object/apply:os.system ['touch {c}']\n".encode(),
    "yaml-python-object-new": lambda c: (
        f"run: !!python/object/new:builtins.open ['{c}', 'w']\n".encode()
    ),
    "toml-with-code-in-a-string": lambda c: (
        f"[run]\nrounds = \"__import__('pathlib').Path('{c}').touch()\"\n".encode()
    ),
    "pickle-as-config": lambda c: pickle.dumps(_OpenGadget(c)),
    "config-not-utf8": lambda c: b'[run]\nrounds = 3\nname = "\xff\xfe"\n',
    "config-over-1-MiB": lambda c: b"[run]\nrounds = 3\n" + b"#" * (1 << 20),
    "dotted-key-bomb": lambda c: b"a." * 200_000 + b"b = 1\n",
    "quoted-dotted-key-bomb": lambda c: b'"a".' * 100_000 + b"b = 1\n",
    "array-nesting-bomb": lambda c: b"a = " + b"[" * 200_000 + b"]" * 200_000 + b"\n",
    "inline-table-bomb": lambda c: b"a = " + b"{b = " * 50_000 + b"1" + b"}" * 50_000 + b"\n",
    "json-nesting-bomb": lambda c: b"[" * 200_000 + b"]" * 200_000,
    "json-5000-digit-int": lambda c: b'{"alice": ' + b"9" * 5000 + b"}",
}

FRAMES: dict[str, Callable[[], list[fleet_pb2.Frame]]] = {}


def _stream(
    payload: bytes = b"",
    *,
    kind: str = "fit",
    weights_bytes: int | None = None,
    tensors_bytes: int = 0,
    digest: bytes | None = None,
    extra: list[fleet_pb2.Frame] | None = None,
    **header: object,
) -> list[fleet_pb2.Frame]:
    declared = len(payload) if weights_bytes is None else weights_bytes
    head = fleet_pb2.Header(
        schema=header.pop("schema", 1),  # type: ignore[arg-type]
        kind=kind,
        task_id="t",
        weights_bytes=declared,
        tensors_bytes=tensors_bytes,
        **header,  # type: ignore[arg-type]
    )
    frames = [fleet_pb2.Frame(header=head)]
    frames += [fleet_pb2.Frame(data=payload[i : i + 4096]) for i in range(0, len(payload), 4096)]
    frames.append(
        fleet_pb2.Frame(sha256=hashlib.sha256(payload).digest() if digest is None else digest)
    )
    return frames + (extra or [])


def _register_frames() -> None:
    blob = _valid_blob()
    FRAMES.update(
        {
            "stream-empty": lambda: [],
            "stream-starts-with-data": lambda: [fleet_pb2.Frame(data=b"x"), *_stream(blob)],
            "stream-two-headers": lambda: [_stream(blob)[0], *_stream(blob)],
            "stream-empty-frame": lambda: [*_stream(blob)[:1], fleet_pb2.Frame()],
            "declared-2^64-1-bytes": lambda: _stream(blob, weights_bytes=2**64 - 1),
            "declared-sum-overflows": lambda: _stream(
                blob, weights_bytes=2**64 - 1, tensors_bytes=2**64 - 1
            ),
            "declared-over-the-limit": lambda: _stream(blob, weights_bytes=(1 << 20) + 1),
            "more-data-than-declared": lambda: _stream(blob, weights_bytes=len(blob) - 8),
            "truncated-data": lambda: [
                _stream(blob)[0],
                fleet_pb2.Frame(data=blob[:10]),
                fleet_pb2.Frame(sha256=hashlib.sha256(blob[:10]).digest()),
            ],
            "truncated-before-the-digest": lambda: _stream(blob)[:-1],
            "digest-wrong": lambda: _stream(blob, digest=bytes(32)),
            "data-after-the-digest": lambda: _stream(blob, extra=[fleet_pb2.Frame(data=b"x")]),
            "zero-length-data-frame": lambda: [
                _stream(blob)[0],
                fleet_pb2.Frame(data=b""),
                *_stream(blob)[1:],
            ],
            "schema-2": lambda: _stream(blob, schema=2),
            "kind-unknown": lambda: _stream(blob, kind="pickle"),
            "kind-signal-as-task": lambda: _stream(kind="stop"),
            "fit-without-weights": lambda: _stream(kind="fit"),
            "failure-with-tensors": lambda: _stream(
                b"x" * 8, kind="failure", weights_bytes=0, tensors_bytes=8
            ),
            "config-with-2000-entries": lambda: _stream(
                blob, config={f"k{i}": fleet_pb2.Scalar(i=i) for i in range(2000)}
            ),
            "header-over-64-KiB": lambda: _stream(blob, error="e" * (1 << 17)),
            "config-scalar-without-value": lambda: _stream(
                blob, config={"k": fleet_pb2.Scalar()}, metrics={"k": fleet_pb2.Scalar()}
            ),
            "evaluate-loss-nan": lambda: _stream(kind="evaluate", loss=float("nan")),
            "pickle-gadget-as-plugin-tensors": lambda: _stream(
                blob + b"\x80\x04K\x01.", tensors_bytes=6, weights_bytes=len(blob)
            ),
        }
    )


_register_frames()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "a payload ran code: the canary file was created"


def _frames_of(blob: bytes) -> list[fleet_pb2.Frame]:
    return _stream(blob)


def test_corpus_has_at_least_50_payloads() -> None:
    assert len(BLOBS) + len(CONFIGS) + len(FRAMES) >= 50


def test_canary_gadgets_do_run_code_when_unpickled(canary: Path) -> None:
    """The control: the gadgets are live, so their canary proves that nothing unpickled them."""
    for how, gadget in GADGETS.items():
        pickle.loads(pickle.dumps(gadget(canary)))  # safe: the positive control of this corpus
        assert canary.exists(), how
        canary.unlink()


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_malicious_blob_is_refused_by_the_wire_decoders(name: str, canary: Path) -> None:
    blob = BLOBS[name](canary)

    for expected in (None, MODEL.spec):
        with pytest.raises((DecodeError, ShapeMismatch)) as caught:
            decode_result(
                _frames_of(blob),
                limits=LIMITS,
                expected=expected,
                source="client 'm'",
                client_id="m",
            )
        assert caught.value.client_id == "m"
        with pytest.raises((DecodeError, ShapeMismatch)):
            decode_task(_frames_of(blob), limits=LIMITS, expected=expected)


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_malicious_blob_is_refused_as_a_checkpoint_and_in_a_run_folder(
    name: str, canary: Path, tmp_path: Path
) -> None:
    blob = BLOBS[name](canary)
    folder = RunFolder(tmp_path / "runs" / "r1").path
    checkpoints = [tmp_path / "model.safetensors", folder / "weights.safetensors"]

    for path in checkpoints:
        path.write_bytes(blob)
        with pytest.raises(DecodeError, match=str(path.name)):
            load_weights(path)
    with pytest.raises((DecodeError, ShapeMismatch)):
        load_weights(checkpoints[0], expected=MODEL.spec)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_forged_stream_is_refused_with_a_typed_error(name: str) -> None:
    frames = FRAMES[name]()

    with pytest.raises((DecodeError, ShapeMismatch)):
        decode_result(iter(frames), limits=LIMITS, expected=MODEL.spec, source="client 'm'")
    with pytest.raises(FedloomError):
        decode_task(iter(FRAMES[name]()), limits=LIMITS, expected=MODEL.spec)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_malicious_config_is_refused_by_the_config_and_tokens_loaders(
    name: str, canary: Path, tmp_path: Path
) -> None:
    payload = CONFIGS[name](canary)
    config = tmp_path / "fedloom.toml"
    config.write_bytes(payload)
    tokens = [tmp_path / "tokens.toml", tmp_path / "tokens.json"]

    with pytest.raises(ConfigError, match=r"fedloom\.toml"):
        load_config(config)
    for path in tokens:
        path.write_bytes(payload)
        with pytest.raises(ConfigError, match=re.escape(path.name)):
            load_tokens(path)


def test_no_payload_left_a_file_behind(tmp_path: Path) -> None:
    """Builders write nothing themselves: only unpickling could create a canary."""
    canary = tmp_path / "canary"
    for build in [*BLOBS.values(), *CONFIGS.values()]:
        build(canary)

    assert not canary.exists()
    assert os.listdir(tmp_path) == []
