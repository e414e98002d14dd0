"""TOML configs for ``fedloom simulate``: parsed into frozen dataclasses, checked, then built.

`load_config` reads a file, checks every key, type and name, and tries to build
what the file describes (strategy, partitioner, stop rules, entry points), so a
bad config fails before any round starts. `SimulationConfig.build` then returns
the objects a run needs (`Federation`). Every problem is a `ConfigError` whose
message starts with the TOML key path and the file, e.g. ``[run].rounds in
fedloom.toml: ...``. Unknown keys are errors. The format::

    [run]
    rounds = 20            # required, integer >= 1
    seed = 0               # optional integer (default 0)
    dir = "runs"           # optional: parent folder of run folders, relative to the CWD
    name = "quickstart"    # optional: run folder name (default "<config stem>-<UTC time>")

    [clients]
    app = "task:client_fn"                    # required: client_fn(context) -> Client
    num_clients = 10                          # required, integer >= 1
    evaluate = "task:evaluate"                # optional: fn(weights, server_round) -> metrics
    initial_weights = "task:initial_weights"  # optional: fn() -> Weights or mapping

    [data]                          # optional
    partitioner = "dirichlet"      # a name in fedloom.data.PARTITIONERS
    alpha = 0.5                    # the other keys are the partitioner's parameters

    [strategy]
    name = "fedavg"                # a name in fedloom.strategies.STRATEGIES
    fraction_fit = 1.0             # the other keys are the preset's parameters
    [strategy.config]              # optional: sent to every client each round
    local_epochs = 2

    [stop]                                    # optional
    target_metric = "central.accuracy"        # with target_value: StopAtMetric
    target_value = 0.99
    patience = 5                              # with patience_metric: EarlyStopping
    patience_metric = "central.accuracy"
    keep_best = "central.accuracy"            # KeepBest (best.safetensors in the run folder)
    mode = "max"                              # "max" or "min", for all three rules

``module:function`` strings are imported with the config file's folder first on
``sys.path``; nothing in the file is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedloom._entrypoints import resolve_entry_point
from fedloom._tomlcheck import (
    Table,
    check_params,
    config_error,
    construct,
    describe,
    lookup,
)
from fedloom.aggregators import AGGREGATORS, Aggregator
from fedloom.core import Partitioner, Weights, WeightsLike
from fedloom.data import PARTITIONERS
from fedloom.errors import ConfigError, did_you_mean
from fedloom.server import Callback, EarlyStopping, EvaluateFn, KeepBest, StopAtMetric
from fedloom.strategies import STRATEGIES, Strategy
from fedloom.strategies.optimizers import SERVER_OPTIMIZERS, ServerOptimizer
from fedloom.transport.inprocess import ClientFn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ClientsConfig",
    "DataConfig",
    "Federation",
    "RunConfig",
    "SimulationConfig",
    "StopConfig",
    "StrategyConfig",
    "load_config",
]

Mode = Literal["max", "min"]
_SECTIONS = ("run", "clients", "data", "strategy", "stop")
_RUN_KEYS = ("rounds", "seed", "dir", "name")
_CLIENTS_KEYS = ("app", "num_clients", "evaluate", "initial_weights")
_STOP_KEYS = ("target_metric", "target_value", "patience", "patience_metric", "keep_best", "mode")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """``[run]``: how long, which seed, and where the run folder goes."""

    rounds: int
    seed: int = 0
    dir: str = "runs"
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientsConfig:
    """``[clients]``: the client factory, how many clients, optional server-side functions."""

    app: str
    num_clients: int
    evaluate: str | None = None
    initial_weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``[data]``: a partitioner name from `PARTITIONERS` and its parameters."""

    partitioner: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    """``[strategy]``: a preset name from `STRATEGIES`, its parameters, and the client config."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    parts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``[strategy.aggregator]`` / ``[strategy.server_opt]`` tables replacing the preset's part."""


