"""`fedloom.config`: TOML becomes checked config values; every bad input names key and file."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedloom.aggregators import TrimmedMean
from fedloom.config import SimulationConfig, load_config
from fedloom.data import Dirichlet
from fedloom.errors import ConfigError
from fedloom.server import EarlyStopping, KeepBest, StopAtMetric
from fedloom.simulation import Fleet
from fedloom.strategies import Fraction
from fedloom.strategies.optimizers import Momentum

MODULE = "config_toy_task"

TASK = """
from fedloom.client import FunctionClient


def client_fn(context):
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: (w, 1, {}))


def evaluate(weights, server_round):
    return {"loss": 0.0}


def initial_weights():
    return {"x": [0.5]}


NOT_CALLABLE = 3
"""

VALID = f"""
[run]
rounds = 5
seed = 7

[clients]
app = "{MODULE}:client_fn"
num_clients = 4
evaluate = "{MODULE}:evaluate"
initial_weights = "{MODULE}:initial_weights"

[data]
partitioner = "dirichlet"
alpha = 0.5

[strategy]
name = "fedavg"
fraction_fit = 0.5
min_fit_clients = 2

[strategy.config]
local_epochs = 2

[stop]
target_metric = "central.accuracy"
target_value = 0.9
patience = 3
patience_metric = "central.loss"
keep_best = "central.accuracy"
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with the toy task module; sys.path and the module cache are restored after."""
    (tmp_path / f"{MODULE}.py").write_text(TASK)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop(MODULE, None)


def write(folder: Path, text: str) -> Path:
    path = folder / "fedloom.toml"
    path.write_text(text)
    return path


def key_and_file(key: str, path: Path) -> str:
    """The start of every config error: the TOML key path, then the file."""
    return re.escape(f"{key} in {path}")


def test_load_config_parses_a_valid_file(folder: Path) -> None:
    path = write(folder, VALID)

    config = load_config(path)
    federation = config.build()

    assert isinstance(config, SimulationConfig)
    assert (config.run.rounds, config.run.seed, config.run.dir, config.run.name) == (
        5,
        7,
        "runs",
        None,
    )
    assert config.clients.num_clients == 4
    assert federation.strategy.sampler == Fraction(fraction=0.5, min_clients=2)
    assert federation.strategy.config == {"local_epochs": 2}
    assert federation.partitioner == Dirichlet(alpha=0.5)
    assert federation.initial_weights == {"x": [0.5]}
    assert federation.evaluate_fn is not None
    assert federation.evaluate_fn(federation.initial_weights, 0) == {"loss": 0.0}
    assert [type(cb) for cb in federation.callbacks] == [StopAtMetric, EarlyStopping, KeepBest]
    assert federation.keep_best is federation.callbacks[-1]


def test_load_config_minimal_file_uses_defaults(folder: Path) -> None:
    path = write(
        folder,
        f'[run]\nrounds = 1\n[clients]\napp = "{MODULE}:client_fn"\nnum_clients = 1\n'
        '[strategy]\nname = "fedavg"\n',
    )

    config = load_config(path)

    assert config.run.seed == 0
    assert config.data is None
    assert config.build().callbacks == ()


def test_simulation_config_build_makes_fresh_callbacks(folder: Path) -> None:
    """Stop rules keep state, so each build gets new ones."""
    config = load_config(write(folder, VALID))

    first, second = config.build(), config.build()

    assert first.callbacks[0] is not second.callbacks[0]


@pytest.mark.parametrize(
    ("old", "new", "key", "phrase"),
    [
        ('name = "fedavg"', 'name = "fedavgg"', "[strategy].name", "Did you mean 'fedavg'?"),
        (f'app = "{MODULE}:client_fn"\n', "", "[clients].app", "required key is missing"),
        ("rounds = 5", 'rounds = "5"', "[run].rounds", "expected an integer, got '5'"),
        ("rounds = 5", "rounds = true", "[run].rounds", "expected an integer, got True"),
        ("num_clients = 4", "num_clients = 2.5", "[clients].num_clients", "expected an integer"),
        ("rounds = 5", "rounds = 0", "[run].rounds", "must be >= 1, got 0"),
        ("seed = 7", "sead = 7", "[run].sead", "Did you mean 'seed'?"),
        ("fraction_fit = 0.5", "fraction_fit = 1.5", "[strategy].fraction_fit", "got 1.5"),
        ("fraction_fit = 0.5", 'fraction_fit = "half"', "[strategy].fraction_fit", "a number"),
        ("fraction_fit = 0.5", "fractoin_fit = 0.5", "[strategy].fractoin_fit", "fraction_fit"),
        ("alpha = 0.5", "alpah = 0.5", "[data].alpah", "Did you mean 'alpha'?"),
        ("alpha = 0.5", "alpha = -1", "[data].alpha", "alpha must be a finite number > 0"),
        ('"dirichlet"', '"dirichlet2"', "[data].partitioner", "choose one of: by_key, dirichlet"),
        ("local_epochs = 2", "local_epochs = [2]", "[strategy.config].local_epochs", "an array"),
        ("patience = 3\n", "", "[stop].patience", "patience_metric is set"),
        ("keep_best", 'mode = "up"\nkeep_best', "[stop].mode", 'expected "max" or "min"'),
    ],
)
def test_load_config_rejects_bad_input_naming_key_and_file(
    folder: Path, old: str, new: str, key: str, phrase: str
) -> None:
    assert old in VALID
    path = write(folder, VALID.replace(old, new, 1))

    with pytest.raises(ConfigError, match=key_and_file(key, path)) as caught:
        load_config(path)

    assert phrase in str(caught.value)
    assert caught.value.field == key


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        ("client_fn", "expected 'module:function'"),
        (f"{MODULE}:", "expected 'module:function'"),
        ("no_such_module_xyz:client_fn", "no module named 'no_such_module_xyz'"),
        (f"{MODULE}:client_fm", "its functions are: client_fn, evaluate, initial_weights."),
        (f"{MODULE}:client_fm", "Did you mean 'client_fn'?"),
        (f"{MODULE}:NOT_CALLABLE", "is not callable (it is int 3)"),
        (f"{MODULE}:initial_weights", "called with 1 positional argument"),
    ],
)
def test_load_config_rejects_bad_entry_point(folder: Path, spec: str, phrase: str) -> None:
    path = write(folder, VALID.replace(f"{MODULE}:client_fn", spec))

    with pytest.raises(ConfigError, match=key_and_file("[clients].app", path)) as caught:
        load_config(path)

    assert phrase in str(caught.value)


def test_load_config_reports_toml_syntax_error_with_line(folder: Path) -> None:
    path = write(folder, VALID.replace("rounds = 5", "rounds = = 5"))

    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid TOML: .*line 3"):
        load_config(path)


def test_load_config_rejects_unknown_section(folder: Path) -> None:
    path = write(folder, VALID + "\n[strategie]\nname = 'fedavg'\n")

    with pytest.raises(ConfigError, match=r"unknown top-level key or section 'strategie'"):
        load_config(path)


def test_load_config_rejects_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: no such config file"):
        load_config(path)


def test_load_config_imports_the_module_next_to_the_config(
    folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two configs with same-named task modules in different folders each get their own."""
    other = tmp_path_factory.mktemp("other")
    (other / f"{MODULE}.py").write_text(TASK.replace('{"x": [0.5]}', '{"x": [9.0]}'))
    load_config(write(folder, VALID)).build()

    federation = load_config(write(other, VALID)).build()

    assert federation.initial_weights == {"x": [9.0]}


