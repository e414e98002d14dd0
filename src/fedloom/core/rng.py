"""Seeded randomness: every random choice derives from the run seed and named keys.

There is no global generator. `derive_seed(seed, "sample", 3)` always gives the
same integer for the same inputs, on every platform and in every process
(strings are hashed with CRC-32, not Python's salted ``hash``). `derive_seeds`
gives the seeds of many key paths at once, equal to `derive_seed` for each, with
numpy's `SeedSequence` hashing (M. E. O'Neill's seed_seq alternative,
https://www.pcg-random.org/posts/developing-a-seed_seq-alternative.html) done as
uint32 array arithmetic over all the paths instead of one object per path.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from fedloom.errors import ConfigError

__all__ = ["derive_seed", "derive_seeds", "generator"]

# numpy's SeedSequence (numpy/random/bit_generator.pyx), default pool of 4 words.
_POOL_SIZE = 4
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = 0xCA01F9DD
_MIX_MULT_R = 0x4973F715
_XSHIFT = 16
_MASK32 = 0xFFFFFFFF
_FIRST_STATE_MULT = _INIT_B * _MULT_B & _MASK32  # generate_state(1)'s one multiplier


def _key(part: int | str) -> int:
    if isinstance(part, int):  # zigzag: distinct for every int, negative ones included
        return 2 * part if part >= 0 else -2 * part - 1
    return zlib.crc32(part.encode())


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 32-bit seed derived from `seed` and `keys`, independent for each distinct key path."""
    sequence = np.random.SeedSequence(seed, spawn_key=tuple(_key(k) for k in keys))
    return int(sequence.generate_state(1)[0])


def generator(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy Generator for `seed` and `keys` (see `derive_seed`)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(map(_key, keys))))


def derive_seeds(seed: int, paths: Iterable[Sequence[int | str]]) -> list[int]:
    """The seeds of many key paths at once: ``derive_seed(seed, *path)`` for each path.

    Each result is exactly `derive_seed`'s (numpy's ``SeedSequence(seed,
    spawn_key=...).generate_state(1)[0]``). The seed's words, which every path
    shares, are hashed once; the key words are hashed with uint32 array
    arithmetic over all the paths with the same number of key words, so a
    round's seeds for many clients cost a few dozen array operations instead of
    one ``SeedSequence`` each.

    Args:
        seed: the run seed, a non-negative integer of any size.
        paths: the key paths, each a sequence of ints and strings (may be empty).

    Returns:
        The 32-bit seeds, one per path, in the order of `paths`.

    Raises:
        ConfigError: `seed` is negative (numpy's ``SeedSequence`` refuses it too).
        TypeError: `seed` is not an integer, or a key is neither an int nor a string.

    Example:
        >>> paths = [("client", "c1", 3), ("client", 7, 3), ()]
        >>> derive_seeds(42, paths) == [derive_seed(42, *path) for path in paths]
        True
    """
    run_words = _seed_words(seed)
    # With a spawn key numpy pads the seed's words to the pool size; without one
    # the pool is filled with hashes of 0 all the same, so every path starts with
    # the padded seed words and differs only in its key words.
    run_words += [0] * (_POOL_SIZE - len(run_words))
    groups: dict[int, tuple[list[int], list[int]]] = {}  # key words -> (indices, words)
    count = 0
    for index, path in enumerate(paths):
        words: list[int] = []
        for part in path:  # the common keys inline: this loop is most of the cost
            if type(part) is str:
                words.append(zlib.crc32(part.encode()))
            elif type(part) is int and 0 <= part <= _MASK32 // 2:
                words.append(2 * part)  # `_key`'s zigzag, one word
            else:
                words += _key_words(part)
        indices, flat = groups.setdefault(len(words), ([], []))
        indices.append(index)
        flat.extend(words)
        count = index + 1
    longest = max(groups, default=0)
    hash_constants = _hash_constants(_POOL_SIZE * (len(run_words) + longest))
    pool, call = _seed_pool(run_words, hash_constants)
    seeds = np.empty(count, dtype=np.uint32)
    for indices, flat in groups.values():
        seeds[indices] = _first_state_words(pool, call, flat, len(indices), hash_constants)
    result: list[int] = seeds.tolist()
    return result