@dataclass(frozen=True, kw_only=True)
class StopConfig:
    """``[stop]``: optional stop rules and keep-best, all with the same `mode`."""

    target_metric: str | None = None
    target_value: float | None = None
    patience: int | None = None
    patience_metric: str | None = None
    keep_best: str | None = None
    mode: Mode = "max"


@dataclass(frozen=True, kw_only=True)
class Federation:
    """The objects a run needs, built from a `SimulationConfig`; callbacks are fresh."""

    client_fn: ClientFn
    num_clients: int
    rounds: int
    seed: int
    strategy: Strategy
    partitioner: Partitioner | None
    evaluate_fn: EvaluateFn | None
    initial_weights: WeightsLike | None
    callbacks: tuple[Callback, ...]
    keep_best: KeepBest | None


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """A whole simulation config file, checked; `build` turns it into objects."""

    path: Path
    run: RunConfig
    clients: ClientsConfig
    strategy: StrategyConfig
    data: DataConfig | None = None
    stop: StopConfig = field(default_factory=StopConfig)

    def build(self) -> Federation:
        """Import the entry points and build the strategy, partitioner and stop rules.

        Raises:
            ConfigError: naming the TOML key and file of the first problem.
        """
        client_fn, evaluate_fn, initial_fn = _entry_points(self.clients, self.path)
        callbacks = _build_stop(self.stop, self.path)
        keep_best = next((cb for cb in callbacks if isinstance(cb, KeepBest)), None)
        return Federation(
            client_fn=client_fn,
            num_clients=self.clients.num_clients,
            rounds=self.run.rounds,
            seed=self.run.seed,
            strategy=_build_strategy(self.strategy, self.path),
            partitioner=None if self.data is None else _build_partitioner(self.data, self.path),
            evaluate_fn=evaluate_fn,
            initial_weights=None if initial_fn is None else _initial(initial_fn, self.path),
            callbacks=tuple(callbacks),
            keep_best=keep_best,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config in the file's shape (sections of keys), JSON-able."""
        sections: dict[str, Any] = {"run": asdict(self.run), "clients": asdict(self.clients)}
        if self.data is not None:
            sections["data"] = {"partitioner": self.data.partitioner, **self.data.params}
        sections["strategy"] = {"name": self.strategy.name, **self.strategy.params}
        if self.strategy.config:
            sections["strategy"]["config"] = dict(self.strategy.config)
        sections["stop"] = asdict(self.stop)
        return {name: _without_none(section) for name, section in sections.items()}


def load_config(path: str | Path) -> SimulationConfig:
    """Read and check the TOML config at `path` (format in this module's docstring).

    Everything is checked here, including that the strategy and partitioner accept
    their parameters and that every ``module:function`` imports, so nothing starts
    from a bad file.

    Raises:
        ConfigError: naming the TOML key path and the file, what was wrong and how to fix it.

    Example:
        >>> load_config("missing.toml")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fedloom.errors.ConfigError: missing.toml: no such config file. ...
    """
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: no such config file. Check the path (relative to {Path.cwd()}).",
            value=str(file),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{file}: not valid TOML: {exc}. Fix the syntax at that line and column."
        ) from exc
    tables = _sections(data, file)
    run = Table(tables["run"], "run", file, keys=_RUN_KEYS, required=True)
    clients = Table(tables["clients"], "clients", file, keys=_CLIENTS_KEYS, required=True)
    stop = Table(tables["stop"], "stop", file, keys=_STOP_KEYS)
    config = SimulationConfig(
        path=file,
        run=RunConfig(
            rounds=run.get("rounds", "int", required=True, minimum=1, example="20"),
            seed=run.get("seed", "int", default=0),
            dir=run.get("dir", "str", default="runs"),
            name=run.get("name", "str"),
        ),
        clients=ClientsConfig(
            app=clients.get("app", "str", required=True, example='"task:client_fn"'),
            num_clients=clients.get("num_clients", "int", required=True, minimum=1, example="10"),
            evaluate=clients.get("evaluate", "str"),
            initial_weights=clients.get("initial_weights", "str"),
        ),
        strategy=_strategy_config(tables["strategy"], file),
        data=_data_config(tables["data"], file),
        stop=StopConfig(
            target_metric=stop.get("target_metric", "str"),
            target_value=stop.get("target_value", "float"),
            patience=stop.get("patience", "int", minimum=1),
            patience_metric=stop.get("patience_metric", "str"),
            keep_best=stop.get("keep_best", "str"),
            mode=stop.get("mode", "str", default="max"),
        ),
    )
    _entry_points(config.clients, file)
    _build_strategy(config.strategy, file)
    if config.data is not None:
        _build_partitioner(config.data, file)
    _build_stop(config.stop, file)
    return config


