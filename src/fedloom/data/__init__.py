"""Partitioners that split a dataset's sample indices across clients, and datasets.

`IID`, `Dirichlet` (label skew), `Shards` (label-sorted shards) and `ByKey` (one
client per natural key) all implement `fedloom.core.Partitioner`; `PARTITIONERS`
maps their configuration names to the classes. `fedloom.data.datasets` loads real
datasets offline (Fashion-MNIST, an MNIST subset, UCI heart disease by hospital,
Shakespeare by role, scikit-learn's sets); its loaders are re-exported here.
"""

from fedloom.data.datasets import (
    CharSequences,
    Dataset,
    fashion_mnist,
    heart_disease,
    mnist_subset,
    shakespeare,
    sklearn_dataset,
)
from fedloom.data.partitioners import IID, PARTITIONERS, ByKey, Dirichlet, Shards
from fedloom.data.synthetic import SyntheticDevice, synthetic, synthetic_devices

__all__ = [
    "IID",
    "PARTITIONERS",
    "ByKey",
    "CharSequences",
    "Dataset",
    "Dirichlet",
    "Shards",
    "SyntheticDevice",
    "fashion_mnist",
    "heart_disease",
    "mnist_subset",
    "shakespeare",
    "sklearn_dataset",
    "synthetic",
    "synthetic_devices",
]