CUSTOM_PARTS = """
[strategy.aggregator]
name = "{aggregator}"
{aggregator_params}

[strategy.server_opt]
name = "momentum"
lr = 0.5
momentum = 0.8
"""

USER_AGGREGATOR = """

from dataclasses import dataclass

from fedloom.aggregators import Aggregator


@dataclass(frozen=True, kw_only=True)
class Largest(Aggregator):
    scale: float = 1.0

    def aggregate(self, updates, weights):
        return updates.max(axis=0) * updates.dtype.type(self.scale)


class NotAnAggregator:
    pass
"""


def _with_parts(aggregator: str, aggregator_params: str = "") -> str:
    head, _, stop = VALID.partition("[stop]")
    parts = CUSTOM_PARTS.format(aggregator=aggregator, aggregator_params=aggregator_params)
    return head + parts + "\n[stop]" + stop


def test_load_config_replaces_the_presets_parts_by_name(folder: Path) -> None:
    path = write(folder, _with_parts("trimmed_mean", "beta = 0.2"))

    strategy = load_config(path).build().strategy

    assert strategy.aggregator == TrimmedMean(beta=0.2)
    assert strategy.server_opt == Momentum(lr=0.5, momentum=0.8)


def test_load_config_builds_a_users_aggregator_subclass_from_module_and_class(
    folder: Path,
) -> None:
    (folder / f"{MODULE}.py").write_text(TASK + USER_AGGREGATOR)
    path = write(folder, _with_parts(f"{MODULE}:Largest", "scale = 0.5"))

    aggregator = load_config(path).build().strategy.aggregator
    combined = aggregator.aggregate(np.array([[1.0, 4.0], [3.0, 2.0]]), np.ones(2))

    assert type(aggregator).__name__ == "Largest"
    # coordinate-wise max [3, 4] times scale 0.5
    np.testing.assert_array_equal(combined, [1.5, 2.0])