def _sections(data: Mapping[str, Any], file: Path) -> dict[str, Mapping[str, Any] | None]:
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"{file}: unknown top-level key or section '{name}'; the sections are "
                f"{', '.join(f'[{s}]' for s in _SECTIONS)}.{did_you_mean(name, _SECTIONS)} "
                "Put every key under its section.",
                field=name,
            )
        if not isinstance(value, dict):
            raise config_error(
                f"[{name}]",
                file,
                f"expected a table ([{name}] on its own line), got {describe(value)}.",
                value,
            )
    return {name: data.get(name) for name in _SECTIONS}


def _strategy_config(data: Mapping[str, Any] | None, file: Path) -> StrategyConfig:
    table = Table(data, "strategy", file, required=True)
    name = table.get("name", "str", required=True, example='"fedavg"')
    config = table.data.get("config", {})
    if not isinstance(config, dict):
        raise config_error(
            "[strategy].config",
            file,
            f"expected a table, got {describe(config)}. "
            "Write a [strategy.config] section with one key per setting.",
            config,
        )
    for key, value in config.items():
        if not isinstance(value, bool | int | float | str):
            raise config_error(
                f"[strategy.config].{key}",
                file,
                f"expected a string, number or boolean, got {describe(value)}. "
                "Clients get flat settings.",
                value,
            )
    parts: dict[str, Mapping[str, Any]] = {}
    for part in _PARTS:
        value = table.data.get(part)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise config_error(
                f"[strategy].{part}",
                file,
                f"expected a table, got {describe(value)}. Write a [strategy.{part}] section "
                'with name = "..." and the part\'s parameters.',
                value,
            )
        parts[part] = value
    skip = ("name", "config", *_PARTS)
    params = {k: v for k, v in table.data.items() if k not in skip}
    return StrategyConfig(name=name, params=params, config=config, parts=parts)


def _data_config(data: Mapping[str, Any] | None, file: Path) -> DataConfig | None:
    if data is None:
        return None
    name = Table(data, "data", file).get("partitioner", "str", required=True, example='"iid"')
    params = {k: v for k, v in data.items() if k != "partitioner"}
    return DataConfig(partitioner=name, params=params)


def _build_strategy(config: StrategyConfig, file: Path) -> Strategy:
    preset = lookup(config.name, STRATEGIES, "strategy", "[strategy].name", file)
    params = check_params(preset, config.params, "[strategy]", file, skip=("config",))
    extra: dict[str, Any] = {}
    if config.config:
        if "config" not in inspect.signature(preset).parameters:
            raise config_error(
                "[strategy.config]",
                file,
                f"strategy '{config.name}' takes no client "
                "config. Remove the [strategy.config] table.",
            )
        extra["config"] = dict(config.config)
    strategy: Strategy = construct(preset, params, "[strategy]", file, **extra)
    replacements = {part: _build_part(part, table, file) for part, table in config.parts.items()}
    return dataclasses.replace(strategy, **replacements) if replacements else strategy


_PARTS = ("aggregator", "server_opt")


