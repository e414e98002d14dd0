"""TOML configs for ``fedloom simulate``, ``server`` and ``client``: parsed, checked, then built.

`load_config` reads a file, checks every key, type and name, and tries to build
what the file describes (strategy, partitioner, stop rules, entry points), so a
bad config fails before any round starts. `SimulationConfig.build` then returns
the objects a simulation needs (`Federation`); `build_server` what ``fedloom
server`` needs (`ServerFederation`) and `build_client` what ``fedloom client``
needs (`ClientApp`), from the same file. Every problem is a `ConfigError` whose
message starts with the TOML key path and the file, e.g. ``[run].rounds in
fedloom.toml: ...``. Unknown keys are errors. The format::

    [run]
    rounds = 20            # required, integer >= 1
    seed = 0               # optional integer (default 0)
    dir = "runs"           # optional: parent folder of run folders, relative to the CWD
    name = "quickstart"    # optional: run folder name (default "<config stem>-<UTC time>")

    [clients]
    app = "task:client_fn"                    # client_fn(context) -> Client
    num_clients = 10                          # integer >= 1
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

    [topology]                # optional: a star, a tree of relays, or gossip (fedloom.topology)
    kind = "tree"             # "star", "tree" or "gossip"
    roots = ["server"]
    nodes = ["server", "relay-a", "relay-b", "0", "1", "2", "3"]
    edges = [["server", "relay-a"], ["server", "relay-b"], ["relay-a", "0"], ...]

    [server]                  # optional, read by `fedloom server` (its flags override it)
    address = "0.0.0.0:8080"  # host:port to listen on (port 0: any free port)
    min_clients = 10          # clients to wait for (default: [clients].num_clients, else 1)
    max_clients = 100         # the most clients admitted at once (default: no limit)
    join_timeout_s = 300      # how long to wait for min_clients
    fit_timeout_s = 600       # each round's deadline
    heartbeat_s = 2           # how often clients beat; three missed beats drop a client

Each command reads what it uses (`Role`): ``simulate`` needs ``[clients].app`` and
``num_clients``; ``server`` needs neither and imports only ``evaluate`` and
``initial_weights``; ``client`` needs ``app`` (``num_clients`` is its default number of
partitions) and imports only it.

``module:function`` strings are imported with the config file's folder first on
``sys.path``; nothing in the file is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
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
from fedloom.topology import Topology
from fedloom.transport.inprocess import ClientFn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ROLES",
    "ClientApp",
    "ClientsConfig",
    "DataConfig",
    "Federation",
    "Role",
    "RunConfig",
    "ServerConfig",
    "ServerFederation",
    "SimulationConfig",
    "StopConfig",
    "StrategyConfig",
    "load_config",
]

Mode = Literal["max", "min"]
Role = Literal["simulate", "server", "client"]
"""The command reading a config; each requires and imports only what it uses."""
ROLES: tuple[Role, ...] = ("simulate", "server", "client")
_SECTIONS = ("run", "clients", "data", "strategy", "stop", "server", "topology")
_RUN_KEYS = ("rounds", "seed", "dir", "name")
_CLIENTS_KEYS = ("app", "num_clients", "evaluate", "initial_weights")
_STOP_KEYS = ("target_metric", "target_value", "patience", "patience_metric", "keep_best", "mode")
_SERVER_KEYS = (
    *("address", "min_clients", "max_clients"),
    *("join_timeout_s", "fit_timeout_s", "heartbeat_s"),
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """``[run]``: how long, which seed, and where the run folder goes."""

    rounds: int
    seed: int = 0
    dir: str = "runs"
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientsConfig:
    """``[clients]``: the client factory, how many clients, optional server-side functions.

    `app` and `num_clients` are None only in a config loaded for a role that does not need them.
    """

    app: str | None = None
    num_clients: int | None = None
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
class ServerConfig:
    """``[server]``: where ``fedloom server`` listens and how long it waits for clients."""

    address: str = "0.0.0.0:8080"
    min_clients: int | None = None
    """Clients to wait for before round 1; None: ``[clients].num_clients``, else 1."""
    max_clients: int | None = None
    join_timeout_s: float = 300.0
    fit_timeout_s: float = 600.0
    heartbeat_s: float = 2.0

    def __post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f"address must be HOST:PORT, got {self.address!r}. Write e.g. "
                '"0.0.0.0:8080" (all interfaces) or "127.0.0.1:0" (loopback, any free port).',
                field="address",
                value=self.address,
            )
        for key in ("join_timeout_s", "fit_timeout_s", "heartbeat_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"{key} must be a number of seconds > 0, got {value}.",
                    field=key,
                    value=value,
                )
        low, high = self.min_clients, self.max_clients
        if low is not None and high is not None and low > high:
            raise ConfigError(
                f"min_clients ({low}) is more than max_clients ({high}), so round 1 could "
                "never start. Lower min_clients or raise max_clients.",
                field="min_clients",
                value=low,
            )


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
    topology: Topology | None = None
    """``[topology]``: its leaves are the clients, in node order; None is a star."""


@dataclass(frozen=True, kw_only=True)
class ServerFederation:
    """The objects ``fedloom server`` needs, built from a config; callbacks are fresh.

    ``server.min_clients`` is resolved: ``[server].min_clients``, else
    ``[clients].num_clients`` (at most ``max_clients``), else 1.
    """

    rounds: int
    seed: int
    strategy: Strategy
    evaluate_fn: EvaluateFn | None
    initial_weights: WeightsLike | None
    callbacks: tuple[Callback, ...]
    keep_best: KeepBest | None
    server: ServerConfig


@dataclass(frozen=True, kw_only=True)
class ClientApp:
    """What ``fedloom client`` needs from a config: the client factory and the data split."""

    client_fn: ClientFn
    partitioner: Partitioner | None
    seed: int
    num_partitions: int | None
    """``[clients].num_clients``, if given: the default number of partitions."""


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """A whole config file, checked; `build`, `build_server` and `build_client` make objects."""

    path: Path
    run: RunConfig
    clients: ClientsConfig
    strategy: StrategyConfig
    data: DataConfig | None = None
    stop: StopConfig = field(default_factory=StopConfig)
    server: ServerConfig | None = None
    topology: Topology | None = None

    def build(self) -> Federation:
        """Import the entry points and build the strategy, partitioner and stop rules.

        Raises:
            ConfigError: naming the TOML key and file of the first problem.
        """
        client_fn, evaluate_fn, initial_fn = _entry_points(self.clients, self.path, "simulate")
        num_clients = _required(self.clients.num_clients, "num_clients", self.path)
        callbacks = _build_stop(self.stop, self.path)
        return Federation(
            client_fn=_required(client_fn, "app", self.path),
            num_clients=num_clients,
            rounds=self.run.rounds,
            seed=self.run.seed,
            strategy=_build_strategy(self.strategy, self.path),
            partitioner=self._partitioner(),
            evaluate_fn=evaluate_fn,
            initial_weights=None if initial_fn is None else _initial(initial_fn, self.path),
            callbacks=tuple(callbacks),
            keep_best=next((cb for cb in callbacks if isinstance(cb, KeepBest)), None),
            topology=self.topology,
        )

    def build_server(self) -> ServerFederation:
        """What ``fedloom server`` runs: strategy, stop rules, evaluation and ``[server]``.

        Raises:
            ConfigError: naming the TOML key and file of the first problem.
        """
        _, evaluate_fn, initial_fn = _entry_points(self.clients, self.path, "server")
        callbacks = _build_stop(self.stop, self.path)
        server = self.server if self.server is not None else ServerConfig()
        if server.min_clients is None:
            wanted = self.clients.num_clients or 1
            limit = server.max_clients if server.max_clients is not None else wanted
            server = dataclasses.replace(server, min_clients=min(wanted, limit))
        return ServerFederation(
            rounds=self.run.rounds,
            seed=self.run.seed,
            strategy=_build_strategy(self.strategy, self.path),
            evaluate_fn=evaluate_fn,
            initial_weights=None if initial_fn is None else _initial(initial_fn, self.path),
            callbacks=tuple(callbacks),
            keep_best=next((cb for cb in callbacks if isinstance(cb, KeepBest)), None),
            server=server,
        )

    def build_client(self) -> ClientApp:
        """What ``fedloom client`` runs: ``[clients].app``, the ``[data]`` split and the seed.

        Raises:
            ConfigError: naming the TOML key and file of the first problem.
        """
        client_fn, _, _ = _entry_points(self.clients, self.path, "client")
        return ClientApp(
            client_fn=_required(client_fn, "app", self.path),
            partitioner=self._partitioner(),
            seed=self.run.seed,
            num_partitions=self.clients.num_clients,
        )

    def _partitioner(self) -> Partitioner | None:
        return None if self.data is None else _build_partitioner(self.data, self.path)

    def to_dict(self) -> dict[str, Any]:
        """The config in the file's shape (sections of keys), JSON-able."""
        sections: dict[str, Any] = {"run": asdict(self.run), "clients": asdict(self.clients)}
        if self.data is not None:
            sections["data"] = {"partitioner": self.data.partitioner, **self.data.params}
        sections["strategy"] = {"name": self.strategy.name, **self.strategy.params}
        if self.strategy.config:
            sections["strategy"]["config"] = dict(self.strategy.config)
        sections["stop"] = asdict(self.stop)
        if self.server is not None:
            sections["server"] = asdict(self.server)
        if self.topology is not None:
            sections["topology"] = {
                "kind": self.topology.kind,
                "roots": list(self.topology.roots),
                "nodes": list(self.topology.nodes),
                "edges": [list(edge) for edge in self.topology.edges],
            }
        return {name: _without_none(section) for name, section in sections.items()}