def test_load_config_rejects_a_part_that_is_not_the_base_class(folder: Path) -> None:
    (folder / f"{MODULE}.py").write_text(TASK + USER_AGGREGATOR)
    path = write(folder, _with_parts(f"{MODULE}:NotAnAggregator"))

    with pytest.raises(
        ConfigError,
        match=key_and_file("[strategy.aggregator].name", path)
        + ".*is not a subclass of fedloom.aggregators.base.Aggregator",
    ):
        load_config(path)


def test_load_config_rejects_an_unknown_aggregator_name_with_a_suggestion(folder: Path) -> None:
    path = write(folder, _with_parts("medain"))

    with pytest.raises(ConfigError, match=r"unknown aggregator 'medain'.*Did you mean 'median'\?"):
        load_config(path)


def test_load_config_rejects_a_bad_part_parameter_under_its_table(folder: Path) -> None:
    path = write(folder, _with_parts("trimmed_mean", "beta = 0.7"))

    with pytest.raises(ConfigError, match=key_and_file("[strategy.aggregator].beta", path)):
        load_config(path)


def test_load_config_reads_the_simulation_section(folder: Path) -> None:
    path = write(
        folder,
        VALID
        + '[simulation]\nengine = "process"\ndevice = "cpu"\nworkers = 3\n'
        + "fit_timeout_s = 2.5\ntask_s = 2.0\nspread = 0.5\navailability = 0.9\n",
    )

    options = load_config(path).build().simulation

    assert (options.engine, options.device, options.workers) == ("process", "cpu", 3)
    assert options.fit_timeout_s == 2.5
    assert options.ray_address is None
    assert options.fleet == Fleet(task_s=2.0, spread=0.5, availability=0.9, seed=7)


def test_load_config_without_simulation_section_runs_sequentially(folder: Path) -> None:
    options = load_config(write(folder, VALID)).simulation

    assert (options.engine, options.device, options.fleet) == ("sequential", "auto", None)


@pytest.mark.parametrize(
    ("table", "key", "phrase"),
    [
        ('engine = "vectorised"', "[simulation].engine", "Did you mean 'vectorized'?"),
        ('device = "gpu"', "[simulation].device", "unknown device 'gpu'"),
        ("workers = 0", "[simulation].workers", "must be >= 1"),
        ("availability = 0", "[simulation].availability", r"must be in \(0, 1\]"),
        ("engin = 'ray'", "[simulation].engin", "Did you mean 'engine'?"),
    ],
)
def test_load_config_rejects_bad_simulation_options(
    folder: Path, table: str, key: str, phrase: str
) -> None:
    path = write(folder, VALID + f"[simulation]\n{table}\n")

    with pytest.raises(ConfigError, match=key_and_file(key, path) + ".*" + phrase):
        load_config(path)
