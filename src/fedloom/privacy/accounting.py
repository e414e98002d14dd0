"""Privacy accounting through Opacus' accountants: epsilon spent, and noise for a budget.

A mechanism's history is a sequence of ``(noise_multiplier, sample_rate, steps)``
triples, the format of Opacus' accountants: ``steps`` applications of the
subsampled Gaussian mechanism with that noise multiplier, each record included
with probability ``sample_rate``. `epsilon_spent` hands the history to Opacus'
RDP accountant (Mironov 2017, https://arxiv.org/abs/1702.07476) or PRV
accountant (Gopi, Lee, Wutschitz 2021, https://arxiv.org/abs/2106.02848) and
returns its epsilon for a delta, so the figure is the library's own.

Opacus (and torch, which it imports) is loaded on first use: ``pip install
fedloom[privacy]``.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, did_you_mean

__all__ = [
    "ACCOUNTANTS",
    "Step",
    "check_delta",
    "epsilon_spent",
    "merge_steps",
    "noise_multiplier_for_budget",
]

Step = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``: one stretch of identical mechanism steps."""

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
"""The Opacus accountants fedloom can report with."""


def _opacus_accountants() -> Any:
    try:
        from opacus import accountants
    except ImportError as exc:  # an optional extra
        raise ImportError(
            "privacy accounting needs Opacus: pip install 'fedloom[privacy]'"
        ) from exc
    return accountants


def check_delta(delta: float, name: str = "delta") -> float:
    """`delta` as a float, if it is in (0, 1).

    Raises:
        ConfigError: naming `name`, for anything else.
    """
    valid = not isinstance(delta, bool) and isinstance(delta, numbers.Real)
    if not valid or not (0 < delta < 1):
        raise ConfigError(
            f"{name} must be a number in (0, 1), got {delta!r}. It is the probability that the "
            "epsilon guarantee fails; use less than 1 / (number of records), e.g. 1e-5.",
            field=name,
            value=delta,
        )
    return float(delta)


def check_accountant(accountant: str, name: str = "accountant") -> str:
    """`accountant` if it is one of `ACCOUNTANTS`.

    Raises:
        ConfigError: an unknown accountant, with the known ones.
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown accountant {accountant!r}; choose one of: {', '.join(ACCOUNTANTS)}."
            f"{did_you_mean(str(accountant), ACCOUNTANTS)}",
            field=name,
            value=accountant,
        )
    return accountant


def merge_steps(history: Sequence[Step], step: Step) -> tuple[Step, ...]:
    """`history` with `step` appended, merged into the last stretch when it has the same mechanism.

    Example:
        >>> merge_steps([(1.0, 0.5, 3)], (1.0, 0.5, 2))
        ((1.0, 0.5, 5),)
    """
    if history and history[-1][:2] == step[:2]:
        last = history[-1]
        return (*history[:-1], (last[0], last[1], last[2] + step[2]))
    return (*history, step)


def epsilon_spent(history: Sequence[Step], *, delta: float, accountant: str = "rdp") -> float:
    """The epsilon, at `delta`, of all the mechanism steps in `history`, by Opacus' accountant.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` stretches, oldest first.
        delta: the delta of the ``(epsilon, delta)`` guarantee, in (0, 1).
        accountant: ``"rdp"`` or ``"prv"``.

    Returns:
        Epsilon; 0.0 for an empty history, ``inf`` when a step had no noise.

    Raises:
        ConfigError: a bad delta or an unknown accountant.
    """
    check_delta(delta)
    check_accountant(accountant)
    steps = [(float(z), float(q), int(n)) for z, q, n in history if n > 0]
    if not steps:
        return 0.0
    if any(z <= 0 for z, _, _ in steps):
        return math.inf
    accountants = _opacus_accountants()
    if accountant == "rdp":
        # RDPAccountant.get_privacy_spent's own sum, with each stretch's per-step RDP
        # cached: compute_rdp(q, z, n) is n times compute_rdp(q, z, 1), so a client's
        # next fit costs a multiplication instead of the fractional-order series again
        analysis = accountants.analysis.rdp
        rdp = sum(_rdp_per_step(z, q) * n for z, q, n in steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
            epsilon, _ = analysis.get_privacy_spent(
                orders=accountants.RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
            )
        return float(epsilon)
    tracker = accountants.create_accountant(mechanism=accountant)
    tracker.history = steps
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore", UserWarning)  # RDP: "optimal order is the largest alpha"
        return float(tracker.get_epsilon(delta=delta))  # PRV at rate 1 takes log(0) on the way


def noise_multiplier_for_budget(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) spending at most `epsilon` in `steps`.

    Opacus' ``get_noise_multiplier`` by binary search; results are cached, since every
    fit of a client asks again with the same figures.

    Raises:
        ConfigError: ``epsilon <= 0``, a bad delta or sample rate, or a budget too small for
            the steps (the noise would have to exceed 1e6 times the clip norm).
    """
    valid = not isinstance(epsilon, bool) and isinstance(epsilon, numbers.Real)
    if not valid or not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(
            f"epsilon must be a finite number > 0, got {epsilon!r}. It is the privacy budget "
            "of the whole training (smaller: more private); 1 to 10 is common.",
            field="epsilon",
            value=epsilon,
        )
    check_delta(delta)
    check_accountant(accountant)
    if not (0 < sample_rate <= 1):
        raise ConfigError(
            f"sample_rate must be in (0, 1], got {sample_rate!r} (batch size / examples).",
            field="sample_rate",
            value=sample_rate,
        )
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}.", field="steps", value=steps)
    return _noise_multiplier(
        float(epsilon), float(delta), float(sample_rate), int(steps), accountant
    )


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> Any:
    """Opacus' RDP of one step at its default orders (an array: never modify it)."""
    accountants = _opacus_accountants()
    return accountants.analysis.rdp.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=accountants.RDPAccountant.DEFAULT_ALPHAS,
    )


def _search_orders(accountant: str) -> dict[str, Any]:
    """The RDP orders the noise search tries: the defaults' integers and every tenth fraction.

    A subset of the orders `epsilon_spent` minimizes over, so the epsilon it finds is
    never below the reported one: the noise found may be a little more than needed,
    never less. The fractional orders cost most (a series each); this keeps the
    search to a few seconds per client.
    """
    if accountant != "rdp":
        return {}
    defaults = _opacus_accountants().RDPAccountant.DEFAULT_ALPHAS
    orders = [a for i, a in enumerate(defaults) if float(a).is_integer() or i % 10 == 0]
    return {"alphas": orders}


@functools.lru_cache(maxsize=256)
def _noise_multiplier(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    get_noise_multiplier = _opacus_accountants().utils.get_noise_multiplier
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    **_search_orders(accountant),
                )
            )
    except ValueError as exc:  # "The privacy budget is too low."
        raise ConfigError(
            f"the budget epsilon={epsilon}, delta={delta} is too small for {steps} steps at "
            f"sample rate {sample_rate:.4g}: no noise multiplier up to 1e6 meets it ({exc}). "
            "Raise epsilon, or plan fewer steps (fewer rounds or local epochs, a smaller "
            "batch size relative to the data).",
            field="epsilon",
            value=epsilon,
        ) from exc
