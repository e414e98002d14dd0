"""Partitioners that split a dataset's sample indices across clients, and datasets.

`IID`, `Dirichlet` (label skew), `Shards` (label-sorted shards) and `ByKey` (one
client per natural key) all implement `fedloom.core.Partitioner`; `PARTITIONERS`
maps their configuration names to the classes.
"""

from fedloom.data.partitioners import IID, PARTITIONERS, ByKey, Dirichlet, Shards
from fedloom.data.synthetic import SyntheticDevice, synthetic, synthetic_devices

__all__ = [
    "IID",
    "PARTITIONERS",
    "ByKey",
    "Dirichlet",
    "Shards",
    "SyntheticDevice",
    "synthetic",
    "synthetic_devices",
]
