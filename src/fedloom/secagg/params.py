"""SecAgg+'s parameters, and what they resolve to for a round of ``n`` clients.

`SecAggPlus` is what a user turns on (``Strategy(secure_aggregation=SecAggPlus())``);
`RoundParams` is the same after the round's size is known: the neighbourhood size
``k``, the threshold ``t`` and the quantization grid.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from fedloom.errors import ConfigError

__all__ = ["RoundParams", "SecAggPlus"]

_MAX_MODULUS_BITS = 52  # masked values travel as float64, exact below 2**53


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class SecAggPlus:
    """Secure aggregation, SecAgg+ (Bell et al. 2020, https://arxiv.org/abs/2005.13468).

    The server learns only the sum of the surviving clients' (quantized) updates.
    Each round runs four stages over the same channel as training::

        setup        server -> client: neighbours;        client -> server: 2 public keys
        share_keys   server -> client: neighbours' keys;  client -> server: encrypted shares
        masked_input server -> client: weights + shares;  client -> server: masked update
        unmask       server -> client: who survived;      client -> server: mask-seed shares

    A client pairs with ``k`` neighbours on a random Harary graph (Bell et al.); its
    masked input is ``y_u = w_u * q(x_u) || w_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^bits``
    and it shares ``b_u`` and its mask key with its neighbours, ``t`` of ``k + 1``
    needed to rebuild either. The server rebuilds ``b_u`` of survivors and the mask
    keys of clients that dropped after sharing, removes those masks, and dequantizes.

    Deviations from the paper: the graph and participant list come from the server
    (honest-but-curious model), there is no signature / consistency round (so a
    server that lies about dropouts is stopped only by ``2t > k + 1`` and by each
    client's checks), and per-client metrics are not sent — except privacy
    accounting a plug-in needs (local DP's ``dpsgd.epsilon``), in the clear.

    Args:
        num_neighbours: ``k``, neighbours per client (rounded up to even); None picks
            ``2 * ceil(1.5 * log2(n))``, O(log n); ``k >= n - 1`` is the complete graph.
        reconstruction_threshold: ``t``, shares needed to rebuild a secret: a fraction of
            the ``k + 1`` share holders in (0.5, 1], or a count; ``2t > k + 1`` is required.
        clipping_range: updates are clipped to ``[-clipping_range, clipping_range]``
            per coordinate before quantization.
        quantization_bits: each coordinate becomes an integer in ``[0, 2^bits - 1]``.
        modulus_bits: sums are computed modulo ``2^modulus_bits`` (at most 52).
        timeout_s: deadline of each stage (the training stage uses the round's fit
            deadline when one is set); a client also drops a session left idle longer.

    Raises:
        ConfigError: a parameter is out of range.
    """

    num_neighbours: int | None = None
    reconstruction_threshold: float | int = 0.6
    clipping_range: float = 4.0
    quantization_bits: int = 24
    modulus_bits: int = 52
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        k = self.num_neighbours
        if k is not None and (not _is_int(k) or k < 1):
            raise ConfigError(
                f"num_neighbours must be an int >= 1 or None, got {k!r}. It is how many peers "
                "each client masks with; None picks O(log n).",
                field="num_neighbours",
                value=k,
            )
        t = self.reconstruction_threshold
        valid_t = (_is_int(t) and t >= 2) or (
            _is_real(t) and not _is_int(t) and 0.5 < float(t) <= 1.0
        )
        if not valid_t:
            raise ConfigError(
                f"reconstruction_threshold must be a fraction in (0.5, 1] of each client's "
                f"k + 1 share holders, or a count >= 2, got {t!r}. 0.6 tolerates 40% dropouts.",
                field="reconstruction_threshold",
                value=t,
            )
        c = self.clipping_range
        if not _is_real(c) or not (math.isfinite(c) and c > 0):
            raise ConfigError(
                f"clipping_range must be a finite number > 0, got {c!r}. Updates are clipped "
                "to [-clipping_range, clipping_range] per coordinate before quantization.",
                field="clipping_range",
                value=c,
            )
        bits, modulus = self.quantization_bits, self.modulus_bits
        if not _is_int(modulus) or not 8 <= modulus <= _MAX_MODULUS_BITS:
            raise ConfigError(
                f"modulus_bits must be an int in [8, {_MAX_MODULUS_BITS}], got {modulus!r}. "
                "Masked values travel as float64, exact below 2**53.",
                field="modulus_bits",
                value=modulus,
            )
        if not _is_int(bits) or not 1 <= bits < modulus:
            raise ConfigError(
                f"quantization_bits must be an int in [1, modulus_bits), got {bits!r} with "
                f"modulus_bits={modulus}. The weighted sum of all clients must fit below "
                "2**modulus_bits.",
                field="quantization_bits",
                value=bits,
            )
        timeout = self.timeout_s
        if not _is_real(timeout) or not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(
                f"timeout_s must be a finite number of seconds > 0, got {timeout!r}. Every "
                "stage of the protocol needs a deadline.",
                field="timeout_s",
                value=timeout,
            )

    def for_round(self, num_clients: int) -> RoundParams:
        """The parameters of a round of `num_clients` participants.

        Raises:
            ConfigError: a count threshold larger than the neighbourhood, or too few clients.
        """
        if num_clients < 2:
            raise ConfigError(
                f"secure aggregation needs at least 2 clients in a round, got {num_clients}: "
                "the sum of one update is the update. Sample more clients.",
                field="secure_aggregation",
                value=num_clients,
            )
        wanted = self.num_neighbours
        if wanted is None:
            wanted = 2 * math.ceil(1.5 * math.log2(num_clients))
        neighbours = num_clients - 1 if wanted >= num_clients - 1 else wanted + wanted % 2
        neighbours = min(neighbours, num_clients - 1)
        holders = neighbours + 1
        t = self.reconstruction_threshold
        threshold = int(t) if _is_int(t) else math.ceil(float(t) * holders)
        if not (2 * threshold > holders and threshold <= holders):
            raise ConfigError(
                f"reconstruction_threshold={t!r} gives t={threshold} for {holders} share "
                f"holders (k={neighbours} neighbours + the client); t must satisfy "
                f"{holders // 2 + 1} <= t <= {holders}, so that no two disjoint groups can "
                "rebuild both secrets of a client. Use a fraction such as 0.6.",
                field="reconstruction_threshold",
                value=t,
            )
        return RoundParams(
            num_clients=num_clients,
            num_neighbours=neighbours,
            threshold=threshold,
            clipping_range=float(self.clipping_range),
            quantization_bits=self.quantization_bits,
            modulus_bits=self.modulus_bits,
        )


@dataclass(frozen=True, kw_only=True)
class RoundParams:
    """SecAgg+ resolved for one round (`SecAggPlus.for_round`)."""

    num_clients: int
    num_neighbours: int
    threshold: int
    clipping_range: float
    quantization_bits: int
    modulus_bits: int

    @property
    def levels(self) -> int:
        """The largest quantized value, ``2^quantization_bits - 1``."""
        return (1 << self.quantization_bits) - 1

    @property
    def step(self) -> float:
        """The quantization step ``2c / levels``; the rounding error per value is below it."""
        return 2.0 * self.clipping_range / self.levels
