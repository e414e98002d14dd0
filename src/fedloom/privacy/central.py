"""Central differential privacy: clip every client update, add Gaussian noise to their mean.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, https://arxiv.org/abs/1710.06963)
with fixed clipping, or with adaptive clipping towards a target quantile of the
update norms (Andrew, Thakkar, McMahan, Ramaswamy 2021,
https://arxiv.org/abs/1905.03871). One round, with ``m`` the denominator::

    c_i = clip(u_i, C)                             # u_i = new - global weights of client i
    S   = sum_i c_i                                # example counts are ignored: each client
                                                   # contributes at most C, whatever its size
    mean = (S + N(0, (z_u * C)^2 I)) / m           # noise std on the mean: z_u * C / m
    (adaptive) b = (#{i: ||u_i|| <= C} + N(0, sigma_b^2)) / m
               C <- C * exp(-eta * (b - gamma))    # next round's clip norm

With fixed clipping ``z_u = z``. With adaptive clipping the count is noised too
and ``z_u = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, so that the round as a whole is a
Gaussian mechanism of noise multiplier ``z`` (Andrew et al., Theorem 1): the
accountant is charged ``z`` either way.

**Clients that drop out** (``calibration``). A round plans ``m_planned`` clients
(those sampled) and aggregates the ``m_actual`` that return. The noise on the sum
is ``z_u * C`` either way, so the guarantee the accountant reports holds either way;
what changes is the denominator:

- ``"planned"`` (default): ``m = m_planned``, the fixed-denominator estimator of
  McMahan et al. The released weights do not depend on how many clients
  returned, so the guarantee holds even where the number of participants is
  itself private. Cost: when clients drop, the update shrinks by
  ``m_actual / m_planned`` (noise std on the mean stays ``z * C / m_planned``).
- ``"actual"``: ``m = m_actual``, an unbiased mean whose noise std grows to
  ``z * C / m_actual`` when clients drop. The released weights reveal
  ``m_actual``: sound where who took part is public (the server sees it, and the
  run history records it), weaker than ``"planned"`` where it is not.

Never does a dropout lower the noise on the sum below ``z * C``: calibrating the
noise to ``m_planned`` but dividing by ``m_actual`` would (the privacy would be
that of ``z * m_actual / m_planned``), and neither option does it.

**Sampling.** A round samples ``m_planned`` of ``N`` available clients; the
accountant treats that as Poisson sampling at rate ``m_planned / N`` (as McMahan
et al. do). With every client in every round the rate is 1 and the bound is exact.

**Noise source.** By default the noise comes from the operating system's
entropy, not from the run seed: anyone who knows a seed could regenerate seeded
noise and subtract it. ``reproducible=True`` draws it from the run seed for
experiments. numpy's generator is not hardened against floating-point attacks on
the Gaussian mechanism (Mironov 2012).

What stays outside the guarantee: the clients' own fit metrics (their training
loss, ...) reach the server and the history unnoised, as in other frameworks.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from fedloom.core import Scalar, Vector
from fedloom.errors import ConfigError, NotEnoughResults, did_you_mean
from fedloom.privacy.accounting import (
    Step,
    check_accountant,
    check_delta,
    epsilon_spent,
    merge_steps,
)
from fedloom.privacy.clipping import check_clip_norm, l2_norm, next_clip_norm
from fedloom.privacy.noise import add_gaussian_noise, check_noise_multiplier

__all__ = [
    "CALIBRATIONS",
    "AdaptiveClip",
    "CentralDP",
    "DPFold",
    "FixedClip",
    "PrivacyState",
    "central_dp",
]

CALIBRATIONS: tuple[str, ...] = ("planned", "actual")
"""What the mean divides by when clients drop out (see the module docstring)."""


@dataclass(frozen=True, kw_only=True)
class FixedClip:
    """Clip every update to the same L2 norm.

    Args:
        clip_norm: ``C``, > 0.
    """

    clip_norm: float

    def __post_init__(self) -> None:
        check_clip_norm(self.clip_norm)


@dataclass(frozen=True, kw_only=True)
class AdaptiveClip:
    """Move the clip norm each round towards the `target_quantile` of the update norms.

    Args:
        initial_norm: the clip norm of round 1, > 0.
        target_quantile: ``gamma``, the share of updates that should fit under the
            norm unclipped, in (0, 1); 0.5 tracks the median norm.
        learning_rate: ``eta`` of the geometric update, > 0 (the paper uses 0.2).
        count_noise_std: ``sigma_b``, the std of the noise on the count of unclipped
            updates; must exceed ``noise_multiplier / 2``. None: ``max(m / 20, z)``
            with ``m`` the clients sampled in the round (the paper's ``m / 20``, raised
            to ``z`` for small rounds, which costs the update noise at most 16%).
    """

    initial_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None

    def __post_init__(self) -> None:
        check_clip_norm(self.initial_norm, "initial_norm")
        quantile = self.target_quantile
        if (
            isinstance(quantile, bool)
            or not isinstance(quantile, numbers.Real)
            or not (0 < quantile < 1)
        ):
            raise ConfigError(
                f"target_quantile must be a number in (0, 1), got {quantile!r}. It is the share "
                "of updates that should pass unclipped; 0.5 (the median norm) is common.",
                field="target_quantile",
                value=quantile,
            )
        rate = self.learning_rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, numbers.Real)
            or not (math.isfinite(rate) and rate > 0)
        ):
            raise ConfigError(
                f"learning_rate must be a finite number > 0, got {rate!r}. It sets how fast "
                "the clip norm moves; Andrew et al. use 0.2.",
                field="learning_rate",
                value=rate,
            )
        std = self.count_noise_std
        if std is not None and (
            isinstance(std, bool)
            or not isinstance(std, numbers.Real)
            or not (math.isfinite(std) and std > 0)
        ):
            raise ConfigError(
                f"count_noise_std must be a finite number > 0 (or left out), got {std!r}.",
                field="count_noise_std",
                value=std,
            )

    def count_std(self, num_planned: int, noise_multiplier: float) -> float:
        """``sigma_b`` for a round that planned `num_planned` clients."""
        if self.count_noise_std is not None:
            return float(self.count_noise_std)
        return max(num_planned / 20, noise_multiplier)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyState:
    """Central DP's state after some rounds: the next clip norm and the accountant's history.

    Attributes:
        clip_norm: the clip norm of the next round.
        history: ``(noise_multiplier, sample_rate, rounds)`` stretches, for the accountant.
        noise_std: the noise std added to the last round's mean (0 before round 1).
        fraction_unclipped: the last round's noised share of unclipped updates
            (adaptive clipping only; None otherwise).
    """

    clip_norm: float
    history: tuple[Step, ...] = ()
    noise_std: float = 0.0
    fraction_unclipped: float | None = None


class DPFold:
    """One round's sum of clipped updates, O(model) memory: `add` each, then `CentralDP.release`.

    Weights (example counts) are ignored: every client counts once.
    """

    def __init__(self, clip_norm: float, dim: int, dtype: DTypeLike) -> None:
        self.clip_norm = clip_norm
        self.total = np.zeros(dim, dtype=dtype)
        self.count = 0
        self.count_unclipped = 0

    def add(self, update: Vector, weight: float = 1.0) -> None:
        """Clip `update` to the round's norm and add it to the sum (`update` is not modified)."""
        norm = l2_norm(update)
        if norm <= self.clip_norm:
            self.total += update
            self.count_unclipped += 1
        else:
            self.total += update * update.dtype.type(self.clip_norm / norm)
        self.count += 1


