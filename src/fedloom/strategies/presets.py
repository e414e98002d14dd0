"""Named algorithms as one-line compositions, reachable from TOML by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedloom.aggregators import WeightedMean
from fedloom.core import Scalar
from fedloom.errors import ConfigError
from fedloom.strategies.optimizers import SGD
from fedloom.strategies.samplers import All, Fraction, Sampler
from fedloom.strategies.strategy import Strategy

__all__ = ["STRATEGIES", "fedavg"]


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


def fedavg(
    *,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    fraction_evaluate: float = 1.0,
    min_fit: int = 1,
    server_lr: float = 1.0,
    config: Mapping[str, Scalar] | None = None,
) -> Strategy:
    """FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629).

    Each round a `fraction_fit` of clients trains from the global weights, and
    the global weights move to the example-weighted mean of their results:
    ``x <- x + server_lr * sum_i n_i (x_i - x) / sum_i n_i``.

    Args:
        fraction_fit: share of available clients that train each round.
        min_fit_clients: at least this many are sampled.
        fraction_evaluate: share that evaluates after each round (0 skips it).
        min_fit: the fewest results a round needs.
        server_lr: the server learning rate (1.0 is the paper's FedAvg).
        config: sent to every client with each task.

    Example:
        >>> fedavg(fraction_fit=0.5).sampler
        Fraction(fraction=0.5, min_clients=1)
    """
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
        aggregator=WeightedMean(),
        server_opt=SGD(lr=server_lr),
        evaluate_sampler=None if fraction_evaluate == 0 else _sampler(fraction_evaluate, 1),
        min_fit=min_fit,
        config=dict(config or {}),
    )


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": fedavg,
}
