"""Tests for fedloom.data.synthetic: the FedProx paper's synthetic(alpha, beta) data."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom.core import generator
from fedloom.data import SyntheticDevice, synthetic, synthetic_devices
from fedloom.errors import ConfigError

Dataset = list[tuple[NDArray[np.float32], NDArray[np.int64]]]


def _mean_pairwise_distance(points: list[NDArray[Any]]) -> float:
    return float(np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(points, 2)]))


def _label_shares(data: Dataset, num_classes: int) -> list[NDArray[np.float64]]:
    return [np.bincount(y, minlength=num_classes) / y.size for _, y in data]


def _mean_total_variation(shares: list[NDArray[np.float64]]) -> float:
    """Mean over client pairs of the total-variation distance ``sum |p - q| / 2``."""
    return float(np.mean([np.abs(p - q).sum() / 2 for p, q in itertools.combinations(shares, 2)]))


# --- shapes, dtypes and sizes ----------------------------------------------------------


def test_synthetic_returns_float32_features_and_int64_labels_per_client() -> None:
    data = synthetic(1, 1, num_clients=3, samples_per_client=[5, 6, 7], dimension=4, num_classes=3)

    assert len(data) == 3
    for (x, y), size in zip(data, [5, 6, 7], strict=True):
        assert x.shape == (size, 4)
        assert x.dtype == np.float32
        assert y.shape == (size,)
        assert y.dtype == np.int64


def test_synthetic_defaults_are_the_papers_60_features_and_30_clients() -> None:
    data = synthetic(1, 1)

    assert len(data) == 30
    assert {x.shape[1] for x, _ in data} == {60}


def test_synthetic_labels_are_classes_in_range() -> None:
    data = synthetic(1, 1, num_clients=10, num_classes=4, seed=3)

    labels = np.concatenate([y for _, y in data])

    assert labels.min() >= 0
    assert labels.max() < 4


def test_synthetic_default_sizes_follow_the_capped_power_law() -> None:
    data = synthetic(0, 0, num_clients=200, dimension=1, num_classes=2, seed=0)

    sizes = np.array([y.size for _, y in data])

    # floor(LogNormal(4, 2)) + 50 >= 50, capped at 2000; median e^4 + 50 ~ 105, heavy tail.
    assert sizes.min() >= 50
    assert sizes.max() == 2000
    assert 60 < np.median(sizes) < 200


# --- determinism -----------------------------------------------------------------------


def test_synthetic_same_seed_gives_identical_data() -> None:
    first = synthetic(0.5, 0.5, num_clients=5, seed=11)
    second = synthetic(0.5, 0.5, num_clients=5, seed=11)

    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_synthetic_different_seeds_give_different_data() -> None:
    sizes = [20, 20]
    first = synthetic(1, 1, num_clients=2, samples_per_client=sizes, seed=0)
    second = synthetic(1, 1, num_clients=2, samples_per_client=sizes, seed=1)

    for (x1, _), (x2, _) in zip(first, second, strict=True):
        assert not np.array_equal(x1, x2)


def test_synthetic_first_clients_do_not_change_when_more_are_added() -> None:
    """Client k's model and samples derive from the seed and k alone."""
    few = synthetic(1, 1, num_clients=2, samples_per_client=[10, 10], seed=5)
    many = synthetic(1, 1, num_clients=4, samples_per_client=[10, 10, 10, 10], seed=5)

    for (x1, y1), (x2, y2) in zip(few, many[:2], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


# --- the generative process ------------------------------------------------------------


def test_synthetic_labels_are_the_argmax_of_each_devices_logits() -> None:
    options: dict[str, Any] = {"num_clients": 4, "samples_per_client": [50] * 4, "seed": 2}
    data = synthetic(1, 1, **options)
    options.pop("samples_per_client")

    devices = synthetic_devices(1, 1, **options)

    for device, (x, y) in zip(devices, data, strict=True):
        logits = x.astype(np.float64) @ device.weight.T + device.bias
        np.testing.assert_array_equal(y, logits.argmax(axis=1))


def test_synthetic_device_shapes_match_the_paper() -> None:
    devices = synthetic_devices(1, 1, num_clients=2)

    for device in devices:
        assert device.weight.shape == (10, 60)
        assert device.bias.shape == (10,)
        assert device.mean.shape == (60,)


def test_synthetic_feature_variance_decays_as_j_to_the_minus_1_2() -> None:
    device = synthetic_devices(1, 1, num_clients=1, dimension=60)[0]

    x, _ = device.sample(20_000, rng=generator(0, "test"))

    # Sigma = diag(j ** -1.2), j = 1 .. 60. A variance estimate from n samples has a relative
    # standard error of sqrt(2 / n) = 0.01, so 5% is five standard errors.
    expected = np.arange(1, 61, dtype=np.float64) ** -1.2
    variance = np.mean((x.astype(np.float64) - device.mean) ** 2, axis=0)
    np.testing.assert_allclose(variance, expected, rtol=0.05)
    # Off the diagonal, correlations are sampling noise (~ 1 / sqrt(n) = 0.007).
    correlation = np.corrcoef(x, rowvar=False)
    assert np.abs(correlation - np.eye(60)).max() < 0.05


def test_synthetic_alpha_and_beta_are_variances() -> None:
    """u_k ~ N(0, alpha) and B_k ~ N(0, beta) with the second argument a variance."""
    devices = synthetic_devices(4, 9, num_clients=400, seed=0)

    # Each W_k, b_k entry is u_k + N(0, 1): the mean of 610 entries is u_k + N(0, 1/610).
    shifts = [np.concatenate([d.weight.ravel(), d.bias]).mean() for d in devices]
    # Each v_k entry is B_k + N(0, 1): the mean of 60 entries is B_k + N(0, 1/60).
    centers = [d.mean.mean() for d in devices]

    # Var(u) = 4 (not 16, as with alpha read as a standard deviation), Var(B) = 9 (not 81);
    # the sample variance of 400 draws has a relative standard error of sqrt(2/400) = 7%.
    assert np.var(shifts) == pytest.approx(4, rel=0.25)
    assert np.var(centers) == pytest.approx(9 + 1 / 60, rel=0.25)


def test_synthetic_alpha_does_not_change_the_labels() -> None:
    """u_k adds u_k * (1 + sum(x)) to every class's logit alike, so the argmax ignores it."""
    options: dict[str, Any] = {"num_clients": 5, "samples_per_client": [200] * 5, "seed": 4}

    without_shift = synthetic(0, 1, **options)
    with_shift = synthetic(9, 1, **options)

    for (x1, y1), (x2, y2) in zip(without_shift, with_shift, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


# --- heterogeneity ---------------------------------------------------------------------


def test_synthetic_larger_beta_spreads_the_clients_feature_means() -> None:
    options: dict[str, Any] = {"num_clients": 20, "samples_per_client": [200] * 20, "seed": 0}

    means_0 = [x.mean(axis=0) for x, _ in synthetic(1, 0, **options)]
    means_10 = [x.mean(axis=0) for x, _ in synthetic(1, 10, **options)]

    # ||v_k - v_l||^2 has expectation 60 * (2 + 2 * beta): about sqrt(120) = 11 for beta = 0
    # and sqrt(1320) = 36 for beta = 10.
    assert _mean_pairwise_distance(means_10) > 2 * _mean_pairwise_distance(means_0)


def test_synthetic_non_iid_label_distributions_differ_more_across_clients_than_iid() -> None:
    options: dict[str, Any] = {"num_clients": 20, "samples_per_client": [500] * 20, "seed": 0}

    non_iid = _mean_total_variation(_label_shares(synthetic(1, 1, **options), 10))
    iid = _mean_total_variation(_label_shares(synthetic(1, 1, iid=True, **options), 10))

    # iid: only sampling noise, ~ sqrt(10 / 500) / 2 ~ 0.07; non-iid: each client has its
    # own W_k, b_k and v_k, so the label shares have little in common.
    assert iid < 0.15
    assert non_iid > 0.5


def test_synthetic_iid_clients_share_one_device() -> None:
    devices = synthetic_devices(1, 1, num_clients=3, iid=True, seed=0)

    for device in devices[1:]:
        np.testing.assert_array_equal(device.weight, devices[0].weight)
        np.testing.assert_array_equal(device.bias, devices[0].bias)
        np.testing.assert_array_equal(device.mean, devices[0].mean)


def test_synthetic_iid_clients_label_with_the_same_function() -> None:
    data = synthetic(1, 1, num_clients=3, samples_per_client=[100] * 3, iid=True, seed=0)
    other_client = synthetic_devices(1, 1, num_clients=3, iid=True, seed=0)[1]

    x0, y0 = data[0]

    np.testing.assert_array_equal(other_client.label(x0), y0)
    assert not np.array_equal(x0, data[1][0])  # same distribution, different samples


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field", "message"),
    [
        ({"alpha": -1.0}, "alpha", r"alpha must be a finite variance >= 0, got -1\.0\. The paper"),
        ({"beta": float("nan")}, "beta", r"beta must be a finite variance >= 0, got nan\."),
        ({"beta": True}, "beta", r"beta must be a finite variance >= 0, got True\."),
        (
            {"num_clients": 0},
            "num_clients",
            r"num_clients must be an integer >= 1, got 0\. Pass the number of devices; "
            r"the paper uses 30\.",
        ),
        (
            {"dimension": 2.0},
            "dimension",
            r"dimension must be an integer >= 1, got 2\.0\. Pass the number of features",
        ),
        (
            {"num_classes": 1},
            "num_classes",
            r"num_classes must be an integer >= 2, got 1\. Pass the number of labels; "
            r"the paper uses 10\.",
        ),
        (
            {"samples_per_client": [10, 10]},
            "samples_per_client",
            r"samples_per_client has 2 counts but num_clients is 3\. Pass one count per "
            r"client, or None for the paper's power law\.",
        ),
        (
            {"samples_per_client": [10, 0, 10]},
            "samples_per_client",
            r"samples_per_client\[1\] must be an integer >= 1, got 0\. Every client needs",
        ),
    ],
)
def test_synthetic_rejects_invalid_arguments(
    arguments: dict[str, Any], field: str, message: str
) -> None:
    options: dict[str, Any] = {"alpha": 1.0, "beta": 1.0, "num_clients": 3, **arguments}
    alpha, beta = options.pop("alpha"), options.pop("beta")

    with pytest.raises(ConfigError, match=message) as info:
        synthetic(alpha, beta, **options)

    assert info.value.field == field


def test_synthetic_device_rejects_mismatched_shapes() -> None:
    with pytest.raises(
        ConfigError,
        match=r"SyntheticDevice needs weight \(C, d\), bias \(C,\) and mean \(d,\), got shapes "
        r"\(3, 2\), \(2,\) and \(2,\)\.",
    ) as info:
        SyntheticDevice(weight=np.zeros((3, 2)), bias=np.zeros(2), mean=np.zeros(2))

    assert info.value.field == "weight"
