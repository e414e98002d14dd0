"""The synthetic(alpha, beta) federated classification data of the FedProx paper.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in
Heterogeneous Networks", MLSys 2020, https://arxiv.org/abs/1812.06127, Section 5.1
("Synthetic data"), after Shamir, Srebro and Zhang, "Communication-Efficient
Distributed Optimization using an Approximate Newton-type Method", ICML 2014.
Every device labels its own Gaussian features with its own linear-softmax model;
`beta` moves the devices' feature means apart. The data is generated offline,
deterministically from `seed`, with generators from `fedloom.core.rng`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.core.rng import generator
from fedloom.errors import ConfigError

__all__ = ["SyntheticDevice", "synthetic", "synthetic_devices"]

_MAX_DEFAULT_SAMPLES = 2000
"""The cap on a default (power-law) sample count; the authors' generator has none."""

Dataset = list[tuple[NDArray[np.float32], NDArray[np.int64]]]


def _feature_variances(dimension: int) -> NDArray[np.float64]:
    """The diagonal of Sigma: ``Sigma[j, j] = j ** -1.2`` for ``j = 1 .. dimension``."""
    return np.arange(1, dimension + 1, dtype=np.float64) ** -1.2


@dataclass(frozen=True, kw_only=True, eq=False)
class SyntheticDevice:
    """One device's generative model: ``x ~ N(mean, Sigma)``, ``y = argmax(weight @ x + bias)``.

    ``Sigma`` is diagonal with ``Sigma[j, j] = j ** -1.2`` (``j = 1 .. d``) and is the
    same on every device. ``argmax(softmax(z)) = argmax(z)`` because softmax is
    increasing, so the labels are the argmax of the logits.

    Attributes:
        weight: ``W_k``, shape ``(num_classes, dimension)``.
        bias: ``b_k``, shape ``(num_classes,)``.
        mean: ``v_k``, the mean of the features, shape ``(dimension,)``.

    Example:
        >>> device = SyntheticDevice(weight=np.eye(2), bias=np.zeros(2), mean=np.zeros(2))
        >>> device.label(np.array([[3.0, 1.0], [0.0, 2.0]])).tolist()
        [0, 1]
    """

    weight: NDArray[np.float64]
    bias: NDArray[np.float64]
    mean: NDArray[np.float64]

    def __post_init__(self) -> None:
        weight, bias, mean = (np.asarray(a) for a in (self.weight, self.bias, self.mean))
        # Lists are accepted and stored as float64 arrays.
        if weight.ndim != 2 or bias.shape != weight.shape[:1] or mean.shape != weight.shape[1:]:
            raise ConfigError(
                f"SyntheticDevice needs weight (C, d), bias (C,) and mean (d,), got shapes "
                f"{weight.shape}, {bias.shape} and {mean.shape}. Pass one row of weight and "
                "one bias per class, and one mean per feature.",
                field="weight",
                value=(weight.shape, bias.shape, mean.shape),
            )
        object.__setattr__(self, "weight", weight.astype(np.float64, copy=False))
        object.__setattr__(self, "bias", bias.astype(np.float64, copy=False))
        object.__setattr__(self, "mean", mean.astype(np.float64, copy=False))

    def label(self, features: ArrayLike) -> NDArray[np.int64]:
        """``argmax(softmax(W x + b))`` of each row `x` of `features` (shape ``(n, d)``)."""
        logits = np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias
        return np.asarray(np.argmax(logits, axis=1), dtype=np.int64)

    def sample(
        self, num_samples: int, *, rng: np.random.Generator
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """`num_samples` features ``x ~ N(mean, Sigma)`` (float32) and their labels (int64).

        The labels are computed from the returned float32 features, so
        ``label(x)`` reproduces them exactly.
        """
        scale = np.sqrt(_feature_variances(self.mean.size))
        noise = rng.standard_normal((num_samples, self.mean.size))
        features = (self.mean + noise * scale).astype(np.float32)
        return features, self.label(features)


def _draw_device(
    alpha: float, beta: float, dimension: int, num_classes: int, rng: np.random.Generator
) -> SyntheticDevice:
    """One device from the prior; the second argument of N(., .) is a variance."""
    shift = rng.normal(0.0, math.sqrt(alpha))  # u_k ~ N(0, alpha)
    center = rng.normal(0.0, math.sqrt(beta))  # B_k ~ N(0, beta)
    weight = rng.normal(shift, 1.0, (num_classes, dimension))  # W_k ~ N(u_k, 1)
    bias = rng.normal(shift, 1.0, num_classes)  # b_k ~ N(u_k, 1)
    mean = rng.normal(center, 1.0, dimension)  # v_k ~ N(B_k, 1)
    return SyntheticDevice(weight=weight, bias=bias, mean=mean)


def synthetic_devices(
    alpha: float,
    beta: float,
    *,
    num_clients: int = 30,
    dimension: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    iid: bool = False,
) -> list[SyntheticDevice]:
    """The generative model of each device of `synthetic` (same arguments, same seed).

    With ``iid=True`` one device is drawn and every client shares it (the same
    object appears `num_clients` times).

    Raises:
        ConfigError: as `synthetic`.
    """
    _check(alpha, beta, num_clients, dimension, num_classes)
    if iid:
        shared = _draw_device(
            alpha, beta, dimension, num_classes, generator(seed, "synthetic", "shared")
        )
        return [shared] * num_clients
    return [
        _draw_device(alpha, beta, dimension, num_classes, generator(seed, "synthetic", k))
        for k in range(num_clients)
    ]


def synthetic(
    alpha: float,
    beta: float,
    *,
    num_clients: int = 30,
    samples_per_client: Sequence[int] | None = None,
    dimension: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    iid: bool = False,
) -> Dataset:
    """The synthetic(alpha, beta) dataset: one ``(x, y)`` pair of arrays per client.

    For each device ``k`` (``N(m, s2)`` has mean ``m`` and *variance* ``s2``)::

        u_k ~ N(0, alpha)                    B_k ~ N(0, beta)
        W_k[c, j] ~ N(u_k, 1)                b_k[c] ~ N(u_k, 1)       W_k: C x d, b_k: C
        v_k[j] ~ N(B_k, 1)                   Sigma = diag(j ** -1.2), j = 1 .. d
        x ~ N(v_k, Sigma)                    y = argmax(softmax(W_k x + b_k))
        n_k = min(floor(LogNormal(4, 2)) + 50, 2000)      unless samples_per_client

    with ``d = 60`` features and ``C = 10`` classes in the paper. ``iid=True`` is
    the paper's synthetic_iid: one device's ``W, b, v`` are drawn as above and
    shared by every client, so all clients sample the same distribution.

    Where we depart from the paper and the authors' released generator
    (``data/synthetic_1_1/generate_synthetic.py`` and ``data/synthetic_iid/generate_iid.py``
    in https://github.com/litian96/FedProx):

    - `alpha` and `beta` are variances, as the paper's ``N(0, alpha)`` reads in the
      usual ``N(mu, sigma^2)`` notation; the released generator passes them to
      ``numpy.random.normal`` as standard deviations. The two agree for the
      paper's settings 0 and 1 (synthetic(0, 0), synthetic(1, 1)); for 0.5 ours
      is ``sqrt(0.5)`` times theirs in standard deviation.
    - The paper gives only "a power law" for the sample counts; we use the released
      generator's ``floor(LogNormal(4, 2)) + 50`` and cap it at 2000 so that a heavy
      tail cannot make one client enormous. Pass `samples_per_client` for other counts.
    - The released synthetic_iid script draws ``W, b ~ N(0, 1)`` and ``v = 0``; ours
      draws the shared ``W, b, v`` from the (alpha, beta) prior, so its ``v`` is
      random and synthetic(0, 0, iid=True) matches theirs except for ``v``.
    - Note that ``u_k`` adds the same ``u_k * (1 + sum_j x_j)`` to every class's
      logit, so it never changes the argmax: the data's distribution does not
      depend on `alpha`. Devices differ in labelling through their independent
      ``W_k - u_k`` and ``b_k - u_k`` (at any `alpha`), and in features through `beta`.

    Args:
        alpha: variance of the devices' model shift ``u_k``, >= 0.
        beta: variance of the devices' feature centre ``B_k``, >= 0.
        num_clients: how many devices, >= 1 (the paper has 30).
        samples_per_client: each device's sample count (>= 1); None draws the
            power law above.
        dimension: number of features ``d``, >= 1.
        num_classes: number of classes ``C``, >= 2.
        seed: the same seed gives the same dataset; each device's model and
            samples come from generators derived from it and the device's index.
        iid: share one device's model and feature distribution across clients.

    Returns:
        One ``(x, y)`` per client: float32 features of shape ``(n_k, d)`` and int64
        labels in ``[0, C)`` of shape ``(n_k,)``.

    Raises:
        ConfigError: `alpha` or `beta` is negative or not finite, a count is out of
            range, or `samples_per_client` does not give one count >= 1 per client.

    Example:
        >>> data = synthetic(1, 1, num_clients=3, samples_per_client=[5, 6, 7], seed=0)
        >>> [(x.shape, y.shape) for x, y in data]
        [((5, 60), (5,)), ((6, 60), (6,)), ((7, 60), (7,))]
    """
    devices = synthetic_devices(
        alpha,
        beta,
        num_clients=num_clients,
        dimension=dimension,
        num_classes=num_classes,
        seed=seed,
        iid=iid,
    )
    if samples_per_client is None:
        draws = generator(seed, "synthetic", "sizes").lognormal(4.0, 2.0, num_clients)
        sizes = [int(n) for n in np.minimum(np.floor(draws) + 50, _MAX_DEFAULT_SAMPLES)]
    else:
        sizes = _checked_sizes(samples_per_client, num_clients)
    return [
        device.sample(size, rng=generator(seed, "synthetic", "samples", k))
        for k, (device, size) in enumerate(zip(devices, sizes, strict=True))
    ]


def _is_int(value: object, minimum: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return False
    return bool(value >= minimum)


def _check(alpha: float, beta: float, num_clients: int, dimension: int, num_classes: int) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if (
            not isinstance(value, int | float | np.integer | np.floating)
            or isinstance(value, bool)
            or not value >= 0
            or not math.isfinite(value)
        ):
            raise ConfigError(
                f"{name} must be a finite variance >= 0, got {value!r}. The paper uses 0, "
                "0.5 and 1, e.g. synthetic(1, 1); 0 gives every device the same prior mean.",
                field=name,
                value=value,
            )
    counts = (
        ("num_clients", num_clients, 1, "Pass the number of devices; the paper uses 30."),
        ("dimension", dimension, 1, "Pass the number of features; the paper uses 60."),
        ("num_classes", num_classes, 2, "Pass the number of labels; the paper uses 10."),
    )
    for name, count, minimum, hint in counts:
        if not _is_int(count, minimum):
            raise ConfigError(
                f"{name} must be an integer >= {minimum}, got {count!r}. {hint}",
                field=name,
                value=count,
            )


def _checked_sizes(samples_per_client: Sequence[int], num_clients: int) -> list[int]:
    sizes = list(samples_per_client)
    if len(sizes) != num_clients:
        raise ConfigError(
            f"samples_per_client has {len(sizes)} counts but num_clients is {num_clients}. "
            "Pass one count per client, or None for the paper's power law.",
            field="samples_per_client",
            value=samples_per_client,
        )
    for index, size in enumerate(sizes):
        if not _is_int(size, 1):
            raise ConfigError(
                f"samples_per_client[{index}] must be an integer >= 1, got {size!r}. "
                "Every client needs at least one sample.",
                field="samples_per_client",
                value=samples_per_client,
            )
    return [int(size) for size in sizes]
