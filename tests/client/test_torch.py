"""TorchClient: weights layout, seeded training, config overrides, evaluation, data checks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedloom.client import TorchClient
from fedloom.core import Weights
from fedloom.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _separable(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D points labelled by the sign of their first coordinate, kept away from 0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=generator)
    x[:, 0] += torch.sign(x[:, 0])  # a margin of at least 1 between the classes
    y = (x[:, 0] > 0).long()
    return x, y


def _classifier(seed: int = 0, *, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2))


def _with_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


# Weights layout ----------------------------------------------------------------------------------


def test_torch_client_weights_are_the_float_state_dict() -> None:
    model = _with_batchnorm()
    client = TorchClient(model, train=(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)))

    weights = client.get_weights()

    float_state = {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}
    assert list(weights) == list(float_state)
    for name, tensor in float_state.items():
        assert weights[name].shape == tuple(tensor.shape)
        assert np.array_equal(weights[name], tensor.numpy())
    assert "1.running_mean" in weights
    assert "1.running_var" in weights
    assert "1.num_batches_tracked" not in weights
    assert weights.spec.dtype == "float32"


def test_torch_client_set_weights_then_get_weights_round_trips() -> None:
    client = TorchClient(
        _with_batchnorm(), train=(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    )
    spec = client.get_weights().spec
    values = np.random.default_rng(0).normal(size=spec.size).astype(np.float32)
    weights = Weights.from_flat(spec, values)

    client.set_weights(weights)

    assert client.get_weights().equals(weights)
    assert np.array_equal(
        client.model.state_dict()["1.running_mean"].numpy(), weights["1.running_mean"]
    )


# Training ---------------------------------------------------------------------------------------


def _fit_client(**options: object) -> TorchClient:
    return TorchClient(_classifier(dropout=0.2), train=_separable(), batch_size=8, **options)  # type: ignore[arg-type]


def test_torch_client_fit_is_deterministic_for_a_config_seed() -> None:
    start = _fit_client().get_weights()

    first = _fit_client().fit(start, {"seed": 7})
    second = _fit_client().fit(start, {"seed": 7})
    other = _fit_client().fit(start, {"seed": 8})

    assert isinstance(first.weights, Weights)
    assert isinstance(second.weights, Weights)
    assert isinstance(other.weights, Weights)
    assert first.weights.equals(second.weights)
    assert first.metrics == second.metrics
    assert not np.array_equal(first.weights.flat, other.weights.flat)


def test_torch_client_fit_reduces_loss_over_rounds() -> None:
    x, y = _separable()
    client = TorchClient(
        _classifier(),
        train=(x, y),
        test=(x, y),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        batch_size=16,
    )
    weights = client.get_weights()
    before = client.evaluate(weights, {})

    for server_round in range(1, 6):
        result = client.fit(weights, {"seed": server_round})
        assert isinstance(result.weights, Weights)
        weights = result.weights
    after = client.evaluate(weights, {})

    assert result.num_examples == 64
    assert after.loss < 0.5 * before.loss
    assert after.metrics["accuracy"] >= 0.95


def _one_weight_regression() -> TorchClient:
    """y = w * x with w = 0 and one sample (x = 1, y = 1) under MSE."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    data = (torch.ones(1, 1), torch.ones(1, 1))
    return TorchClient(model, train=data, loss_fn=nn.MSELoss())


def test_torch_client_config_lr_overrides_the_optimizer() -> None:
    client = _one_weight_regression()

    result = client.fit(client.get_weights(), {"lr": 0.25})

    # loss = (w - 1)^2, grad = 2 (w - 1) = -2 at w = 0; w <- 0 - 0.25 * -2 = 0.5.
    # (The default lr 0.01 would give 0.02.)
    assert isinstance(result.weights, Weights)
    assert result.weights["weight"].tolist() == [[0.5]]


def test_torch_client_config_local_epochs_overrides_the_default() -> None:
    client = _one_weight_regression()

    result = client.fit(client.get_weights(), {"lr": 0.25, "local_epochs": 2})

    # Epoch 1: w = 0.5 (see above). Epoch 2: grad = 2 (0.5 - 1) = -1; w <- 0.5 + 0.25 = 0.75.
    assert isinstance(result.weights, Weights)
    assert result.weights["weight"].tolist() == [[0.75]]


