"""`PackageClient`: a client whose training and validation are a package's entry points.

For each task it writes the global weights to a safetensors file, runs the
entry point as a subprocess (see `run_entry_point`), and reads back the new
weights (safetensors, or ``.npz`` without pickles) or the validation JSON.
A failing entry point fails only that task; the client takes the next one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from fedloom.core import Config, EvaluateRes, FitRes, Metrics, Scalar, Weights
from fedloom.errors import ClientError, ConfigError, DecodeError
from fedloom.package.archive import Package
from fedloom.package.manifest import Manifest, parse_manifest
from fedloom.package.runner import run_entry_point
from fedloom.transport.codec import DEFAULT_MAX_BYTES, load_weights, save_weights

__all__ = ["PackageClient", "read_model_file"]

MAX_JSON_BYTES = 1024 * 1024
_NPZ_MAGIC = b"PK\x03\x04"


class PackageClient:
    """Runs a compute package's ``train`` and ``validate`` entry points for each task.

    Args:
        folder: the unpacked package (it holds ``fedloom.yaml``).
        data: what the commands' ``{data}`` placeholder stands for (the client's data).
        name: this client's name, given to commands as ``FEDLOOM_CLIENT``.
        train_timeout_s: the most seconds a ``train`` run may take.
        validate_timeout_s: the most seconds a ``validate`` (or ``init``) run may take.
        max_model_bytes: the largest model file read back.

    Example:
        >>> package = check_package("pkg.tar.gz")  # doctest: +SKIP
        >>> client = PackageClient.from_package(package, "work/")  # doctest: +SKIP
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        data: str = "",
        name: str = "client",
        train_timeout_s: float = 3600.0,
        validate_timeout_s: float = 600.0,
        max_model_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / "fedloom.yaml"
        if not manifest_path.is_file():
            raise ConfigError(
                f"'{self.folder}' holds no fedloom.yaml; pass the folder a package was "
                "unpacked into.",
                field="folder",
            )
        self.manifest: Manifest = parse_manifest(
            manifest_path.read_bytes(), source=f"'{manifest_path}'"
        )
        self.data = data
        self.name = name
        self.train_timeout_s = train_timeout_s
        self.validate_timeout_s = validate_timeout_s
        self.max_model_bytes = max_model_bytes
        self._env = {"FEDLOOM_PACKAGE_DIR": str(self.folder), "FEDLOOM_CLIENT": name}
        self._started = False

    @classmethod
    def from_package(
        cls, package: Package, into: str | os.PathLike[str], **options: object
    ) -> PackageClient:
        """Unpack a checked package into `into` and build its client."""
        from fedloom.package.archive import unpack_package

        return cls(unpack_package(package, into), **options)  # type: ignore[arg-type]

    def get_weights(self) -> Weights:
        """The initial weights, from the package's ``init`` entry point."""
        command = self.manifest.init
        if command is None:
            raise ClientError(
                "the server asked this package client for initial weights, but the package "
                "has no 'init' entry point. Give the server initial weights (--initial), or "
                "add `init: python entrypoint.py init_seed {out}` to fedloom.yaml."
            )
        self._startup()
        with tempfile.TemporaryDirectory(prefix="fedloom-task-") as scratch:
            out = Path(scratch) / "model.safetensors"
            self._run("init", command, {"out": str(out)}, self.validate_timeout_s)
            return read_model_file(out, max_bytes=self.max_model_bytes)

    def fit(self, weights: Weights, config: Config) -> FitRes:
        """Run ``train`` on `weights`; its metadata file gives num_examples and metrics."""
        self._startup()
        with tempfile.TemporaryDirectory(prefix="fedloom-task-") as scratch:
            model_in = Path(scratch) / "model_in.safetensors"
            model_out = Path(scratch) / "model_out.safetensors"
            save_weights(model_in, weights)
            self._run(
                "train",
                self.manifest.train,
                {"in": str(model_in), "out": str(model_out)},
                self.train_timeout_s,
            )
            if not model_out.is_file():
                raise ClientError(
                    "entry point 'train' exited 0 but wrote no model to its {out} path; it "
                    "must save the trained weights there (e.g. get_helper('pytorch').save)."
                )
            trained = read_model_file(model_out, max_bytes=self.max_model_bytes)
            metadata = _read_json(Path(f"{model_out}-metadata"), required=False)
        num_examples = metadata.pop("num_examples", 1)
        if isinstance(num_examples, bool) or not isinstance(num_examples, int):
            raise ClientError(
                f"the train metadata's num_examples must be an int, got {num_examples!r}."
            )
        return FitRes(trained, num_examples, _metrics(metadata))

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        """Run ``validate`` on `weights`; its JSON gives the metrics (and loss, num_examples)."""
        if self.manifest.validate is None:
            raise ClientError(
                "the server asked for an evaluation, but the package has no 'validate' entry "
                "point. Add `validate: python entrypoint.py validate {in} {out_json}`."
            )
        self._startup()
        with tempfile.TemporaryDirectory(prefix="fedloom-task-") as scratch:
            model_in = Path(scratch) / "model_in.safetensors"
            report = Path(scratch) / "validation.json"
            save_weights(model_in, weights)
            self._run(
                "validate",
                self.manifest.validate,
                {"in": str(model_in), "out_json": str(report)},
                self.validate_timeout_s,
            )
            metrics = _read_json(report, required=True)
        num_examples = metrics.pop("num_examples", 1)
        if isinstance(num_examples, bool) or not isinstance(num_examples, int):
            raise ClientError(
                f"the validation JSON's num_examples must be an int, got {num_examples!r}."
            )
        loss = next(
            (metrics[key] for key in ("loss", "test_loss", "val_loss") if key in metrics),
            math.nan,
        )
        if not isinstance(loss, int | float) or isinstance(loss, bool) or not math.isfinite(loss):
            loss = 0.0  # no loss reported: the metrics still count
        return EvaluateRes(float(loss), num_examples, _metrics(metrics))

    def _startup(self) -> None:
        if self._started:
            return
        if self.manifest.startup is not None:
            self._run("startup", self.manifest.startup, {}, self.train_timeout_s)
        self._started = True

    def _run(
        self, entry_point: str, command: tuple[str, ...], files: dict[str, str], timeout_s: float
    ) -> None:
        run_entry_point(
            entry_point,
            command,
            cwd=self.folder,
            values={**files, "data": self.data},
            timeout_s=timeout_s,
            env=self._env,
        )


