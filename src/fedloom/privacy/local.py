"""Local DP's budget: DP-SGD on each client, its noise calibrated to (epsilon, delta).

A client spends its own budget over its own training (Abadi et al. 2016,
https://arxiv.org/abs/1607.00133; declearn's local DP). Each local step samples
every example independently with probability ``q = batch_size / n`` (Poisson
sampling), clips each example's gradient to ``clip_norm`` and adds Gaussian
noise of std ``z * clip_norm`` to their sum. ``z`` is the smallest noise
multiplier whose epsilon, by Opacus' accountant, stays within the budget over
the *planned* local steps: ``rounds`` fits of ``epochs * floor(1 / q)`` steps.

The client keeps its accountant history between fits (plug-in state
``dpsgd.history``), reports the epsilon spent so far with every fit, and refuses
a fit that would spend more than its budget (`BudgetExhausted`). This module is
numpy-only; the torch half is `fedloom.privacy.dpsgd`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from fedloom.core import Vector
from fedloom.errors import BudgetExhausted, ConfigError
from fedloom.privacy.accounting import (
    Step,
    check_delta,
    epsilon_spent,
    merge_steps,
    noise_multiplier_for_budget,
)
from fedloom.privacy.clipping import check_clip_norm

__all__ = [
    "ACCOUNTING_METRICS",
    "DPSGDBudget",
    "DPSGDPlan",
    "history_from_vector",
    "history_to_vector",
]

ACCOUNTING_METRICS = frozenset({"dpsgd.epsilon"})
"""Client metrics that describe a client's privacy accounting, not its data's values.

Secure aggregation hides every other per-client metric; a client sends these in the
clear next to its masked update when the server asks (``secagg.clear_metrics``), so
the local DP plug-in can report the epsilon spent. ``dpsgd.epsilon`` depends on the
budget, the number of fits, the epochs and the sample rate ``batch_size / n``: it
tells the server roughly how many examples the client holds, nothing more.
"""


def history_to_vector(history: tuple[Step, ...]) -> Vector:
    """An accountant history as a flat float64 vector ``[z, q, steps, ...]`` (client state)."""
    return np.array([value for step in history for value in step], dtype=np.float64)


def history_from_vector(vector: Vector) -> tuple[Step, ...]:
    """Invert `history_to_vector`.

    Raises:
        ConfigError: the vector is not a whole number of ``(z, q, steps)`` triples.
    """
    values = np.asarray(vector, dtype=np.float64).reshape(-1)
    if values.size % 3 or not np.isfinite(values).all():
        raise ConfigError(
            f"the kept DP-SGD history has {values.size} values; expected finite (noise "
            "multiplier, sample rate, steps) triples. Start the client again without its state.",
            field="dpsgd.history",
        )
    return tuple(
        (float(values[i]), float(values[i + 1]), int(values[i + 2]))
        for i in range(0, values.size, 3)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DPSGDPlan:
    """One fit's DP-SGD, as `DPSGDBudget.plan` worked it out.

    Attributes:
        sample_rate: ``q``, each example's chance to be in a step's batch.
        steps: the fit's local steps.
        noise_multiplier: ``z``.
        clip_norm: the per-example gradient bound.
        expected_batch_size: ``q * n``, what Opacus divides the noised sum by.
        history: the client's accountant history after this fit.
        epsilon: the epsilon the client has spent after this fit.
    """

    sample_rate: float
    steps: int
    noise_multiplier: float
    clip_norm: float
    expected_batch_size: int
    history: tuple[Step, ...]
    epsilon: float


@dataclass(frozen=True, kw_only=True)
class DPSGDBudget:
    """A client's DP-SGD budget: ``(epsilon, delta)`` over `rounds` fits.

    Args:
        epsilon: the budget's epsilon, > 0 (smaller is more private; 1 to 10 is common).
        delta: the budget's delta, in (0, 1); below 1 / (examples per client).
        clip_norm: each example's gradient is clipped to this L2 norm, > 0.
        rounds: the most fits a client runs under the budget; the noise is calibrated
            so that this many fits spend it, and a client refuses a fit beyond it.
        accountant: ``"rdp"`` or ``"prv"``.

    Example:
        >>> plan = DPSGDBudget(epsilon=8.0, rounds=2).plan(
        ...     num_examples=100, batch_size=10, epochs=1, history=())
        >>> plan.steps, plan.sample_rate
        (10, 0.1)
    """

    epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    rounds: int = 1
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        valid = not isinstance(self.epsilon, bool) and isinstance(self.epsilon, numbers.Real)
        if not valid or not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(
                f"epsilon must be a finite number > 0, got {self.epsilon!r}. It is each "
                "client's privacy budget over its whole training; 1 to 10 is common.",
                field="epsilon",
                value=self.epsilon,
            )
        check_delta(self.delta)
        check_clip_norm(self.clip_norm)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(
                f"rounds must be an int >= 1, got {self.rounds!r}: the most fits a client runs "
                "under its budget (usually the run's number of rounds).",
                field="rounds",
                value=self.rounds,
            )

    def plan(
        self, *, num_examples: int, batch_size: int, epochs: int, history: tuple[Step, ...]
    ) -> DPSGDPlan:
        """The noise, sampling and steps of the next fit, after the fits in `history`.

        Raises:
            ConfigError: the budget is too small for the planned steps (the noise would
                exceed 1e6 times the clip norm), or the data or batch size is empty.
            BudgetExhausted: this fit would spend more than the budget (the client has
                already run `rounds` fits).
        """
        if num_examples < 1 or batch_size < 1 or epochs < 1:
            raise ConfigError(
                f"DP-SGD needs examples, a batch size and epochs >= 1, got {num_examples} "
                f"examples, batch size {batch_size}, {epochs} epochs.",
                field="batch_size",
            )
        sample_rate = min(1.0, batch_size / num_examples)
        steps = epochs * max(1, int(1 / sample_rate))
        z = noise_multiplier_for_budget(
            epsilon=self.epsilon,
            delta=self.delta,
            sample_rate=sample_rate,
            steps=steps * self.rounds,
            accountant=self.accountant,
        )
        after = merge_steps(history, (z, sample_rate, steps))
        epsilon = epsilon_spent(after, delta=self.delta, accountant=self.accountant)
        if epsilon > self.epsilon * (1 + 1e-9):
            spent = epsilon_spent(history, delta=self.delta, accountant=self.accountant)
            raise BudgetExhausted(
                f"this client has spent epsilon = {spent:.4g} of its budget {self.epsilon} "
                f"(delta {self.delta}); another fit would bring it to {epsilon:.4g}. It runs at "
                f"most rounds = {self.rounds} fits; raise rounds (more noise per fit) or "
                "epsilon, or leave this client out of later rounds."
            )
        return DPSGDPlan(
            sample_rate=sample_rate,
            steps=steps,
            noise_multiplier=z,
            clip_norm=float(self.clip_norm),
            expected_batch_size=max(1, round(sample_rate * num_examples)),
            history=after,
            epsilon=epsilon,
        )
