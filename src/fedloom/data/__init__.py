"""Partitioners that split a dataset's sample indices across clients, and datasets.

`IID`, `Dirichlet` (label skew), `Shards` (label-sorted shards) and `ByKey` (one
client per natural key) all implement `fedloom.core.Partitioner`; `PARTITIONERS`
maps their configuration names to the classes. `take` makes a client's share
of an array or torch dataset when the client is active; `labels_of` finds a
torch dataset's labels to partition by. `fedloom.data.datasets` loads real
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
from fedloom.data.views import labels_of, take

__all__ = [
    "IID",
    "PARTITIONERS",
    "ByKey",
    "CharSequences",
    "Dataset",
    "Dirichlet",
    "Shards",
    "SyntheticDevice",
    "labels_of",
    "fashion_mnist",
    "heart_disease",
    "mnist_subset",
    "shakespeare",
    "sklearn_dataset",
    "synthetic",
    "synthetic_devices",
    "take",
]
