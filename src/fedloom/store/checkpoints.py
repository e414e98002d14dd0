"""Checkpoint files: each round's global weights and strategy state as safetensors, with sha256.

A round's files are written atomically (temporary file, fsync, rename) *before*
the store's transaction that references them, so a recorded round always
points at complete files. Reading checks the sha256 recorded in the store
before decoding anything: a damaged, truncated or swapped file raises
`CorruptState` and nothing is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedloom.core import Vector, Weights
from fedloom.errors import CorruptState, DecodeError
from fedloom.store.base import ModelVersion
from fedloom.transport.codec import (
    decode_metadata,
    decode_weights,
    fsync_directory,
    weights_blob_parts,
    write_atomic_parts,
)

__all__ = [
    "CHECKPOINT_DIR",
    "read_model",
    "read_state",
    "write_model",
    "write_round",
    "write_state",
]

CHECKPOINT_DIR = "checkpoints"
_DTYPES_KEY = "dtypes"


def _round_path(folder: str | Path, server_round: int, suffix: str) -> Path:
    directory = Path(folder) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"round-{server_round:06d}{suffix}"


def _write(
    path: Path, weights: Weights, metadata: Mapping[str, str], *, sync: bool
) -> tuple[str, int]:
    header, data = weights_blob_parts(weights, metadata=metadata)
    digest = hashlib.sha256(header)
    digest.update(data)
    write_atomic_parts(path, (header, data), sync_directory=sync)
    return digest.hexdigest(), len(header) + len(data)


def write_round(
    folder: str | Path,
    server_round: int,
    weights: Weights,
    groups: Mapping[str, Mapping[str, Vector]],
) -> tuple[ModelVersion, str, str]:
    """`write_model` and `write_state` for one round, with one folder sync for both.

    Returns:
        The model version, and the state file's path and sha256 (empty without state).
    """
    model = write_model(folder, server_round, weights, sync=False)
    state_path, state_sha256 = write_state(folder, server_round, groups, sync=False)
    fsync_directory(Path(folder) / CHECKPOINT_DIR)
    return model, state_path, state_sha256


def write_model(
    folder: str | Path, server_round: int, weights: Weights, *, sync: bool = True
) -> ModelVersion:
    """Write the global weights after `server_round` into ``folder/checkpoints``.

    Args:
        folder: the run folder.
        server_round: the round the weights are the result of.
        weights: the global weights.
        sync: make the file's name durable now (False: the caller syncs the folder).
    """
    path = _round_path(folder, server_round, ".safetensors")
    sha256, num_bytes = _write(path, weights, {"server_round": str(server_round)}, sync=sync)
    return ModelVersion(
        server_round=server_round, path=str(path.resolve()), sha256=sha256, num_bytes=num_bytes
    )


def write_state(
    folder: str | Path,
    server_round: int,
    groups: Mapping[str, Mapping[str, Vector]],
    *,
    sync: bool = True,
) -> tuple[str, str]:
    """Write the strategy state, vectors in named groups (``optimizer``, ``plugins``, ...).

    Returns ``(path, sha256)``, or ``("", "")`` when there is no vector to keep.
    Vectors of different float dtypes are stored in their common dtype (a lossless
    widening) and cast back on reading.
    """
    tensors = {
        f"{group}/{name}": np.asarray(vector)
        for group, vectors in groups.items()
        for name, vector in vectors.items()
    }
    if not tensors:
        return "", ""
    dtypes = {name: str(array.dtype) for name, array in tensors.items()}
    path = _round_path(folder, server_round, ".state.safetensors")
    metadata = {"server_round": str(server_round), _DTYPES_KEY: json.dumps(dtypes)}
    sha256, _ = _write(path, Weights(tensors), metadata, sync=sync)
    return str(path.resolve()), sha256


def _checked_bytes(path: str, sha256: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptState(
            f"{what} '{path}' cannot be read ({exc.strerror or exc}). It was recorded in the "
            "store but is missing now: restore the run folder, or start a new run.",
            path=path,
        ) from exc
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise CorruptState(
            f"{what} '{path}' is damaged or truncated: its sha256 is {found}, the store "
            f"recorded {sha256} ({len(data)} bytes now). Nothing was loaded. Restore the file "
            "from a backup, or start a new run.",
            path=path,
        )
    return data


def read_model(version: ModelVersion) -> Weights:
    """The weights of a model version, after checking its sha256.

    Raises:
        CorruptState: the file is missing, or its bytes differ from what was recorded.
    """
    data = _checked_bytes(
        version.path, version.sha256, f"checkpoint of round {version.server_round}"
    )
    try:
        return decode_weights(data, source=f"checkpoint '{version.path}'")
    except DecodeError as exc:  # right checksum but not a blob: written by something else
        raise CorruptState(str(exc), path=version.path) from exc


def read_state(path: str, sha256: str) -> dict[str, dict[str, Vector]]:
    """The groups of vectors written by `write_state`, after checking the file's sha256.

    Raises:
        CorruptState: the file is missing, or its bytes differ from what was recorded.
    """
    if not path:
        return {}
    data = _checked_bytes(path, sha256, "strategy state file")
    try:
        weights = decode_weights(data, source=f"state file '{path}'")
        dtypes = json.loads(decode_metadata(data).get(_DTYPES_KEY, "{}"))
    except (DecodeError, ValueError) as exc:
        raise CorruptState(str(exc), path=path) from exc
    groups: dict[str, dict[str, Vector]] = {}
    for name, array in weights.items():
        group, _, key = name.partition("/")
        groups.setdefault(group, {})[key] = np.array(array, dtype=dtypes.get(name, array.dtype))
    return groups


def remove_files(*paths: str) -> None:
    """Delete checkpoint files that no transaction came to reference (best effort)."""
    for path in paths:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
