"""Differential privacy: clipping, Gaussian noise, accountants, central DP; DP-SGD for torch.

The building blocks are small public functions over flat vectors, so other
mechanisms (secure aggregation) compose with them:

- `clip_update(update, clip_norm)`: the update scaled to L2 norm at most ``C``;
  `l2_norm`; `next_clip_norm`: adaptive clipping's geometric step.
- `gaussian_noise_std`: ``z * C / m``; `add_gaussian_noise(vector, std=, rng=)`;
  `noised_mean(total, count=, clip_norm=, noise_multiplier=, rng=)`.
- `epsilon_spent(history, delta=)` and `noise_multiplier_for_budget`, through
  Opacus' RDP or PRV accountant.
- `CentralDP` (with `FixedClip` or `AdaptiveClip`), the strategy part for
  central DP; `CentralDP.release` turns a sum of clipped updates into the noised
  mean and the next `PrivacyState`.

Local DP (DP-SGD with Opacus on `TorchClient`) is the ``LocalDP`` client plug-in
in `fedloom.strategies`; its torch half is `fedloom.privacy.dpsgd` (imported on
demand: it needs torch and Opacus, ``pip install fedloom[privacy]``). This
package's other modules need numpy alone until an epsilon is computed.
"""

from fedloom.privacy.accounting import (
    ACCOUNTANTS,
    Step,
    check_delta,
    epsilon_spent,
    merge_steps,
    noise_multiplier_for_budget,
)
from fedloom.privacy.central import (
    CALIBRATIONS,
    AdaptiveClip,
    CentralDP,
    DPFold,
    FixedClip,
    PrivacyState,
    central_dp,
)
from fedloom.privacy.clipping import check_clip_norm, clip_update, l2_norm, next_clip_norm
from fedloom.privacy.local import ACCOUNTING_METRICS
from fedloom.privacy.noise import (
    add_gaussian_noise,
    check_noise_multiplier,
    gaussian_noise_std,
    noised_mean,
)

__all__ = [
    "ACCOUNTANTS",
    "ACCOUNTING_METRICS",
    "CALIBRATIONS",
    "AdaptiveClip",
    "CentralDP",
    "DPFold",
    "FixedClip",
    "PrivacyState",
    "Step",
    "add_gaussian_noise",
    "central_dp",
    "check_clip_norm",
    "check_delta",
    "check_noise_multiplier",
    "clip_update",
    "epsilon_spent",
    "gaussian_noise_std",
    "l2_norm",
    "merge_steps",
    "next_clip_norm",
    "noise_multiplier_for_budget",
    "noised_mean",
]