def load_config(path: str | Path, *, role: Role = "simulate") -> SimulationConfig:
    """Read and check the TOML config at `path` (format in this module's docstring).

    Everything is checked here, including that the strategy and partitioner accept
    their parameters and that every ``module:function`` the `role` uses imports, so
    nothing starts from a bad file.

    Args:
        path: the config file.
        role: the command that will use it; it decides which ``[clients]`` keys are
            required and which entry points are imported.

    Raises:
        ConfigError: naming the TOML key path and the file, what was wrong and how to fix it.

    Example:
        >>> load_config("missing.toml")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fedloom.errors.ConfigError: missing.toml: no such config file. ...
    """
    if role not in ROLES:
        raise ConfigError(
            f"role must be one of {', '.join(ROLES)}, got {role!r}.", field="role", value=role
        )
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
    clients = Table(
        tables["clients"], "clients", file, keys=_CLIENTS_KEYS, required=role != "server"
    )
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
            app=clients.get("app", "str", required=role != "server", example='"task:client_fn"'),
            num_clients=clients.get(
                "num_clients", "int", required=role == "simulate", minimum=1, example="10"
            ),
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
        server=None if tables["server"] is None else _server_config(tables["server"], file),
        topology=_topology(tables["topology"], tables["clients"], file, role),
    )
    _entry_points(config.clients, file, role)
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