def _build_part(part: str, data: Mapping[str, Any], file: Path) -> Any:
    """An aggregator or server optimizer from ``[strategy.<part>]``: a built-in name, or
    ``"module:Class"`` for a user's subclass of the part's base class."""
    section = f"[strategy.{part}]"
    registry: Mapping[str, type] = AGGREGATORS if part == "aggregator" else SERVER_OPTIMIZERS
    base: type = Aggregator if part == "aggregator" else ServerOptimizer
    name = Table(data, f"strategy.{part}", file).get(
        "name", "str", required=True, example='"median"'
    )
    if ":" in name:
        cls = resolve_entry_point(name, key=f"{section}.name", config_file=file, num_args=0)
    else:
        cls = lookup(name, registry, part.replace("_", " "), f"{section}.name", file)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise config_error(
            f"{section}.name",
            file,
            f"'{name}' is not a subclass of {base.__module__}.{base.__name__}. Subclass it "
            f"and implement {'aggregate' if part == 'aggregator' else 'step'}.",
            name,
        )
    params = check_params(cls, {k: v for k, v in data.items() if k != "name"}, section, file)
    return construct(cls, params, section, file)


def _build_partitioner(config: DataConfig, file: Path) -> Partitioner:
    cls = lookup(config.partitioner, PARTITIONERS, "partitioner", "[data].partitioner", file)
    params = check_params(cls, config.params, "[data]", file)
    partitioner: Partitioner = construct(cls, params, "[data]", file)
    return partitioner


def _build_stop(config: StopConfig, file: Path) -> list[Callback]:
    if config.mode not in ("max", "min"):
        raise config_error(
            "[stop].mode",
            file,
            f'expected "max" or "min", got {config.mode!r}. '
            'Use "max" for accuracy-like metrics and "min" for losses.',
            config.mode,
        )
    pairs = (("target_metric", "target_value"), ("patience_metric", "patience"))
    for first, second in pairs:
        if (getattr(config, first) is None) != (getattr(config, second) is None):
            missing, given = (first, second) if getattr(config, first) is None else (second, first)
            raise config_error(
                f"[stop].{missing}",
                file,
                f"[stop].{given} is set, so {missing} is "
                f"needed too. Add {missing} = ... or remove {given}.",
            )
    callbacks: list[Callback] = []
    if config.target_metric is not None and config.target_value is not None:
        callbacks.append(
            StopAtMetric(metric=config.target_metric, target=config.target_value, mode=config.mode)
        )
    if config.patience_metric is not None and config.patience is not None:
        callbacks.append(
            EarlyStopping(metric=config.patience_metric, patience=config.patience, mode=config.mode)
        )
    if config.keep_best is not None:
        callbacks.append(KeepBest(metric=config.keep_best, mode=config.mode))
    return callbacks


def _entry_points(
    clients: ClientsConfig, file: Path
) -> tuple[ClientFn, EvaluateFn | None, Callable[[], Any] | None]:
    client_fn = resolve_entry_point(clients.app, key="[clients].app", config_file=file, num_args=1)
    evaluate_fn = (
        None
        if clients.evaluate is None
        else resolve_entry_point(
            clients.evaluate, key="[clients].evaluate", config_file=file, num_args=2
        )
    )
    initial_fn = (
        None
        if clients.initial_weights is None
        else resolve_entry_point(
            clients.initial_weights, key="[clients].initial_weights", config_file=file, num_args=0
        )
    )
    return client_fn, evaluate_fn, initial_fn


def _initial(function: Callable[[], Any], file: Path) -> WeightsLike:
    key = "[clients].initial_weights"
    try:
        weights = function()
    except Exception as exc:  # user code; report where it came from
        raise config_error(key, file, f"calling it raised {type(exc).__name__}: {exc}.") from exc
    if not isinstance(weights, Weights | Mapping):
        raise config_error(
            key,
            file,
            f"it returned {type(weights).__name__}; expected Weights or a "
            "mapping of tensor name -> array.",
        )
    return weights


def _without_none(section: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in section.items() if value is not None}
