"""A strategy is a composition: who takes part, how results combine, how the model moves.

`Strategy` holds only hyperparameters and parts; everything that changes from
round to round lives in `StrategyState`, passed in and returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from fedloom.aggregators import Aggregator, Fold, Mean, WeightedMean
from fedloom.core import (
    ClientId,
    Config,
    EvaluateIns,
    FitIns,
    Metrics,
    Scalar,
    Vector,
    Weights,
    weighted_average,
)
from fedloom.core.weights import DeferredWeights
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.privacy import ACCOUNTING_METRICS, CentralDP, DPFold, PrivacyState
from fedloom.secagg import SecAggPlus
from fedloom.strategies.optimizers import SGD, OptimizerState, ServerOptimizer
from fedloom.strategies.plugins import LocalOptimizer, Plugin
from fedloom.strategies.samplers import All, Sampler
from fedloom.strategies.schedules import Buffered, Schedule, Sync

__all__ = ["FitResult", "Strategy", "StrategyState"]


@dataclass(frozen=True, slots=True)
class FitResult:
    """A fit result the orchestrator has checked: its weights match the global model."""

    client_id: ClientId
    weights: Weights
    num_examples: int
    metrics: Metrics
    tensors: Mapping[str, Vector] = field(default_factory=dict)
    base: Weights | None = None
    """The weights the client trained from, when not the current global ones (async)."""
    staleness: int = 0
    """How many versions the global model moved while the client trained."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyState:
    """The global weights and the server optimizer's state after some round."""

    weights: Weights
    optimizer: OptimizerState = field(default_factory=dict)
    plugins: Mapping[str, Vector] = field(default_factory=dict)
    privacy: PrivacyState | None = None
    """Central DP's clip norm and accountant history (None without central DP)."""


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """Sampler + aggregator + server optimizer, with the round's minimum and client config.

    Args:
        sampler: who trains in a round.
        aggregator: how their updates (new minus global weights) combine.
        server_opt: how the combined update moves the global weights.
        evaluate_sampler: who evaluates after a round; None skips federated evaluation.
        min_fit: the fewest usable results a round needs; fewer stops the run.
        config: sent to every client with each task (e.g. ``{"local_epochs": 2}``).
        plugins: client plug-ins (FedProx, SCAFFOLD, ...) and their server halves.
        schedule: when aggregation happens: `Sync` rounds or a `Buffered` async buffer.
        privacy: central differential privacy (`fedloom.privacy.CentralDP`): each update
            is clipped, the clipped updates are averaged uniformly (example counts are
            ignored) and Gaussian noise is added; None: no central DP.
        secure_aggregation: `fedloom.secagg.SecAggPlus`: the server learns only the sum
            of the updates (needs a sum-decomposable aggregator, WeightedMean or Mean,
            and plug-ins without a server half or, like `LocalDP`, reading only
            privacy-accounting metrics, which clients then send in the clear).
    """

    sampler: Sampler = field(default_factory=All)
    aggregator: Aggregator = field(default_factory=WeightedMean)
    server_opt: ServerOptimizer = field(default_factory=SGD)
    evaluate_sampler: Sampler | None = field(default_factory=All)
    min_fit: int = 1
    config: Mapping[str, Scalar] = field(default_factory=dict)
    plugins: tuple[Plugin, ...] = ()
    schedule: Schedule = field(default_factory=Sync)
    privacy: CentralDP | None = None
    secure_aggregation: SecAggPlus | None = None

    def __post_init__(self) -> None:
        names = [plugin.name for plugin in self.plugins]
        _check_plugin_combination(self.plugins)
        _check_privacy_combination(self)
        _check_secure_aggregation(self)
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ConfigError(
                f"each client plug-in may appear once, got {duplicated} more than once. "
                "Remove the repeated plug-in from plugins=(...).",
                field="plugins",
                value=names,
            )
        if isinstance(self.min_fit, bool) or not isinstance(self.min_fit, int) or self.min_fit < 1:
            raise ConfigError(
                f"min_fit must be an int >= 1, got {self.min_fit!r}. It is the fewest results "
                "a round needs to count.",
                field="min_fit",
                value=self.min_fit,
            )
        for key, value in self.config.items():
            if not isinstance(value, bool | int | float | str):
                raise ConfigError(
                    f"config[{key!r}] is {type(value).__name__}; client config values must be "
                    "bool, int, float or str.",
                    field=f"config.{key}",
                    value=value,
                )

    def init(self, weights: Weights) -> StrategyState:
        """The state before round 1."""
        plugins: dict[str, Vector] = {}
        for plugin in self.plugins:
            plugins.update(plugin.init(weights.flat))
        return StrategyState(
            weights=weights,
            optimizer=self.server_opt.init(weights.flat),
            plugins=plugins,
            privacy=None if self.privacy is None else self.privacy.init(),
        )

    @property
    def required_tensors(self) -> tuple[str, ...]:
        """Tensors every fit result must carry for the plug-ins."""
        return tuple(name for plugin in self.plugins for name in plugin.required_tensors)

    @property
    def required_metrics(self) -> tuple[str, ...]:
        """Numeric metrics every fit result must carry for the plug-ins."""
        return tuple(name for plugin in self.plugins for name in plugin.required_metrics)

    @property
    def clear_metrics(self) -> tuple[str, ...]:
        """Metrics clients send in the clear under secure aggregation (privacy accounting).

        The required metrics of the plug-ins whose server half only reads metrics
        (`Plugin.reads_metrics_only`, e.g. `LocalDP`'s ``dpsgd.epsilon``); empty
        without secure aggregation.
        """
        if self.secure_aggregation is None:
            return ()
        return self.required_metrics

    def configure_fit(
        self,
        server_round: int,
        state: StrategyState,
        available: Sequence[ClientId],
        rng: np.random.Generator,
    ) -> dict[ClientId, FitIns]:
        """The fit task of each client sampled for `server_round`."""
        chosen = self.sampler.sample(available, rng)
        config = {**self._config(server_round), **self._plugin_config()}
        tensors: dict[str, Vector] = {}
        for plugin in self.plugins:
            tensors.update(plugin.tensors(state.plugins))
        return {
            client_id: FitIns(weights=state.weights, config=config, tensors=tensors)
            for client_id in chosen
        }

    def configure_evaluate(
        self,
        server_round: int,
        state: StrategyState,
        available: Sequence[ClientId],
        rng: np.random.Generator,
    ) -> dict[ClientId, EvaluateIns]:
        """The evaluate task of each client sampled after `server_round`."""
        if self.evaluate_sampler is None:
            return {}
        chosen = self.evaluate_sampler.sample(available, rng)
        return {
            client_id: EvaluateIns(weights=state.weights, config=self._config(server_round))
            for client_id in chosen
        }

    def aggregate_fit(
        self,
        server_round: int,
        state: StrategyState,
        results: Iterable[FitResult],
        *,
        num_available: int | None = None,
        num_sampled: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[StrategyState, dict[str, Scalar]]:
        """Fold `results` one at a time into the new state.

        `results` is consumed lazily, so a round holds one client's update at a
        time when the aggregator streams. Each update is ``new - global``
        weights; plug-ins may rescale it before it is folded.

        Args:
            server_round: the round being aggregated.
            state: the state the round started from (not modified).
            results: checked fit results, in arrival order.
            num_available: how many clients could have been sampled (SCAFFOLD's N);
                defaults to the number of results.
            num_sampled: how many results the round planned (clients sampled, or the
                async buffer's size): central DP's ``m_planned``; defaults to the
                number of results.
            rng: the round's seeded generator (central DP's noise with ``reproducible``).

        Raises:
            NotEnoughResults: fewer than ``min_fit`` (or the aggregator's minimum) arrived.
        """
        params = state.weights.flat
        privacy = state.privacy
        if self.privacy is not None and privacy is None:  # a state made without central DP
            privacy = self.privacy.init()
        fold: Fold | DPFold
        if self.privacy is not None and privacy is not None:
            fold = self.privacy.fold(privacy, params.size, params.dtype)
        else:
            fold = self.aggregator.fold(params.size, params.dtype)
        rounds = [
            plugin.start_round(
                state.plugins, dim=params.size, dtype=params.dtype, num_available=num_available or 0
            )
            for plugin in self.plugins
        ]
        client_metrics: list[tuple[int, Metrics]] = []
        # a fold that subtracts on the fly saves an O(model) temporary per result
        add_difference = getattr(fold, "add_difference", None)
        # one that takes results not computed yet sums a block of them at once (vectorized engine)
        add_deferred = getattr(fold, "add_deferred", None)
        for result in results:
            base = params if result.base is None else result.base.flat
            weight = float(result.num_examples)
            if add_difference is not None and not rounds and isinstance(self.schedule, Sync):
                if add_deferred is not None and isinstance(result.weights, DeferredWeights):
                    add_deferred(result.weights, base, weight)
                else:
                    add_difference(result.weights.flat, base, weight)
            else:
                update: Vector = result.weights.flat - base
                if isinstance(self.schedule, Buffered):
                    update *= update.dtype.type(self.schedule.staleness(result.staleness))
                for plugin_round in rounds:
                    update, weight = plugin_round.add(
                        update, weight, tensors=result.tensors, metrics=result.metrics
                    )
                fold.add(update, weight)
                del update
            client_metrics.append((result.num_examples, result.metrics))
            del result, base  # free this result before the next one arrives
        required = max(self.min_fit, self.aggregator.min_results)
        if fold.count < required:
            raise NotEnoughResults(received=fold.count, required=required)
        if isinstance(fold, DPFold):
            assert self.privacy is not None  # how the fold was made
            assert privacy is not None
            update, privacy = self.privacy.release(
                fold.total,
                count=fold.count,
                count_unclipped=fold.count_unclipped,
                state=privacy,
                num_planned=num_sampled or fold.count,
                num_available=num_available or fold.count,
                rng=rng if rng is not None else np.random.default_rng(),
            )
        else:
            update = fold.result()
        plugin_state = dict(state.plugins)
        for plugin_round in rounds:
            update, changes = plugin_round.finish(update)
            plugin_state.update(changes)
        new_params, optimizer = self.server_opt.step(params, update, state.optimizer)
        weights = Weights.from_flat(state.weights.spec, new_params)
        new_state = StrategyState(
            weights=weights, optimizer=optimizer, plugins=plugin_state, privacy=privacy
        )
        return new_state, weighted_average(client_metrics)

    def aggregate_sum(
        self,
        server_round: int,
        state: StrategyState,
        *,
        total: Vector,
        total_weight: float,
        count: int,
        count_within_clip: int = 0,
        num_available: int | None = None,
        num_sampled: int | None = None,
        rng: np.random.Generator | None = None,
        client_metrics: Sequence[Mapping[str, Scalar]] = (),
    ) -> tuple[StrategyState, dict[str, Scalar]]:
        """The new state from a sum of updates the server never saw one by one.

        Secure aggregation hands over ``total = sum_i w_i * u_i`` and ``sum_i w_i``
        (``w_i`` the example counts for WeightedMean, 1 for Mean and central DP); the
        update is their ratio, or central DP's noised mean of the clients' clipped
        updates (`count_within_clip` of them were within the clip norm). The
        plug-ins (all of them `Plugin.reads_metrics_only`) read `client_metrics`, the
        metrics each client in the sum sent in the clear (`clear_metrics`), and keep
        their server state (local DP: the largest epsilon spent).

        Raises:
            NotEnoughResults: fewer than ``min_fit`` updates are in the sum.
        """
        required = max(self.min_fit, self.aggregator.min_results)
        if count < required:
            raise NotEnoughResults(received=count, required=required)
        params = state.weights.flat
        summed = np.asarray(total, dtype=params.dtype)
        privacy = state.privacy
        if self.privacy is not None and privacy is not None:
            update, privacy = self.privacy.release(
                summed,
                count=count,
                count_unclipped=count_within_clip,
                state=privacy,
                num_planned=num_sampled or count,
                num_available=num_available or count,
                rng=rng if rng is not None else np.random.default_rng(),
            )
        else:
            if total_weight <= 0:
                raise NotEnoughResults(
                    received=0, required=required, detail="Every update in the sum has weight 0."
                )
            update = summed / params.dtype.type(total_weight)
        plugin_state = dict(state.plugins)
        for plugin in self.plugins:  # they read metrics and leave the update as it is
            plugin_round = plugin.start_round(
                state.plugins, dim=params.size, dtype=params.dtype, num_available=num_available or 0
            )
            for metrics in client_metrics:
                plugin_round.add(_NO_UPDATE, 1.0, tensors={}, metrics=metrics)
            _, changes = plugin_round.finish(update)
            plugin_state.update(changes)
        new_params, optimizer = self.server_opt.step(params, update, state.optimizer)
        weights = Weights.from_flat(state.weights.spec, new_params)
        return StrategyState(
            weights=weights, optimizer=optimizer, plugins=plugin_state, privacy=privacy
        ), {}

    @property
    def weighted_sum(self) -> bool:
        """Whether secure aggregation weights each update by its example count."""
        return self.privacy is None and not isinstance(self.aggregator, Mean)

    def privacy_metrics(self, state: StrategyState) -> dict[str, Scalar]:
        """The ``privacy.*`` metrics of the state after a round (empty without privacy).

        Central DP reports ``privacy.epsilon`` (spent so far, at ``privacy.delta``),
        the clip norm and the noise std; the local DP plug-in the largest epsilon a
        client of the round reported (``privacy.local_epsilon``).
        """
        metrics: dict[str, Scalar] = {}
        if self.privacy is not None and state.privacy is not None:
            metrics.update(self.privacy.metrics(state.privacy))
        for plugin in self.plugins:
            metrics.update(plugin.metrics(state.plugins))
        return metrics

    def get_config(self) -> dict[str, Any]:
        """The strategy's parts and hyperparameters as a JSON-able dict (for the run record)."""
        return {
            "sampler": _describe(self.sampler),
            "aggregator": _describe(self.aggregator),
            "server_opt": _describe(self.server_opt),
            "evaluate_sampler": None
            if self.evaluate_sampler is None
            else _describe(self.evaluate_sampler),
            "min_fit": self.min_fit,
            "config": dict(self.config),
            "plugins": [_describe(plugin) for plugin in self.plugins],
            "schedule": _describe(self.schedule),
            "secure_aggregation": None
            if self.secure_aggregation is None
            else _describe(self.secure_aggregation),
            "privacy": None if self.privacy is None else _describe(self.privacy),
        }

    def _plugin_config(self) -> dict[str, Scalar]:
        if not self.plugins:
            return {}
        config: dict[str, Scalar] = {"plugins": ",".join(p.name for p in self.plugins)}
        for plugin in self.plugins:
            config.update(plugin.client_config())
        return config

    def _config(self, server_round: int) -> Config:
        return {**self.config, "server_round": server_round}


_NO_UPDATE: Vector = np.zeros(0)
"""What metrics-only plug-ins get for an update they never see (under secure aggregation)."""


def _describe(part: object) -> dict[str, Any]:
    """A part as ``{"name": class name, field: value, ...}``, nested parts described too."""
    values = {f.name: getattr(part, f.name) for f in fields(part)} if is_dataclass(part) else {}
    return {
        "name": type(part).__name__,
        **{
            name: _describe(value) if is_dataclass(value) else value
            for name, value in values.items()
        },
    }


def _check_plugin_combination(plugins: tuple[Plugin, ...]) -> None:
    """Refuse plug-ins whose math does not hold together, before any round runs."""
    kinds = {p.kind for p in plugins if isinstance(p, LocalOptimizer)}
    names = {p.name for p in plugins}
    if "scaffold" in names and kinds - {"sgd"}:
        raise ConfigError(
            f"SCAFFOLD (option II) needs plain SGD on the clients, but the strategy's local "
            f"optimizer is {sorted(kinds)}. Use LocalOptimizer(kind='sgd') or drop it.",
            field="plugins",
        )
    if "fednova" in names and "adam" in kinds:
        raise ConfigError(
            "FedNova's normalization is defined for SGD and momentum SGD, not adam. Use "
            "LocalOptimizer(kind='sgd') or kind='momentum'.",
            field="plugins",
        )


_DP_AGGREGATORS = (Mean, WeightedMean)
_DP_UNSAFE_PLUGINS = {
    "scaffold": "sends each client's control-variate change, unnoised",
    "elastic": "sends each client's gradient sensitivities, unnoised",
    "fednova": "rescales updates by client-reported step counts, unnoised",
}


def _check_privacy_combination(strategy: Strategy) -> None:
    """Refuse central DP with parts that would void its guarantee or its noise calibration."""
    if strategy.privacy is None:
        return
    if not isinstance(strategy.privacy, CentralDP):
        raise ConfigError(
            f"privacy must be a fedloom.privacy.CentralDP, got {type(strategy.privacy).__name__}.",
            field="privacy",
        )
    if not isinstance(strategy.aggregator, _DP_AGGREGATORS):
        raise ConfigError(
            f"central DP averages the clipped updates and calibrates its noise to that mean, so "
            f"it cannot use the {type(strategy.aggregator).__name__} aggregator. Use the "
            "weighted_mean or mean aggregator (central DP ignores the weights; it clips on its "
            "own), or drop [strategy.privacy].",
            field="aggregator",
            value=type(strategy.aggregator).__name__,
        )
    for plugin in strategy.plugins:
        reason = _DP_UNSAFE_PLUGINS.get(plugin.name)
        if reason is not None:
            raise ConfigError(
                f"the {plugin.name} plug-in {reason}, outside central DP's guarantee. Remove it "
                "from the strategy, or drop central DP.",
                field="plugins",
                value=plugin.name,
            )


_NEEDS_INDIVIDUAL_UPDATES = {
    "Median": "takes the coordinate-wise median of the individual updates",
    "TrimmedMean": "sorts each coordinate of the individual updates",
    "Krum": "compares the individual updates by their pairwise distances",
    "MultiKrum": "compares the individual updates by their pairwise distances",
    "Bulyan": "compares and sorts the individual updates",
    "ClippedMean": "clips each update on the server (with secure aggregation, clip on the "
    "clients: use central DP, privacy=CentralDP(...))",
}


def _check_secure_aggregation(strategy: Strategy) -> None:
    """Refuse parts that need what secure aggregation hides: the individual updates."""
    secure = strategy.secure_aggregation
    if secure is None:
        return
    if not isinstance(secure, SecAggPlus):
        raise ConfigError(
            f"secure_aggregation must be a fedloom.secagg.SecAggPlus, got {type(secure).__name__}.",
            field="secure_aggregation",
        )
    aggregator = type(strategy.aggregator)
    if aggregator not in (WeightedMean, Mean):
        why = _NEEDS_INDIVIDUAL_UPDATES.get(
            aggregator.__name__, "is not known to be sum-decomposable"
        )
        raise ConfigError(
            f"secure aggregation shows the server only the sum of the updates, but the "
            f"{aggregator.__name__} aggregator {why}. Use the weighted_mean or mean "
            "aggregator, or drop secure_aggregation.",
            field="aggregator",
            value=aggregator.__name__,
        )
    if not isinstance(strategy.schedule, Sync):
        raise ConfigError(
            "secure aggregation runs in synchronous rounds (every stage waits for the "
            f"round's clients), not with the {type(strategy.schedule).__name__} schedule. Use "
            "Sync() or drop secure_aggregation.",
            field="schedule",
        )
    for plugin in strategy.plugins:
        has_server_half = (
            type(plugin).start_round is not Plugin.start_round
            or plugin.required_tensors
            or plugin.required_metrics
        )
        if has_server_half and not plugin.reads_metrics_only:
            raise ConfigError(
                f"the {plugin.name} plug-in adjusts each client's update on the server, which "
                "secure aggregation hides. Remove it, or drop secure_aggregation.",
                field="plugins",
                value=plugin.name,
            )
        hidden = sorted(set(plugin.required_metrics) - ACCOUNTING_METRICS)
        if plugin.required_tensors or hidden:
            what = f"tensors {list(plugin.required_tensors)}" if plugin.required_tensors else ""
            what = what or f"metrics {hidden}"
            raise ConfigError(
                f"the {plugin.name} plug-in needs each client's {what}, which secure "
                "aggregation does not send (only the privacy-accounting metrics "
                f"{sorted(ACCOUNTING_METRICS)} travel in the clear). Remove it, or drop "
                "secure_aggregation.",
                field="plugins",
                value=plugin.name,
            )