def _topology(
    data: Mapping[str, Any] | None, clients: Mapping[str, Any] | None, file: Path, role: Role
) -> Topology | None:
    """``[topology]`` checked as a graph; its leaves must be ``[clients].num_clients`` many."""
    if data is None:
        return None
    try:
        topology = Topology.from_table(data)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("topology: "):
            message = f"[topology] in {file}: {message.removeprefix('topology: ')}"
        else:
            message = f"{file}: {message}"
        raise ConfigError(message, field=exc.field, value=exc.value) from exc
    num_clients = (clients or {}).get("num_clients")
    leaves = topology.leaves
    if role == "simulate" and isinstance(num_clients, int) and num_clients != len(leaves):
        raise config_error(
            "[clients].num_clients",
            file,
            f"is {num_clients}, but [topology] has {len(leaves)} clients (its leaves: "
            f"{', '.join(leaves)}). Make num_clients = {len(leaves)}.",
            num_clients,
        )
    return topology


def _server_config(data: Mapping[str, Any], file: Path) -> ServerConfig:
    table = Table(data, "server", file, keys=_SERVER_KEYS)
    values = {
        "address": table.get("address", "str"),
        "min_clients": table.get("min_clients", "int", minimum=1),
        "max_clients": table.get("max_clients", "int", minimum=1),
        **{key: table.get(key, "float") for key in _SERVER_KEYS[3:]},
    }
    given = {key: value for key, value in values.items() if value is not None}
    server: ServerConfig = construct(ServerConfig, given, "[server]", file)
    return server


def _entry_points(
    clients: ClientsConfig, file: Path, role: Role
) -> tuple[ClientFn | None, EvaluateFn | None, Callable[[], Any] | None]:
    """The ``[clients]`` functions `role` calls (None for the others and for absent keys)."""

    def resolve(key: str, num_args: int, used: bool) -> Callable[..., Any] | None:
        spec = getattr(clients, key)
        if spec is None or not used:
            return None
        return resolve_entry_point(
            spec, key=f"[clients].{key}", config_file=file, num_args=num_args
        )

    return (
        resolve("app", 1, role != "server"),
        resolve("evaluate", 2, role != "client"),
        resolve("initial_weights", 0, role != "client"),
    )


def _required(value: Any, key: str, file: Path) -> Any:
    """`value`, or the error for a missing ``[clients]`` key (a config loaded for another role)."""
    if value is None:
        kind = "a string" if key == "app" else "an integer"
        example = '"task:client_fn"' if key == "app" else "10"
        raise config_error(
            f"[clients].{key}",
            file,
            f"required key is missing. Add {kind} under [clients], e.g. {key} = {example}.",
        )
    return value


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
