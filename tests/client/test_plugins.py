"""Client halves of the plug-ins: config parsing, the shared gradient math, and TorchClient.

The TorchClient checks train y = w * x on one sample (x = 1, y = 1) under MSE,
so the loss is (w - 1)^2 and its gradient 2 (w - 1); with lr 0.25 every number
below is exact in float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client import TorchClient
from fedloom.client.plugins import (
    KNOWN_PLUGINS,
    LocalPlugins,
    OptimizerChoice,
    elastic_sensitivity,
    fednova_steps,
    parse_plugins,
    scaffold_control,
)
from fedloom.core import Config, FitRes, Vector, Weights
from fedloom.errors import ConfigError, ShapeMismatch
from fedloom.privacy.local import DPSGDBudget
from fedloom.strategies import Strategy
from fedloom.strategies.plugins import (
    Elastic,
    FedNova,
    FedProx,
    Lasso,
    LocalDP,
    LocalOptimizer,
    Ridge,
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# parse_plugins ---------------------------------------------------------------------------------


def test_parse_plugins_without_plugins_is_empty() -> None:
    assert parse_plugins({"seed": 3}) == LocalPlugins()
    assert parse_plugins({"plugins": ""}).names == ()


def test_parse_plugins_reads_names_and_parameters() -> None:
    config = {
        "plugins": "fedprox, ridge,lasso,scaffold",
        "fedprox.mu": 0.1,
        "ridge.strength": 0.2,
        "lasso.strength": 0,
        "fedprox.name": "fedprox",  # extra keys are ignored
    }

    plugins = parse_plugins(config)

    assert plugins.names == ("fedprox", "ridge", "lasso", "scaffold")
    assert (plugins.fedprox_mu, plugins.ridge_strength, plugins.lasso_strength) == (0.1, 0.2, 0.0)
    assert plugins.scaffold
    assert not plugins.fednova
    assert plugins.optimizer is None


def test_parse_plugins_reads_what_the_server_halves_send() -> None:
    """The config a Strategy with every plug-in sends parses into the same parameters."""
    strategy = Strategy(
        plugins=(
            FedProx(mu=0.1),
            Ridge(strength=0.2),
            Lasso(strength=0.3),
            LocalOptimizer(kind="momentum", lr=0.05, momentum=0.5),
            FedNova(),
            Elastic(),
            LocalDP(epsilon=4.0, delta=1e-6, clip_norm=0.5, rounds=3),
        )
    )
    weights = Weights({"w": [0.0, 0.0]})
    tasks = strategy.configure_fit(1, strategy.init(weights), ["a"], np.random.default_rng(0))

    plugins = parse_plugins(tasks["a"].config)

    assert set(plugins.names) == set(KNOWN_PLUGINS) - {"scaffold"}
    assert (plugins.fedprox_mu, plugins.ridge_strength, plugins.lasso_strength) == (0.1, 0.2, 0.3)
    assert plugins.optimizer == OptimizerChoice(kind="momentum", lr=0.05, momentum=0.5)
    assert plugins.dpsgd == DPSGDBudget(epsilon=4.0, delta=1e-6, clip_norm=0.5, rounds=3)


def test_parse_plugins_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown client plug-in 'scafold'") as raised:
        parse_plugins({"plugins": "fedprox,scafold", "fedprox.mu": 0.1})

    message = str(raised.value)
    assert "elastic, fednova, fedprox, lasso, optimizer, ridge, scaffold" in message
    assert "Did you mean 'scaffold'?" in message
    assert raised.value.field == "plugins"


def test_parse_plugins_missing_parameter_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"the fedprox plug-in needs config\['fedprox\.mu'\]"):
        parse_plugins({"plugins": "fedprox"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"plugins": "ridge", "ridge.strength": -1.0}, r"'ridge\.strength'\] must be a finite"),
        ({"plugins": "lasso", "lasso.strength": "big"}, r"'lasso\.strength'\] must be a finite"),
        ({"plugins": "fedprox", "fedprox.mu": True}, r"'fedprox\.mu'\] must be a finite"),
        ({"plugins": 3}, r'config\["plugins"\] must be a comma-separated string'),
        (
            {"plugins": "optimizer", "optimizer.kind": "rmsprop", "optimizer.lr": 0.1},
            "unknown local optimizer 'rmsprop'",
        ),
        ({"plugins": "optimizer", "optimizer.lr": 0}, r'"optimizer\.lr"\] must be > 0'),
        (
            {
                "plugins": "optimizer",
                "optimizer.kind": "momentum",
                "optimizer.lr": 0.1,
                "optimizer.momentum": 1.0,
            },
            r'"optimizer\.momentum"\] must be in \[0, 1\)',
        ),
    ],
)
def test_parse_plugins_rejects_invalid_parameters(config: Config, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_plugins(config)


def test_parse_plugins_scaffold_with_a_non_sgd_optimizer_raises_config_error() -> None:
    config = {"plugins": "scaffold,optimizer", "optimizer.kind": "adam", "optimizer.lr": 0.1}

    with pytest.raises(ConfigError, match=r"SCAFFOLD option II needs plain SGD.*with Adam"):
        parse_plugins(config)


def test_parse_plugins_fednova_with_adam_raises_config_error() -> None:
    config = {"plugins": "fednova,optimizer", "optimizer.kind": "adam", "optimizer.lr": 0.1}

    with pytest.raises(
        ConfigError, match="FedNova's normalization is defined for SGD and momentum"
    ):
        parse_plugins(config)


# The shared math -------------------------------------------------------------------------------

_ALL_TERMS = LocalPlugins(
    names=("fedprox", "ridge", "lasso", "scaffold"),
    fedprox_mu=0.5,
    ridge_strength=0.1,
    lasso_strength=0.2,
)


def test_local_plugins_correction_sums_the_terms_on_numpy_arrays() -> None:
    weight, anchor, control = np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([0.1, 0.2])

    term = _ALL_TERMS.correction(weight, anchor=anchor, control=control, sign=np.sign)

    # 0.5 (w - a) + 0.1 w + 0.2 sign(w) + (c - c_i):
    # [0.25 + 0.1 + 0.2 + 0.1, -1.25 - 0.2 - 0.2 + 0.2] = [0.65, -1.45].
    assert term is not None
    assert term.tolist() == pytest.approx([0.65, -1.45])


def test_local_plugins_correction_is_the_same_on_torch_tensors() -> None:
    weight = torch.tensor([1.0, -2.0], dtype=torch.float64)
    anchor = torch.tensor([0.5, 0.5], dtype=torch.float64)
    control = torch.tensor([0.1, 0.2], dtype=torch.float64)

    term = _ALL_TERMS.correction(weight, anchor=anchor, control=control, sign=torch.sign)

    assert isinstance(term, torch.Tensor)
    assert term.tolist() == pytest.approx([0.65, -1.45])


def test_local_plugins_correction_is_none_for_plugins_that_only_report() -> None:
    plugins = parse_plugins({"plugins": "fednova,elastic"})

    assert plugins.correction(np.ones(2), anchor=np.zeros(2), control=None, sign=np.sign) is None


def test_fednova_steps_is_k_for_sgd_and_the_momentum_weight_sum() -> None:
    sgd = OptimizerChoice(kind="sgd", lr=0.1)
    momentum = OptimizerChoice(kind="momentum", lr=0.1, momentum=0.9)

    # With v <- rho v + g, gradient k of K ends up counted sum_{j=0}^{K-k} rho^j times.
    brute = sum(sum(0.9**j for j in range(5 - k + 1)) for k in range(1, 6))
    assert fednova_steps(5, sgd) == 5.0
    assert fednova_steps(5, momentum) == pytest.approx(brute)
    assert fednova_steps(2, momentum) == pytest.approx(2.9)  # 1.9 + 1


def test_scaffold_control_keeps_c_i_where_nothing_trains() -> None:
    c_i, c = np.array([0.2, 0.7]), np.array([0.5, 0.5])
    start, trained = np.array([0.0, 1.0]), np.array([0.133, 3.0])

    value = scaffold_control(
        c_i, c, start=start, trained=trained, steps=2, lr=0.1, trainable=np.array([True, False])
    )

    # First weight: 0.2 - 0.5 + (0 - 0.133) / 0.2 = -0.965. Second: a buffer, c_i kept.
    assert value.tolist() == pytest.approx([-0.965, 0.7])


def test_elastic_sensitivity_is_the_mean_and_zero_without_steps() -> None:
    assert elastic_sensitivity(np.array([3.0, 0.0]), 2).tolist() == [1.5, 0.0]
    assert elastic_sensitivity(np.array([3.0]), 0).tolist() == [0.0]


def test_local_plugins_begin_rejects_a_control_variate_of_another_size() -> None:
    plugins = parse_plugins({"plugins": "scaffold"})

    with pytest.raises(ShapeMismatch, match=r"'scaffold\.c' has shape \(3,\)"):
        plugins.begin(np.zeros(2), {"scaffold.c": np.zeros(3)}, {})


# TorchClient -----------------------------------------------------------------------------------


def _one_weight(**options: object) -> TorchClient:
    """y = w * x with one sample (x = 1, y = 1) under MSE; the weights passed in set w."""
    return TorchClient(
        nn.Linear(1, 1, bias=False),
        train=(torch.ones(1, 1), torch.ones(1, 1)),
        loss_fn=nn.MSELoss(),
        **options,  # type: ignore[arg-type]
    )


def _w(value: float) -> Weights:
    return Weights({"weight": [[value]]}, dtype="float32")


def _fit(
    client: TorchClient,
    start: float,
    config: Config,
    tensors: Mapping[str, Vector] | None = None,
    state: Mapping[str, Vector] | None = None,
) -> tuple[FitRes, dict[str, Vector]]:
    full = {"lr": 0.25, "local_epochs": 2, **config}
    return client.fit_plugins(_w(start), full, tensors or {}, state or {})


def _weight(result: FitRes) -> float:
    assert isinstance(result.weights, Weights)
    return float(result.weights["weight"][0, 0])


def test_torch_client_fedprox_two_steps_by_hand() -> None:
    result, _ = _fit(_one_weight(), 0.5, {"plugins": "fedprox", "fedprox.mu": 0.5})

    # g = 2 (w - 1) + 0.5 (w - 0.5). Step 1 at 0.5: g = -1 -> w = 0.75.
    # Step 2: g = -0.5 + 0.125 = -0.375 -> w = 0.75 + 0.09375 = 0.84375.
    assert _weight(result) == 0.84375


def test_torch_client_ridge_two_steps_by_hand() -> None:
    result, _ = _fit(_one_weight(), 0.5, {"plugins": "ridge", "ridge.strength": 0.5})

    # g = 2 (w - 1) + 0.5 w. Step 1 at 0.5: g = -1 + 0.25 = -0.75 -> w = 0.6875.
    # Step 2: g = -0.625 + 0.34375 = -0.28125 -> w = 0.6875 + 0.0703125 = 0.7578125.
    assert _weight(result) == 0.7578125


def test_torch_client_lasso_uses_the_sign_on_both_sides_of_zero() -> None:
    result, _ = _fit(_one_weight(), -0.5, {"plugins": "lasso", "lasso.strength": 0.5})

    # g = 2 (w - 1) + 0.5 sign(w). Step 1 at -0.5: g = -3 - 0.5 = -3.5 -> w = 0.375.
    # Step 2: g = -1.25 + 0.5 = -0.75 -> w = 0.375 + 0.1875 = 0.5625.
    assert _weight(result) == 0.5625


def test_torch_client_scaffold_two_steps_delta_and_state_by_hand() -> None:
    tensors = {"scaffold.c": np.array([0.5], dtype=np.float32)}
    state = {"scaffold.c_i": np.array([0.25], dtype=np.float32)}

    result, new_state = _fit(_one_weight(), 0.0, {"plugins": "scaffold"}, tensors, state)

    # Gradients gain c - c_i = 0.25. Step 1 at 0: g = -2 + 0.25 = -1.75 -> w = 0.4375.
    # Step 2: g = -1.125 + 0.25 = -0.875 -> w = 0.4375 + 0.21875 = 0.65625.
    # c_i+ = 0.25 - 0.5 + (0 - 0.65625) / (2 * 0.25) = -0.25 - 1.3125 = -1.5625 (the mean raw
    # gradient of -2 and -1.125); delta_c = -1.5625 - 0.25 = -1.8125.
    assert _weight(result) == 0.65625
    assert result.tensors["scaffold.delta_c"].tolist() == [-1.8125]
    assert new_state["scaffold.c_i"].tolist() == [-1.5625]


def test_torch_client_scaffold_leaves_the_server_tensors_alone() -> None:
    c = np.array([0.5], dtype=np.float32)
    c.setflags(write=False)
    start = _w(0.0)

    _one_weight().fit_plugins(start, {"plugins": "scaffold"}, {"scaffold.c": c}, {})

    assert c.tolist() == [0.5]
    assert start.flat.tolist() == [0.0]


@pytest.mark.parametrize(
    ("factory", "described"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "momentum 0.9"),
        (lambda p: torch.optim.Adam(p, lr=0.1), "Adam"),
        (lambda p: torch.optim.AdamW(p, lr=0.1), "AdamW"),
    ],
)
def test_torch_client_scaffold_refuses_a_non_sgd_optimizer(factory: object, described: str) -> None:
    client = _one_weight(optimizer=factory)

    with pytest.raises(ConfigError, match="SCAFFOLD option II needs plain SGD") as raised:
        _fit(client, 0.0, {"plugins": "scaffold"}, {"scaffold.c": np.zeros(1, np.float32)})

    assert described in str(raised.value)


def test_torch_client_momentum_optimizer_plugin_two_steps_and_fednova_a() -> None:
    config = {
        "plugins": "optimizer,fednova",
        "optimizer.kind": "momentum",
        "optimizer.lr": 0.25,
        "optimizer.momentum": 0.5,
    }

    result, _ = _fit(_one_weight(), 0.0, config)

    # Step 1: g = -2, v = -2, w = 0.5. Step 2: g = -1, v = 0.5 * -2 - 1 = -2, w = 1.0.
    # a = (2 - 0.5 (1 - 0.25) / 0.5) / 0.5 = (2 - 0.75) / 0.5 = 2.5 (g1 counts 1.5, g2 1).
    assert _weight(result) == 1.0
    assert result.metrics["fednova.a"] == 2.5


def test_torch_client_fednova_reads_the_momentum_of_the_clients_own_sgd() -> None:
    client = _one_weight(optimizer=lambda p: torch.optim.SGD(p, lr=0.25, momentum=0.5))

    result, _ = _fit(client, 0.0, {"plugins": "fednova"})

    assert _weight(result) == 1.0  # as with the optimizer plug-in above
    assert result.metrics["fednova.a"] == 2.5


def test_torch_client_adam_optimizer_plugin_first_step_by_hand() -> None:
    config = {"plugins": "optimizer", "optimizer.kind": "adam", "optimizer.lr": 0.25}

    result, _ = _fit(_one_weight(), 0.0, {**config, "local_epochs": 1})

    # Bias-corrected moments of one gradient g = -2 are g and g^2: w = 0.25 * 2 / (2 + 1e-8).
    assert _weight(result) == pytest.approx(0.25, rel=1e-6)


def test_torch_client_elastic_reports_the_mean_absolute_gradient() -> None:
    result, _ = _fit(_one_weight(), 0.0, {"plugins": "elastic"})

    # Plain SGD: gradients -2 (w 0 -> 0.5) and -1; mean |g| = 1.5.
    assert result.tensors["elastic.sensitivity"].tolist() == [1.5]


def _classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=generator)
    return x, (x[:, 0] > 0).long()


def test_torch_client_fit_plugins_without_plugins_equals_fit_bit_for_bit() -> None:
    start = TorchClient(_classifier(), train=_data()).get_weights()

    plain = TorchClient(_classifier(), train=_data(), batch_size=8).fit(start, {"seed": 7})
    client = TorchClient(_classifier(), train=_data(), batch_size=8)
    result, state = client.fit_plugins(start, {"seed": 7}, {}, {"kept": np.ones(1)})
    reporting, _ = TorchClient(_classifier(), train=_data(), batch_size=8).fit_plugins(
        start, {"seed": 7, "plugins": "fednova"}, {}, {}
    )

    assert isinstance(plain.weights, Weights)
    assert isinstance(result.weights, Weights)
    assert isinstance(reporting.weights, Weights)
    assert result.weights.equals(plain.weights)
    assert result.metrics == plain.metrics
    assert list(state) == ["kept"]
    assert reporting.weights.equals(plain.weights)  # fednova only reports
    assert reporting.metrics["fednova.a"] == 8.0  # 64 samples in batches of 8, one epoch


def _with_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_torch_client_batchnorm_buffers_get_no_correction() -> None:
    data = (torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 2)
    start = TorchClient(_with_batchnorm(), train=data).get_weights()
    spec = start.spec
    buffers = np.zeros(spec.size, dtype=bool)
    offset = 0
    for name, size in zip(spec.names, spec.sizes, strict=True):
        buffers[offset : offset + size] = name.startswith("1.running_")
        offset += size
    c = np.where(buffers, 1000.0, 0.0).astype(np.float32)  # huge, but only on buffers
    c_i = np.where(buffers, 3.0, 0.0).astype(np.float32)

    plain = TorchClient(_with_batchnorm(), train=data, batch_size=4).fit(start, {"seed": 2})
    result, state = TorchClient(_with_batchnorm(), train=data, batch_size=4).fit_plugins(
        start,
        {"seed": 2, "plugins": "scaffold,elastic"},
        {"scaffold.c": c},
        {"scaffold.c_i": c_i},
    )

    # c - c_i is zero on every parameter, so training is untouched; on the buffers no gradient
    # exists: delta_c is 0 there and c_i is kept, and their sensitivity is 0.
    assert isinstance(plain.weights, Weights)
    assert isinstance(result.weights, Weights)
    assert result.weights.equals(plain.weights)
    assert np.all(result.tensors["scaffold.delta_c"][buffers] == 0)
    assert np.all(state["scaffold.c_i"][buffers] == 3.0)
    sensitivity = result.tensors["elastic.sensitivity"]
    assert np.all(sensitivity[buffers] == 0)
    assert np.all(sensitivity[~buffers] >= 0)
    assert sensitivity[~buffers].max() > 0