@dataclass(frozen=True, kw_only=True)
class CentralDP:
    """Clip each client update and add calibrated Gaussian noise to their mean (module docstring).

    Args:
        clip: `FixedClip` or `AdaptiveClip`.
        noise_multiplier: ``z``, > 0: the noise std on the sum, in units of the clip norm.
        delta: the delta of the reported ``(epsilon, delta)``, in (0, 1).
        calibration: ``"planned"`` or ``"actual"``: what the mean divides by when
            clients drop out, and so the noise std on the mean (module docstring).
        accountant: Opacus' ``"rdp"`` or ``"prv"`` accountant reports epsilon.
        reproducible: draw the noise from the run seed instead of the OS's entropy
            (for experiments only: whoever knows the seed can remove seeded noise).

    Example:
        >>> dp = CentralDP(clip=FixedClip(clip_norm=1.0), noise_multiplier=1.1)
        >>> dp.init().clip_norm
        1.0
    """

    clip: FixedClip | AdaptiveClip
    noise_multiplier: float
    delta: float = 1e-5
    calibration: str = "planned"
    accountant: str = "rdp"
    reproducible: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.clip, FixedClip | AdaptiveClip):
            raise ConfigError(
                f"clip must be FixedClip(clip_norm=...) or AdaptiveClip(initial_norm=...), got "
                f"{type(self.clip).__name__}.",
                field="clip",
            )
        z = check_noise_multiplier(self.noise_multiplier)
        check_delta(self.delta)
        check_accountant(self.accountant)
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(
                f"calibration must be one of {', '.join(CALIBRATIONS)}, got "
                f"{self.calibration!r}.{did_you_mean(str(self.calibration), CALIBRATIONS)} "
                '"planned" divides by the clients sampled, "actual" by those that returned.',
                field="calibration",
                value=self.calibration,
            )
        std = self.clip.count_noise_std if isinstance(self.clip, AdaptiveClip) else None
        if std is not None and not 2 * std > z:
            raise ConfigError(
                f"count_noise_std must exceed noise_multiplier / 2 = {z / 2}, got {std}: the "
                "count's noise spends part of the budget, and this much would spend all of it. "
                "Raise count_noise_std (Andrew et al. use clients per round / 20) or leave it out.",
                field="count_noise_std",
                value=std,
            )

    @property
    def adaptive(self) -> bool:
        """Whether the clip norm adapts to a target quantile."""
        return isinstance(self.clip, AdaptiveClip)

    def init(self) -> PrivacyState:
        """The state before round 1."""
        clip = self.clip
        norm = clip.initial_norm if isinstance(clip, AdaptiveClip) else clip.clip_norm
        return PrivacyState(clip_norm=float(norm))

    def update_noise_multiplier(self, num_planned: int) -> float:
        """``z_u``: the noise multiplier on the sum of updates of a round of `num_planned`."""
        z = float(self.noise_multiplier)
        if not isinstance(self.clip, AdaptiveClip):
            return z
        sigma_b = self.clip.count_std(num_planned, z)
        return float((z**-2 - (2 * sigma_b) ** -2) ** -0.5)

    def fold(self, state: PrivacyState, dim: int, dtype: DTypeLike) -> DPFold:
        """Start a round's sum of updates clipped to the state's clip norm."""
        return DPFold(state.clip_norm, dim, dtype)

    def release(
        self,
        total: Vector,
        *,
        count: int,
        count_unclipped: int,
        state: PrivacyState,
        num_planned: int,
        num_available: int,
        rng: np.random.Generator,
    ) -> tuple[Vector, PrivacyState]:
        """The noised mean of a round's clipped updates, and the state after the round.

        The one place noise is added: `Strategy` calls it with a `DPFold`'s sum, and
        secure aggregation with the unmasked sum of updates the clients clipped themselves
        (to ``state.clip_norm``), along with the securely summed count of unclipped ones.

        Args:
            total: the sum of the `count` clipped updates (not modified).
            count: ``m_actual``, how many updates the sum holds.
            count_unclipped: how many of them had norm <= the clip norm (adaptive clipping).
            state: the state before the round.
            num_planned: ``m_planned``, the clients the round sampled (at least `count`).
            num_available: the clients that could have been sampled (for the sample rate).
            rng: the round's seeded generator; used only when ``reproducible``.

        Raises:
            NotEnoughResults: `count` is 0.
        """
        if count < 1:
            raise NotEnoughResults(received=count, required=1, detail="Central DP needs updates.")
        planned = max(int(num_planned), count)
        denominator = count if self.calibration == "actual" else planned
        source = rng if self.reproducible else np.random.default_rng()
        noise_std = self.update_noise_multiplier(planned) * state.clip_norm / denominator
        mean = add_gaussian_noise(total / total.dtype.type(denominator), std=noise_std, rng=source)
        clip_norm, fraction = state.clip_norm, None
        if isinstance(self.clip, AdaptiveClip):
            sigma_b = self.clip.count_std(planned, float(self.noise_multiplier))
            fraction = float((count_unclipped + source.normal(0.0, sigma_b)) / denominator)
            clip_norm = next_clip_norm(
                state.clip_norm,
                fraction_within=fraction,
                target_quantile=self.clip.target_quantile,
                learning_rate=self.clip.learning_rate,
            )
        sample_rate = min(1.0, planned / max(int(num_available), planned))
        step: Step = (float(self.noise_multiplier), sample_rate, 1)
        new_state = PrivacyState(
            clip_norm=clip_norm,
            history=merge_steps(state.history, step),
            noise_std=noise_std,
            fraction_unclipped=fraction,
        )
        return mean, new_state

    def epsilon(self, state: PrivacyState) -> float:
        """Epsilon spent (at `delta`) by the rounds in `state`, by the Opacus accountant."""
        return epsilon_spent(state.history, delta=self.delta, accountant=self.accountant)

    def metrics(self, state: PrivacyState) -> dict[str, Scalar]:
        """The round's ``privacy.*`` metrics: epsilon so far, delta, clip norm, noise std."""
        metrics: dict[str, Scalar] = {
            "privacy.epsilon": self.epsilon(state),
            "privacy.delta": float(self.delta),
            "privacy.clip_norm": state.clip_norm,
            "privacy.noise_std": state.noise_std,
        }
        if state.fraction_unclipped is not None:
            metrics["privacy.fraction_unclipped"] = state.fraction_unclipped
        return metrics


