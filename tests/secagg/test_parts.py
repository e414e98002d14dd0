"""SecAgg+'s parts: Shamir sharing, quantization, the neighbour graph, the parameters."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.errors import ConfigError, SecAggAborted
from fedloom.secagg import SecAggPlus
from fedloom.secagg.graph import harary_neighbours
from fedloom.secagg.quantize import dequantize_sum, quantization_error_bound, quantize
from fedloom.secagg.shamir import PRIME, combine, split


def test_shamir_any_t_shares_rebuild_the_secret_and_t_minus_1_do_not() -> None:
    secret = bytes(range(16))
    shares = split(secret, xs=[1, 2, 3, 4, 5], threshold=3)

    rebuilt = {
        combine({x: shares[x] for x in xs}, threshold=3) for xs in [(1, 2, 3), (2, 4, 5), (1, 3, 5)]
    }

    assert rebuilt == {secret}
    with pytest.raises(ConfigError, match="needs 3 shares, got 2"):
        combine({1: shares[1], 2: shares[2]}, threshold=3)


def test_shamir_shares_are_uniform_field_elements_not_the_secret() -> None:
    """With t=2 a single share is f(x) = s + a*x with a uniform: it differs every split."""
    secret = b"\x01" * 16

    first = [split(secret, xs=[1, 2], threshold=2)[1] for _ in range(20)]

    assert len(set(first)) == 20
    assert all(0 <= value < PRIME for value in first)


def test_shamir_altered_shares_outside_the_secret_range_are_refused() -> None:
    # with holders 1 and 2, s = 2 f(1) - f(2): adding 2^128 to f(2) gives s - 2^128 < 0,
    # which is p - 1 in the field, above any 16-byte secret
    shares = split(b"\xff" * 16, xs=[1, 2, 3], threshold=2)
    shares[2] = (shares[2] + (1 << 128)) % PRIME

    with pytest.raises(SecAggAborted, match="do not rebuild a 16-byte secret"):
        combine({1: shares[1], 2: shares[2]}, threshold=2)


def test_quantize_nearest_is_within_half_a_step_after_clipping() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-3, 3, size=10_000)
    bits, c = 10, 2.0

    q = quantize(values, clipping_range=c, bits=bits, rng=None)
    back = dequantize_sum(q, total_weight=1, clipping_range=c, bits=bits)

    bound = quantization_error_bound(clipping_range=c, bits=bits, stochastic=False)
    assert bound == pytest.approx(2 * c / 1023 / 2)
    assert np.abs(back - np.clip(values, -c, c)).max() <= bound + 1e-12
    assert q.max() == 1023  # clipped values sit on the ends
    assert q.min() == 0


def test_quantize_stochastic_is_unbiased_and_within_one_step() -> None:
    rng = np.random.default_rng(1)
    value = np.full(200_000, 0.3)
    bits, c = 4, 1.0  # step 2/15: 0.3 lies between two levels

    q = quantize(value, clipping_range=c, bits=bits, rng=rng)
    back = dequantize_sum(q, total_weight=1, clipping_range=c, bits=bits)

    step = quantization_error_bound(clipping_range=c, bits=bits, stochastic=True)
    assert np.abs(back - 0.3).max() < step
    assert abs(back.mean() - 0.3) < 0.002  # the mean of 2e5 draws: std about 1.5e-4
    assert len(np.unique(q)) == 2


def test_harary_graph_gives_every_client_k_symmetric_neighbours() -> None:
    clients = [f"c{i}" for i in range(50)]

    index, graph = harary_neighbours(clients, num_neighbours=8, rng=np.random.default_rng(0))

    assert sorted(index.values()) == list(range(1, 51))
    assert all(len(peers) == 8 and c not in peers for c, peers in graph.items())
    assert all(c in graph[p] for c, peers in graph.items() for p in peers)


@pytest.mark.parametrize(
    ("n", "k", "t"),
    [(10, 9, 6), (50, 18, 12), (100, 20, 13), (1000, 30, 19)],  # k = 2*ceil(1.5*log2 n)
)
def test_secaggplus_default_neighbourhood_grows_as_log_n(n: int, k: int, t: int) -> None:
    params = SecAggPlus().for_round(n)

    assert (params.num_neighbours, params.threshold) == (k, t)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reconstruction_threshold": 0.5}, "fraction in \\(0.5, 1\\]"),
        ({"num_neighbours": 0}, "num_neighbours must be an int >= 1"),
        ({"clipping_range": -1.0}, "clipping_range must be a finite number > 0"),
        ({"quantization_bits": 52}, "quantization_bits must be an int in \\[1, modulus_bits\\)"),
        ({"modulus_bits": 64}, "modulus_bits must be an int in \\[8, 52\\]"),
        ({"timeout_s": float("inf")}, "Every stage of the protocol needs a deadline"),
    ],
)
def test_secaggplus_refuses_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SecAggPlus(**kwargs)  # type: ignore[arg-type]


def test_secaggplus_threshold_count_must_be_a_majority_of_share_holders() -> None:
    with pytest.raises(ConfigError, match="t must satisfy 6 <= t <= 10"):
        SecAggPlus(reconstruction_threshold=5).for_round(10)
