"""Named algorithms as one-line compositions, reachable from TOML by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedloom.aggregators import (
    Aggregator,
    Bulyan,
    Krum,
    Mean,
    Median,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)
from fedloom.core import Scalar
from fedloom.errors import ConfigError, did_you_mean
from fedloom.strategies.optimizers import SGD, Adagrad, Adam, Momentum, ServerOptimizer, Yogi
from fedloom.strategies.plugins import FedNova, FedProx, Plugin, Scaffold
from fedloom.strategies.samplers import All, Fraction, Sampler
from fedloom.strategies.schedules import (
    Buffered,
    Constant,
    Hinge,
    Polynomial,
    Schedule,
    Staleness,
    Sync,
)
from fedloom.strategies.strategy import Strategy

__all__ = [
    "STRATEGIES",
    "bulyan",
    "fedadagrad",
    "fedadam",
    "fedasync",
    "fedavg",
    "fedavgm",
    "fedbuff",
    "fednova",
    "fedprox",
    "fedyogi",
    "krum",
    "median",
    "multikrum",
    "scaffold",
    "trimmed_mean",
]


def _sampler(fraction: float, min_clients: int) -> Sampler:
    return (
        All()
        if fraction == 1.0 and min_clients <= 1
        else Fraction(fraction=fraction, min_clients=min_clients)
    )


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> None:
    low = "[0" if allow_zero else "(0"
    in_range = (0 <= value <= 1) if allow_zero else (0 < value <= 1)
    if isinstance(value, bool) or not isinstance(value, int | float) or not in_range:
        raise ConfigError(
            f"{name} must be in {low}, 1], got {value!r}. Pass a share of the available clients "
            f"(e.g. 0.1){', or 0 to skip it' if allow_zero else ''}.",
            field=name,
            value=value,
        )


def _compose(
    *,
    aggregator: Aggregator,
    server_opt: ServerOptimizer,
    fraction_fit: float,
    min_fit_clients: int,
    fraction_evaluate: float,
    min_fit: int,
    config: Mapping[str, Scalar] | None,
    plugins: tuple[Plugin, ...] = (),
    schedule: Schedule | None = None,
) -> Strategy:
    """The strategy of a preset: its parts plus the shared participation settings."""
    _check_fraction(fraction_fit, "fraction_fit", allow_zero=False)
    _check_fraction(fraction_evaluate, "fraction_evaluate", allow_zero=True)
    if (
        isinstance(min_fit_clients, bool)
        or not isinstance(min_fit_clients, int)
        or min_fit_clients < 1
    ):
        raise ConfigError(
            f"min_fit_clients must be an int >= 1, got {min_fit_clients!r}.",
            field="min_fit_clients",
            value=min_fit_clients,
        )
    return Strategy(
        sampler=_sampler(fraction_fit, min_fit_clients),
        aggregator=aggregator,
        server_opt=server_opt,
        evaluate_sampler=None if fraction_evaluate == 0 else _sampler(fraction_evaluate, 1),
        min_fit=min_fit,
        config=dict(config or {}),
        plugins=plugins,
        schedule=schedule if schedule is not None else Sync(),
    )


def fedavg(
    *,
    server_lr: float = 1.0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629).

    Each round a `fraction_fit` of clients trains from the global weights, and
    the global weights move to the example-weighted mean of their results:
    ``x <- x + server_lr * sum_i n_i (x_i - x) / sum_i n_i``.

    Args:
        server_lr: the server learning rate (1.0 is the paper's FedAvg).
        fraction_fit: share of available clients that train each round.
        min_fit_clients: at least this many are sampled.
        fraction_evaluate: share that evaluates after each round (0 skips it).
        min_fit: the fewest results a round needs.
        config: sent to every client with each task.

    Example:
        >>> fedavg(fraction_fit=0.5).sampler
        Fraction(fraction=0.5, min_clients=1)
    """
    return _compose(aggregator=WeightedMean(), server_opt=SGD(lr=server_lr), **_common(locals()))