def central_dp(
    *,
    noise_multiplier: float,
    clip_norm: float,
    target_quantile: float | None = None,
    clip_learning_rate: float = 0.2,
    count_noise_std: float | None = None,
    delta: float = 1e-5,
    calibration: str = "planned",
    accountant: str = "rdp",
    reproducible: bool = False,
) -> CentralDP:
    """`CentralDP` from flat settings (the ``[strategy.privacy]`` TOML table).

    Args:
        noise_multiplier: ``z``.
        clip_norm: the fixed clip norm, or the initial one with `target_quantile`.
        target_quantile: None: fixed clipping; else adaptive clipping towards it.
        clip_learning_rate: adaptive clipping's ``eta``.
        count_noise_std: adaptive clipping's ``sigma_b`` (None: ``max(m / 20, z)``).
        delta: the reported epsilon's delta.
        calibration: ``"planned"`` or ``"actual"`` (see `CentralDP`).
        accountant: ``"rdp"`` or ``"prv"``.
        reproducible: noise from the run seed (experiments only).

    Raises:
        ConfigError: naming the setting that is out of range and how to fix it.

    Example:
        >>> central_dp(noise_multiplier=1.0, clip_norm=0.5, target_quantile=0.5).adaptive
        True
    """
    if target_quantile is None:
        adaptive_only = {"clip_learning_rate": clip_learning_rate != 0.2}
        adaptive_only["count_noise_std"] = count_noise_std is not None
        given = [name for name, set_ in adaptive_only.items() if set_]
        if given:
            raise ConfigError(
                f"{given[0]} applies to adaptive clipping only; set target_quantile (e.g. 0.5) "
                f"to adapt the clip norm, or remove {given[0]}.",
                field=given[0],
            )
        clip: FixedClip | AdaptiveClip = FixedClip(clip_norm=clip_norm)
    else:
        clip = AdaptiveClip(
            initial_norm=check_clip_norm(clip_norm),
            target_quantile=target_quantile,
            learning_rate=clip_learning_rate,
            count_noise_std=count_noise_std,
        )
    return CentralDP(
        clip=clip,
        noise_multiplier=noise_multiplier,
        delta=delta,
        calibration=calibration,
        accountant=accountant,
        reproducible=reproducible,
    )
