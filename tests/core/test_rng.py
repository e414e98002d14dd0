"""`derive_seeds` (core/rng.py): many key paths at once, each exactly `derive_seed`'s seed.

`derive_seed` is numpy's own ``SeedSequence``, so every equality below also checks the
batched reimplementation of its hashing (constants, padding, word layout) against numpy.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from fedloom.core import derive_seed, derive_seeds
from fedloom.errors import ConfigError

SEEDS = [0, 1, 2**32 - 1, 2**32, 2**64 + 5, 2**96 + 7, 2**128 + 3, 7**60, 123456789]
"""Run seeds of 1, 2, 3, 4, 5 and 6 uint32 words (0 is one word, as numpy writes it)."""

Path = tuple[int | str, ...]


def _random_key(rnd: random.Random) -> int | str:
    """A key of one of the layouts: strings (one CRC-32 word), ints of 1, 2 or 3 words, ±."""
    kind = rnd.randrange(7)
    if kind == 0:
        return rnd.choice(["client", "round", "c17", "", "ünïcode"])
    if kind == 1:
        return rnd.randrange(3)  # 0 zigzags to 0, itself one word
    if kind == 2:
        return rnd.randrange(-(2**31), 2**31)  # one word after the zigzag
    if kind == 3:
        return rnd.choice([2**31, -(2**31) - 1, 2**40, -(2**50)])  # two words
    if kind == 4:
        return rnd.randrange(-(2**95), 2**95)  # up to three words
    if kind == 5:
        return rnd.randrange(2**31, 2**32)  # zigzag crosses 2**32: two words
    return -rnd.randrange(1, 2**31)  # negative, one word


def _random_paths(rnd: random.Random, count: int) -> list[Path]:
    return [tuple(_random_key(rnd) for _ in range(rnd.randrange(7))) for _ in range(count)]


@pytest.mark.parametrize("seed", SEEDS)
def test_derive_seeds_equals_derive_seed_on_random_paths(seed: int) -> None:
    """1,000 paths of mixed layouts (0 to 6 keys of 1 to 3 words) in one call, order kept."""
    paths = _random_paths(random.Random(seed % 1000), 1000)

    seeds = derive_seeds(seed, paths)

    assert seeds == [derive_seed(seed, *path) for path in paths]


@pytest.mark.parametrize("seed", SEEDS)
def test_derive_seeds_equals_numpy_seed_sequence_for_explicit_words(seed: int) -> None:
    """Keys chosen for their words: after the zigzag, 0, 1, 2 and 3 uint32 words (and crc32)."""
    paths: list[Path] = [(), (0,), (-1,), (2**31,), (2**63,), ("client",), ("client", "c1", 3)]
    spawn_keys = [(), (0,), (1,), (2**32,), (2**64,), (zlib.crc32(b"client"),)]
    spawn_keys.append((zlib.crc32(b"client"), zlib.crc32(b"c1"), 6))

    seeds = derive_seeds(seed, paths)

    expected = [
        int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1)[0]) for key in spawn_keys
    ]
    assert seeds == expected


def test_derive_seeds_pads_the_seed_words_when_a_key_follows() -> None:
    """Seed 1 and key 0 hash [1, 0, 0, 0, 0], not [1, 0]: numpy pads the seed to the pool size.

    Also each seed of 1 to 5 words with one key, so a wrong padding length or a wrong
    constant changes at least one of these values.
    """
    padded = int(np.random.SeedSequence(1, spawn_key=(0,)).generate_state(1)[0])
    unpadded = int(np.random.SeedSequence([1, 0]).generate_state(1)[0])

    seeds = [derive_seeds(seed, [(0,), ("x",), ()]) for seed in SEEDS]

    assert padded != unpadded  # the rule is visible in the output
    assert seeds[1][0] == padded
    assert seeds == [[derive_seed(s, 0), derive_seed(s, "x"), derive_seed(s)] for s in SEEDS]


def test_derive_seeds_gives_a_round_of_client_seeds_as_the_orchestrator_did() -> None:
    """Paths sharing their first and last keys (hashed once for all) and repeated paths."""
    paths: list[Path] = [("client", f"c{i}", 4) for i in range(100)]
    paths += [("client", "c7", 4)] * 3 + [("client", 7, 4), ("evaluate", 4)]

    seeds = derive_seeds(42, paths)

    assert seeds == [derive_seed(42, *path) for path in paths]
    assert len(set(seeds[:100])) == 100


def test_derive_seeds_of_identical_paths_are_identical() -> None:
    seeds = derive_seeds(2**64 + 5, [("round", 3)] * 5 + [()] * 3)

    assert seeds == [derive_seed(2**64 + 5, "round", 3)] * 5 + [derive_seed(2**64 + 5)] * 3


def test_derive_seeds_returns_python_ints_and_accepts_any_iterable() -> None:
    seeds = derive_seeds(5, (("client", str(i), 1) for i in range(3)))

    assert all(type(seed) is int and 0 <= seed < 2**32 for seed in seeds)
    assert derive_seeds(5, []) == []


def test_derive_seeds_treats_bools_as_derive_seed_does() -> None:
    assert derive_seeds(3, [(True,), (False, "x")]) == [
        derive_seed(3, True),
        derive_seed(3, False, "x"),
    ]


def test_derive_seeds_refuses_a_negative_seed() -> None:
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        derive_seeds(-1, [("client", "c1", 1)])


def test_derive_seeds_refuses_keys_that_are_not_int_or_str() -> None:
    with pytest.raises(TypeError, match=r"a seed key must be an int or a str, got float 1\.5"):
        derive_seeds(0, [("client", 1.5)])  # type: ignore[list-item]


def test_derive_seeds_refuses_a_float_seed() -> None:
    with pytest.raises(TypeError):
        derive_seeds(1.0, [()])  # type: ignore[arg-type]