def test_torch_client_constructor_local_epochs_is_the_default() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    client = TorchClient(
        model, train=(torch.ones(1, 1), torch.ones(1, 1)), loss_fn=nn.MSELoss(), local_epochs=2
    )

    result = client.fit(client.get_weights(), {"lr": 0.25})

    # Two epochs as above: 0 -> 0.5 -> 0.75.
    assert isinstance(result.weights, Weights)
    assert result.weights["weight"].tolist() == [[0.75]]


def test_torch_client_fit_accepts_a_dataloader() -> None:
    x, y = _separable(n=40)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    start = _classifier().state_dict()

    def fit_once() -> Weights:
        model = _classifier()
        model.load_state_dict(start)
        client = TorchClient(model, train=loader, test=loader)
        result = client.fit(client.get_weights(), {"seed": 3})
        assert result.num_examples == 40
        assert isinstance(result.weights, Weights)
        return result.weights

    first, second = fit_once(), fit_once()

    # DataLoader shuffling draws from the torch RNG, which fit seeds from config["seed"].
    assert first.equals(second)
    evaluation = TorchClient(_classifier(), train=loader, test=loader).evaluate(first, {})
    assert evaluation.num_examples == 40
    assert "accuracy" in evaluation.metrics


def test_torch_client_fit_leaves_the_global_torch_rng_alone() -> None:
    client = _fit_client()
    weights = client.get_weights()
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()

    client.fit(weights, {"seed": 7})

    assert torch.equal(torch.random.get_rng_state(), state)


# Evaluation -------------------------------------------------------------------------------------


def test_torch_client_evaluate_classification_reports_accuracy() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    # Identity logits: the predicted class is the larger coordinate -> 0, 1, 0, 1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    client = TorchClient(model, train=(x, y), test=(x, y))

    result = client.evaluate(client.get_weights(), {})

    # Three of four right: accuracy 0.75. Cross-entropy of logits (1, 0): -log softmax is
    # log(1 + e^-1) for the right class and log(1 + e) for the wrong one, so the mean is
    # (3 log(1 + e^-1) + log(1 + e)) / 4.
    assert result.num_examples == 4
    assert result.metrics == {"accuracy": 0.75}
    expected = (3 * math.log1p(math.exp(-1)) + math.log1p(math.e)) / 4
    assert result.loss == pytest.approx(expected, rel=1e-6)


def test_torch_client_evaluate_regression_reports_no_accuracy() -> None:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.zero_()
    x = torch.tensor([[1.0], [2.0]])
    y = torch.tensor([[1.0], [2.0]])
    client = TorchClient(model, train=(x, y), test=(x, y), loss_fn=nn.MSELoss())

    result = client.evaluate(client.get_weights(), {})

    # Predictions 2x = (2, 4) against (1, 2): squared errors 1 and 4, mean 2.5.
    assert result.loss == pytest.approx(2.5)
    assert result.num_examples == 2
    assert result.metrics == {}


def test_torch_client_evaluate_without_test_data_raises_config_error() -> None:
    client = _fit_client()

    with pytest.raises(ConfigError, match=r"has no test data\. Pass test=\.\.\."):
        client.evaluate(client.get_weights(), {})


# Data checks ------------------------------------------------------------------------------------


def test_torch_client_rejects_mismatched_lengths() -> None:
    with pytest.raises(ConfigError, match="train has 3 inputs and 2 targets"):
        TorchClient(_classifier(), train=(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)))


def test_torch_client_rejects_empty_data() -> None:
    with pytest.raises(ConfigError, match="test has 0 inputs and 0 targets"):
        TorchClient(
            _classifier(),
            train=_separable(),
            test=(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)),
        )


def test_torch_client_rejects_numpy_arrays() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)

    with pytest.raises(ConfigError, match=r"got a pair of \(ndarray, ndarray\)") as raised:
        TorchClient(_classifier(), train=(x, y))  # type: ignore[arg-type]

    assert "torch.as_tensor" in str(raised.value)


def test_torch_client_rejects_other_data_types() -> None:
    with pytest.raises(ConfigError, match="train must be a DataLoader or an"):
        TorchClient(_classifier(), train=[torch.zeros(2, 2)])  # type: ignore[arg-type]