def _seed_words(seed: int) -> list[int]:
    seed = operator.index(seed)  # a float is refused (TypeError), as numpy refuses it
    if seed < 0:
        raise ConfigError(
            f"seed must be a non-negative integer, got {seed}. Pass the run seed as an "
            "int >= 0 (e.g. 0 or 42), as numpy's SeedSequence requires.",
            field="seed",
            value=seed,
        )
    return _int_words(seed)


def _key_words(part: int | str) -> list[int]:
    if isinstance(part, str):
        return [zlib.crc32(part.encode())]
    if not isinstance(part, int):
        raise TypeError(
            f"a seed key must be an int or a str, got {type(part).__name__} {part!r}. "
            "Pass key paths such as ('client', client_id, server_round)."
        )
    return _int_words(_key(part))


def _int_words(value: int) -> list[int]:
    """`value` (>= 0) as uint32 words, lowest first; 0 is one word, as numpy writes it."""
    if value <= _MASK32:
        return [value]
    words = []
    while value:
        words.append(value & _MASK32)
        value >>= 32
    return words


def _hash_constants(calls: int) -> list[int]:
    """hashmix's running constant before each of `calls` calls, and after the last.

    It advances once per call whatever the data, so call k xors ``h[k]`` and
    multiplies by ``h[k + 1]`` for every path.
    """
    constants = [_INIT_A]
    for _ in range(calls):
        constants.append(constants[-1] * _MULT_A & _MASK32)
    return constants


def _hashmix(value: int, xor: int, mult: int) -> int:
    mixed = (value ^ xor) * mult & _MASK32
    return mixed ^ (mixed >> _XSHIFT)


def _mix(x: int, y: int) -> int:
    mixed = (_MIX_MULT_L * x - _MIX_MULT_R * y) & _MASK32
    return mixed ^ (mixed >> _XSHIFT)


def _seed_pool(run_words: list[int], h: list[int]) -> tuple[list[int], int]:
    """The pool after the (padded) seed words, and the number of hashmix calls made."""
    pool = [_hashmix(word, h[i], h[i + 1]) for i, word in enumerate(run_words[:_POOL_SIZE])]
    call = _POOL_SIZE
    for source in range(_POOL_SIZE):  # every word into every other, in numpy's order
        for target in range(_POOL_SIZE):
            if target != source:
                hashed = _hashmix(pool[source], h[call], h[call + 1])
                pool[target] = _mix(pool[target], hashed)
                call += 1
    for word in run_words[_POOL_SIZE:]:  # a seed beyond 128 bits
        pool = _mixed_in(pool, word, h, call)
        call += _POOL_SIZE
    return pool, call


def _mixed_in(pool: list[int], word: int, h: list[int], call: int) -> list[int]:
    """`pool` with `word` hashed into every pool word, hashmix calls ``call`` on."""
    return [_mix(old, _hashmix(word, h[call + i], h[call + i + 1])) for i, old in enumerate(pool)]


def _first_state_words(
    pool: list[int], call: int, flat: list[int], rows: int, h: list[int]
) -> NDArray[np.uint32]:
    """``generate_state(1)`` of `rows` paths whose key words, as many each, are `flat`."""
    length = len(flat) // rows
    start = 0  # key words that every path shares (the first key, often) are hashed once
    while start < length and len(set(flat[start::length])) == 1:
        pool = _mixed_in(pool, flat[start], h, call)
        call += _POOL_SIZE
        start += 1
    state = np.array(pool, dtype=np.uint32)[:, None]  # (pool, 1): broadcasts over the paths
    if start < length:
        words = np.array(flat, dtype=np.uint32).reshape(rows, length)
        constants = np.array(h[call : call + _POOL_SIZE * (length - start) + 1], dtype=np.uint32)
        xors, mults = constants[:-1, None], constants[1:, None]
        for column in range(start, length):  # each word of every path into every pool word
            lanes = slice((column - start) * _POOL_SIZE, (column - start + 1) * _POOL_SIZE)
            hashed = (words[:, column] ^ xors[lanes]) * mults[lanes]
            hashed ^= hashed >> np.uint32(_XSHIFT)
            state = np.uint32(_MIX_MULT_L) * state - np.uint32(_MIX_MULT_R) * hashed
            state ^= state >> np.uint32(_XSHIFT)
    first = (state[0] ^ np.uint32(_INIT_B)) * np.uint32(_FIRST_STATE_MULT)
    first ^= first >> np.uint32(_XSHIFT)
    return np.broadcast_to(first, (rows,))
