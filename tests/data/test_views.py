"""A client's share of an array or torch dataset, made only when the client is active."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from fedloom import ClientContext, simulate
from fedloom.client import FunctionClient
from fedloom.data import IID, labels_of, take
from fedloom.errors import ConfigError
from fedloom.strategies import fedavg


class _CountingDataset(Dataset[tuple[torch.Tensor, int]]):
    """Ten thousand samples that are only made when read; it counts the reads."""

    def __init__(self, size: int) -> None:
        self.targets = torch.arange(size) % 10
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads.append(index)
        return torch.full((2,), float(index)), int(self.targets[index])


def test_take_gives_the_rows_of_arrays_and_tensors() -> None:
    x = np.arange(10.0).reshape(5, 2)
    y = torch.tensor([0, 1, 2, 3, 4])

    x_part, y_part = take((x, y), [3, 1])

    np.testing.assert_array_equal(x_part, [[6.0, 7.0], [2.0, 3.0]])
    assert y_part.tolist() == [3, 1]
    x_part[0, 0] = -1.0
    assert x[3, 0] == 6.0  # the client's rows are its own: the dataset is unchanged


def test_take_of_a_torch_dataset_is_a_subset_that_reads_nothing_yet() -> None:
    dataset = _CountingDataset(100)

    part = take(dataset, np.array([5, 7, 9]))

    assert isinstance(part, Subset)
    assert part.dataset is dataset  # shared, not copied
    assert dataset.reads == []
    assert [int(target) for _, target in part] == [5, 7, 9]
    assert dataset.reads == [5, 7, 9]


def test_labels_of_reads_targets_without_reading_samples() -> None:
    dataset = _CountingDataset(20)
    tensors = TensorDataset(torch.zeros(3, 1), torch.tensor([2, 0, 1]))

    labels = labels_of(dataset)

    assert labels.tolist() == [i % 10 for i in range(20)]
    assert dataset.reads == []
    assert labels_of(Subset(dataset, [3, 14])).tolist() == [3, 4]
    with pytest.raises(ConfigError, match="no 'targets' or 'labels' attribute"):
        labels_of(tensors)


def test_take_rejects_what_it_cannot_split() -> None:
    with pytest.raises(ConfigError, match="got dict"):
        take({"x": [1, 2]}, [0])


def test_simulation_reads_only_the_samples_of_the_active_clients() -> None:
    """1,000 clients of 10 samples; 2 train per round: 3 rounds read at most 60 samples."""
    dataset = _CountingDataset(10_000)
    labels = labels_of(dataset)

    def client_fn(context: ClientContext) -> FunctionClient:
        share = take(dataset, context.partition(labels))

        def fit(weights: object, config: object) -> tuple[dict[str, list[float]], int, dict]:
            total = sum(float(inputs[0]) for inputs, _ in share)
            return {"x": [total]}, len(share), {}

        return FunctionClient(weights={"x": [0.0]}, fit=fit)

    result = simulate(
        client_fn,
        num_clients=1_000,
        rounds=3,
        partitioner=IID(),
        strategy=fedavg(fraction_fit=0.002, fraction_evaluate=0.0),
        initial_weights={"x": [0.0]},
        device="cpu",
    )

    assert [record.num_results for record in result.history] == [2, 2, 2]
    assert 0 < len(dataset.reads) <= 60