def fedavgm(
    *,
    server_lr: float = 1.0,
    momentum: float = 0.9,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedAvgM: FedAvg with server momentum (Hsu et al. 2019, https://arxiv.org/abs/1909.06335).
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    server_opt = Momentum(lr=server_lr, momentum=momentum)
    return _compose(aggregator=WeightedMean(), server_opt=server_opt, **_common(locals()))


def fedadam(
    *,
    server_lr: float = 0.01,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedAdam (Reddi et al. 2021, https://arxiv.org/abs/2003.00295): Adam on the server.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    server_opt = Adam(lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
    return _compose(aggregator=WeightedMean(), server_opt=server_opt, **_common(locals()))


def fedyogi(
    *,
    server_lr: float = 0.01,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedYogi (Reddi et al. 2021, https://arxiv.org/abs/2003.00295): Yogi on the server.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    server_opt = Yogi(lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
    return _compose(aggregator=WeightedMean(), server_opt=server_opt, **_common(locals()))


def fedadagrad(
    *,
    server_lr: float = 0.01,
    beta1: float = 0.9,
    tau: float = 1e-3,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedAdagrad (Reddi et al. 2021, https://arxiv.org/abs/2003.00295): Adagrad on the server.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    server_opt = Adagrad(lr=server_lr, beta1=beta1, tau=tau)
    return _compose(aggregator=WeightedMean(), server_opt=server_opt, **_common(locals()))


def fedprox(
    *,
    mu: float = 0.01,
    server_lr: float = 1.0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127): FedAvg + proximal term `mu`.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(
        aggregator=WeightedMean(),
        server_opt=SGD(lr=server_lr),
        plugins=(FedProx(mu=mu),),
        **_common(locals()),
    )


def scaffold(
    *,
    server_lr: float = 1.0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """SCAFFOLD (Karimireddy et al. 2020, https://arxiv.org/abs/1910.06378), option II.

    Clients must train with plain SGD; see `fedloom.strategies.plugins.Scaffold`.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(
        aggregator=WeightedMean(),
        server_opt=SGD(lr=server_lr),
        plugins=(Scaffold(),),
        **_common(locals()),
    )


def fednova(
    *,
    server_lr: float = 1.0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedNova (Wang et al. 2020, https://arxiv.org/abs/2007.07481): normalized averaging.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(
        aggregator=WeightedMean(),
        server_opt=SGD(lr=server_lr),
        plugins=(FedNova(),),
        **_common(locals()),
    )


def krum(
    *,
    f: int = 1,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """Krum (Blanchard et al. 2017) against up to `f` Byzantine clients (needs n > 2f + 2).
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(aggregator=Krum(f=f), server_opt=SGD(), **_common(locals()))


def multikrum(
    *,
    f: int = 1,
    m: int = 0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """Multi-Krum (Blanchard et al. 2017): the plain mean of the `m` best-scored updates.

    ``m = 0`` means n - f.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    aggregator = MultiKrum(f=f, m=m or None)
    return _compose(aggregator=aggregator, server_opt=SGD(), **_common(locals()))


def median(
    *,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """Coordinate-wise median (Yin et al. 2018, https://arxiv.org/abs/1803.01498).
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(aggregator=Median(), server_opt=SGD(), **_common(locals()))


def trimmed_mean(
    *,
    beta: float = 0.1,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the `beta` share at each end.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(aggregator=TrimmedMean(beta=beta), server_opt=SGD(), **_common(locals()))


def bulyan(
    *,
    f: int = 1,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """Bulyan (El Mhamdi et al. 2018) against up to `f` Byzantine clients (needs n >= 4f + 3).
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    return _compose(aggregator=Bulyan(f=f), server_opt=SGD(), **_common(locals()))


def fedbuff(
    *,
    buffer_size: int = 3,
    concurrency: int = 10,
    server_lr: float = 1.0,
    staleness_exponent: float = 0.5,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 0.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedBuff (Nguyen et al. 2022, https://arxiv.org/abs/2106.06639).

    `concurrency` clients train at once; every `buffer_size` arrivals the
    server applies ``server_lr`` times the plain mean of their updates, each
    scaled by ``(1 + staleness)^-staleness_exponent``.
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    schedule = Buffered(
        buffer_size=buffer_size,
        concurrency=concurrency,
        staleness=Polynomial(a=staleness_exponent),
    )
    return _compose(
        aggregator=Mean(), server_opt=SGD(lr=server_lr), schedule=schedule, **_common(locals())
    )


def fedasync(
    *,
    mixing: float = 0.6,
    concurrency: int = 10,
    staleness: str = "polynomial",
    staleness_a: float = 0.5,
    staleness_b: int = 4,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 0.0,
    min_fit: int = 1,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedAsync (Xie et al. 2019, https://arxiv.org/abs/1903.03934).

    Each arriving model is mixed in as it comes:
    ``x <- (1 - a_t) x + a_t x_new`` with ``a_t = mixing * s(staleness)`` and
    `staleness` one of "constant", "polynomial" ((1+t)^-a) or "hinge".
    Every preset also takes the participation parameters of `fedavg`:
    ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``, ``min_fit``, ``config``.
    """
    functions: dict[str, Staleness] = {
        "constant": Constant(),
        "polynomial": Polynomial(a=staleness_a),
        "hinge": Hinge(a=staleness_a, b=staleness_b),
    }
    if staleness not in functions:
        raise ConfigError(
            f"unknown staleness function {staleness!r}; choose one of: "
            f"{', '.join(functions)}.{did_you_mean(staleness, functions)}",
            field="staleness",
            value=staleness,
        )
    if not 0 < mixing <= 1:
        raise ConfigError(f"mixing must be in (0, 1], got {mixing}.", field="mixing", value=mixing)
    schedule = Buffered(
        buffer_size=1,
        concurrency=concurrency,
        staleness=functions[staleness],
        relative_to="current",
    )
    return _compose(
        aggregator=Mean(), server_opt=SGD(lr=mixing), schedule=schedule, **_common(locals())
    )


_COMMON = ("fraction_fit", "min_fit_clients", "fraction_evaluate", "min_fit", "config")


def _common(arguments: dict[str, Any]) -> dict[str, Any]:
    """The participation arguments of a preset call, passed on to `_compose`."""
    return {name: arguments[name] for name in _COMMON}


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "fedprox": fedprox,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "scaffold": scaffold,
    "fednova": fednova,
    "krum": krum,
    "multikrum": multikrum,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "bulyan": bulyan,
    "fedbuff": fedbuff,
    "fedasync": fedasync,
}