def read_model_file(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Weights:
    """Read weights from a safetensors file or an ``.npz`` (arrays only, never pickles).

    Raises:
        DecodeError: the file is neither, holds non-float arrays, or is too large.
    """
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != _NPZ_MAGIC:
        return load_weights(path, max_bytes=max_bytes)
    size = os.stat(path).st_size
    if size > max_bytes:
        raise DecodeError(f"model file '{path}' is {size} bytes, over the limit of {max_bytes}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DecodeError(
            f"model file '{path}' is not a valid .npz of numeric arrays ({exc}). Save models "
            "with fedloom.package.helpers (safetensors) or numpy.savez."
        ) from None
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise DecodeError(
                f"model file '{path}': array {name!r} has dtype {array.dtype}; weights are "
                "floating-point arrays."
            )
    return Weights(arrays)


def _read_json(path: Path, *, required: bool) -> dict[str, object]:
    if not path.is_file():
        if required:
            raise ClientError(
                "entry point 'validate' exited 0 but wrote no JSON to its {out_json} path; it "
                "must save its metrics there (e.g. save_metrics(report, out_json_path))."
            )
        return {}
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ClientError(f"'{path.name}' is over {MAX_JSON_BYTES} bytes; write only metrics.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClientError(f"'{path.name}' is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise ClientError(f"'{path.name}' must hold a JSON object, got {type(value).__name__}.")
    return value


def _metrics(values: dict[str, object]) -> Metrics:
    metrics: dict[str, Scalar] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            metrics[str(key)] = value
    return metrics
