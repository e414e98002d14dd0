"""Local DP: DP-SGD on TorchClient through Opacus, its budget, its epsilon, refused layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fedloom.client import GradientClient, TorchClient
from fedloom.client.plugins import parse_plugins
from fedloom.core import Config, Weights
from fedloom.errors import BudgetExhausted, ConfigError
from fedloom.privacy import epsilon_spent
from fedloom.privacy.dpsgd import check_model
from fedloom.privacy.local import DPSGDBudget, history_from_vector
from fedloom.strategies import LocalDP, Strategy

NUM_EXAMPLES, BATCH = 64, 8  # sample rate q = 8/64 = 0.125: floor(1/q) = 8 steps an epoch


def _client(model: nn.Module | None = None, *, epochs: int = 1) -> TorchClient:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(NUM_EXAMPLES, 5, generator=generator)
    targets = (inputs[:, 0] > 0).long()
    model = (
        model if model is not None else nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    )
    return TorchClient(
        model,
        train=(inputs, targets),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        local_epochs=epochs,
        batch_size=BATCH,
    )


def _config(**budget: float) -> Config:
    """The fit config a strategy with LocalDP(**budget) sends."""
    strategy = Strategy(plugins=(LocalDP(**budget),))  # type: ignore[arg-type]
    weights = Weights({"w": np.zeros(1)})
    return strategy.configure_fit(1, strategy.init(weights), ["a"], np.random.default_rng(0))[
        "a"
    ].config


def test_local_dp_reports_the_accountants_epsilon_and_keeps_its_history() -> None:
    """Two fits of 8 steps at q = 0.125: the client's dpsgd.epsilon after each is what
    Opacus' RDPAccountant says after 8 and 16 steps of the same noise multiplier."""
    client = _client()
    config = _config(epsilon=4.0, delta=1e-5, clip_norm=1.0, rounds=2)
    weights = client.get_weights()

    first, state = client.fit_plugins(weights, config, {}, {})
    second, state = client.fit_plugins(first.weights, config, {}, state)

    z = float(first.metrics["dpsgd.noise_multiplier"])
    reference = RDPAccountant()
    for fit in (first, second):
        for _ in range(8):
            reference.step(noise_multiplier=z, sample_rate=0.125)
        assert fit.metrics["dpsgd.epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert history_from_vector(state["dpsgd.history"]) == ((z, 0.125, 16),)
    assert float(second.metrics["dpsgd.epsilon"]) <= 4.0  # the noise was calibrated to the budget


def test_local_dp_refuses_a_fit_beyond_the_budget() -> None:
    client = _client()
    config = _config(epsilon=4.0, delta=1e-5, clip_norm=1.0, rounds=2)  # as above: noise cached
    state: dict[str, np.ndarray] = {}
    weights = client.get_weights()
    for _ in range(2):
        result, state = client.fit_plugins(weights, config, {}, state)

    with pytest.raises(BudgetExhausted, match=r"another fit would bring it to .* rounds = 2"):
        client.fit_plugins(result.weights, config, {}, state)


def test_local_dp_clips_each_examples_gradient() -> None:
    """With a clip norm of 1e-6 (and a large budget, so little noise) DP-SGD barely moves the
    weights, while the same fit without DP moves them far: the gradients were clipped."""
    plain = _client().fit(_client().get_weights(), {"seed": 1})
    client = _client()
    start = client.get_weights()

    private, _ = client.fit_plugins(start, _config(epsilon=1e4, clip_norm=1e-6, rounds=1), {}, {})

    moved_plain = np.linalg.norm(plain.weights.flat - start.flat)
    moved_private = np.linalg.norm(private.weights.flat - start.flat)
    assert moved_plain > 0.1
    assert moved_private < 1e-3 * moved_plain


def test_local_dp_leaves_the_model_without_opacus_hooks() -> None:
    """Clients may share one model: after a DP fit it trains normally again, hooks removed."""
    client = _client()
    client.fit_plugins(client.get_weights(), _config(epsilon=4.0, rounds=2), {}, {})

    assert all(not module._forward_hooks for module in client.model.modules())
    leftovers = ("grad_sample", "summed_grad", "_forward_counter")
    assert not [a for p in client.model.parameters() for a in leftovers if hasattr(p, a)]
    assert "loss" in client.fit(client.get_weights(), {"seed": 0}).metrics


def test_local_dp_refuses_batchnorm_by_name_with_the_groupnorm_fix() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    client = _client(model)

    with pytest.raises(
        ConfigError, match=r"cannot train layer '1' \(BatchNorm1d\).*GroupNorm"
    ) as info:
        client.fit_plugins(client.get_weights(), _config(epsilon=8.0), {}, {})

    assert info.value.field == "model"
    assert info.value.value == "1"
    check_model(nn.Sequential(nn.Linear(5, 8), nn.GroupNorm(2, 8)))  # the fix passes


def test_local_dp_budget_too_small_for_the_steps_is_a_config_error() -> None:
    budget = DPSGDBudget(epsilon=1e-4, delta=1e-5, rounds=1000)

    with pytest.raises(ConfigError, match="too small for 8000 steps") as info:
        budget.plan(num_examples=NUM_EXAMPLES, batch_size=BATCH, epochs=1, history=())

    assert info.value.field == "epsilon"


@pytest.mark.parametrize(
    ("settings", "field", "phrase"),
    [
        ({"epsilon": 0.0}, "epsilon", "epsilon must be a finite number > 0"),
        ({"epsilon": 8.0, "delta": 1.0}, "delta", r"delta must be a number in \(0, 1\)"),
        ({"epsilon": 8.0, "clip_norm": -1.0}, "clip_norm", "clip_norm must be a finite number > 0"),
        ({"epsilon": 8.0, "rounds": 0}, "rounds", "rounds must be an int >= 1"),
    ],
)
def test_local_dp_bad_settings_name_the_field(
    settings: dict[str, float], field: str, phrase: str
) -> None:
    with pytest.raises(ConfigError, match=phrase) as info:
        LocalDP(**settings)  # type: ignore[arg-type]

    assert info.value.field == field


def test_local_dp_client_reads_the_budget_from_the_config() -> None:
    plugins = parse_plugins(_config(epsilon=2.0, delta=1e-6, clip_norm=0.5, rounds=5))

    assert plugins.dpsgd == DPSGDBudget(epsilon=2.0, delta=1e-6, clip_norm=0.5, rounds=5)


def test_local_dp_refused_by_a_gradient_client() -> None:
    client = GradientClient(
        weights={"w": np.zeros(2)},
        grad_fn=lambda weights, rng: (0.0, {"w": np.zeros(2)}),
        num_examples=4,
    )

    with pytest.raises(ConfigError, match=r"which a GradientClient is not\. Use a TorchClient"):
        client.fit_plugins(client.get_weights(), _config(epsilon=8.0), {}, {})


def test_local_dp_epsilon_spent_is_zero_before_any_step() -> None:
    assert epsilon_spent((), delta=1e-5) == 0.0
