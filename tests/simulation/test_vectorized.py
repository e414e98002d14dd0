"""The vectorized engine: batched fits equal TorchClient's own, and what it cannot batch it names."""

from __future__ import annotations

import importlib
import itertools
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fedloom
from fedloom import ClientContext
from fedloom.client import FunctionClient, TorchClient
from fedloom.core import ClientId, Failure, FitIns, FitRes, Weights
from fedloom.data import Dirichlet
from fedloom.errors import InvalidResult
from fedloom.simulation import _vectorized_lowrank
from fedloom.simulation.vectorized import VectorizedFit, _ElementLoss
from fedloom.strategies import fedavg

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

SIZES = (40, 23, 7, 1)
"""Samples per client: with batch size 6 and 2 epochs, 14, 8, 4 and 2 steps."""

Optimizer = Callable[..., torch.optim.Optimizer]


def _mlp(seed: int = 1, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _wide(seed: int = 1) -> nn.Module:
    """A first layer wider than its factors (low-rank form), a narrow output layer (kept whole)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDE, 150), nn.ReLU(), nn.Linear(150, 3))


WIDE = 200
"""Input features of `_wide`."""


def _data(
    count: int, seed: int, *, dtype: torch.dtype = torch.float32, features: int = 5
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, features, generator=generator, dtype=dtype)
    return inputs, torch.randint(0, 3, (count,), generator=generator)


def _client(
    data: tuple[torch.Tensor, ...],
    optimizer: Optimizer,
    *,
    model: Callable[[], nn.Module] = _mlp,
    loss_fn: nn.Module | None = None,
) -> TorchClient:
    return TorchClient(
        model(),
        (data[0], data[1]),
        optimizer=optimizer,
        loss_fn=loss_fn,
        batch_size=6,
        local_epochs=2,
    )


def _fit_both(
    optimizer: Optimizer,
    *,
    sizes: tuple[int, ...] = SIZES,
    shared_start: bool = True,
    config: Mapping[str, float] | None = None,
    model: Callable[[], nn.Module] = _mlp,
    dtype: torch.dtype = torch.float32,
    features: int = 5,
) -> tuple[dict[ClientId, FitRes | Failure], dict[ClientId, FitRes]]:
    """Each client's fit through VectorizedFit (one call) and through its own TorchClient.fit."""
    data = {
        str(k): _data(size, seed=10 + k, dtype=dtype, features=features)
        for k, size in enumerate(sizes)
    }
    start = _client(data["0"], optimizer, model=model).get_weights()
    jobs: dict[ClientId, tuple[TorchClient, FitIns]] = {}
    for k, client_id in enumerate(data):
        weights = start if shared_start else Weights.from_flat(start.spec, start.flat + 0.01 * k)
        ins = FitIns(weights=weights, config={"seed": 100 + k, **(config or {})})
        jobs[client_id] = (_client(data[client_id], optimizer, model=model), ins)
    engine = VectorizedFit()
    assert [engine.unsupported(client, ins) for client, ins in jobs.values()] == [None] * len(jobs)

    batched = engine.fit(jobs)

    alone = {
        client_id: _client(data[client_id], optimizer, model=model).fit(ins.weights, ins.config)
        for client_id, (_, ins) in jobs.items()
    }
    return batched, alone


def _assert_same(
    batched: Mapping[ClientId, FitRes | Failure], alone: Mapping[ClientId, FitRes]
) -> None:
    assert list(batched) == list(alone)
    for client_id, expected in alone.items():
        result = batched[client_id]
        assert isinstance(result, FitRes), result
        assert isinstance(result.weights, Weights)
        assert isinstance(expected.weights, Weights)
        assert result.weights.spec == expected.weights.spec
        np.testing.assert_allclose(result.weights.flat, expected.weights.flat, rtol=0, atol=2e-6)
        assert result.num_examples == expected.num_examples
        assert result.metrics["loss"] == pytest.approx(expected.metrics["loss"], abs=1e-6)


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-maximize": lambda p: torch.optim.SGD(p, lr=0.01, maximize=True),
    "momentum-weight-decay-nesterov": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True
    ),
    "momentum-dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3),
    "adam-amsgrad-weight-decay": lambda p: torch.optim.Adam(
        p, lr=0.01, weight_decay=0.1, amsgrad=True
    ),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_vectorized_fit_equals_each_clients_own_fit_with_uneven_data(name: str) -> None:
    """40, 23, 7 and 1 samples: 14 to 2 steps; each client stops once its steps are done."""
    batched, alone = _fit_both(OPTIMIZERS[name])

    _assert_same(batched, alone)


@pytest.fixture(params=["low-rank", "whole"])
def form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Plain SGD from one start with every linear layer in factors, or every one kept whole."""
    whole = request.param == "whole"
    monkeypatch.setattr(_vectorized_lowrank, "kept_whole", lambda layer, samples: whole)
    return str(request.param)


@pytest.mark.parametrize("name", ["sgd", "sgd-maximize"])
def test_vectorized_plain_sgd_in_either_form_equals_each_clients_own_fit(
    name: str, form: str
) -> None:
    batched, alone = _fit_both(OPTIMIZERS[name])

    _assert_same(batched, alone)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_clients_with_their_own_batch_sizes_and_epochs_train_together_as_alone(
    optimizer: str, form: str
) -> None:
    """Batch sizes 6, 4, 9, 5 and 4, 1 to 3 epochs, in one group: each trains its own batches.

    Clients 4 and 1 hold 23 samples in batches of 4 for 2 and 1 epochs: sorted by
    steps they come one after the other, and must not share their step counts.
    """
    data = {str(k): _data(size, seed=20 + k) for k, size in enumerate((17, 23, 7, 10, 23))}
    shapes = {"0": (6, 1), "1": (4, 1), "2": (9, 3), "3": (5, 2), "4": (4, 2)}

    def build(k: str) -> TorchClient:
        size, epochs = shapes[k]
        return TorchClient(
            _mlp(),
            (data[k][0], data[k][1]),
            optimizer=OPTIMIZERS[optimizer],
            batch_size=size,
            local_epochs=epochs,
        )

    start = build("0").get_weights()
    jobs = {k: (build(k), FitIns(weights=start, config={"seed": 7 + int(k)})) for k in data}
    engine = VectorizedFit()
    assert [engine.unsupported(client, ins) for client, ins in jobs.values()] == [None] * 5

    batched = engine.fit(jobs)  # type: ignore[arg-type]

    alone = {k: build(k).fit(start, ins.config) for k, (_, ins) in jobs.items()}
    if optimizer == "sgd":  # plain SGD from one start: the low-rank path, not a fallback
        assert all(r.weights.pending is not None for r in batched.values())  # type: ignore[union-attr]
    _assert_same(batched, alone)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_clients_alike_train_together_as_alone(optimizer: str, form: str) -> None:
    """Equal clients (17 samples each, the usual simulation): last batches padded alike."""
    batched, alone = _fit_both(OPTIMIZERS[optimizer], sizes=(17, 17, 17, 17))

    _assert_same(batched, alone)


def _ignored_targets(count: int, seed: int) -> torch.Tensor:
    """Class indices, a third of them (two in each batch of six) the ignored index."""
    targets = torch.randint(0, 3, (count,), generator=torch.Generator().manual_seed(seed))
    targets[::3] = -100
    return targets


LOSSES: dict[str, tuple[nn.Module, Callable[[int, int], torch.Tensor]]] = {
    "cross-entropy-ignore-index": (nn.CrossEntropyLoss(), _ignored_targets),
    "cross-entropy-probabilities": (
        nn.CrossEntropyLoss(),
        lambda count, seed: torch.softmax(
            torch.randn(count, 3, generator=torch.Generator().manual_seed(seed)), dim=1
        ),
    ),
    "mse-three-outputs": (
        nn.MSELoss(),
        lambda count, seed: torch.randn(count, 3, generator=torch.Generator().manual_seed(seed)),
    ),
    "bce-with-logits": (
        nn.BCEWithLogitsLoss(),
        lambda count, seed: torch.rand(count, 3, generator=torch.Generator().manual_seed(seed)),
    ),
}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum-dampening"])
def test_vectorized_fit_masks_each_loss_as_the_clients_mean_does(
    loss: str, optimizer: str, form: str
) -> None:
    """Per-sample and per-element means, ignored targets, padding: the same as each own fit."""
    loss_fn, make_targets = LOSSES[loss]
    data = {
        str(k): (_data(size, seed=k)[0], make_targets(size, k))
        for k, size in enumerate((13, 8, 20))
    }
    build = lambda k: _client(data[k], OPTIMIZERS[optimizer], loss_fn=loss_fn)  # noqa: E731
    start = build("0").get_weights()
    jobs = {k: (build(k), FitIns(weights=start, config={"seed": int(k)})) for k in data}

    batched = VectorizedFit().fit(jobs)  # type: ignore[arg-type]

    alone = {k: build(k).fit(start, ins.config) for k, (_, ins) in jobs.items()}
    if optimizer == "sgd":  # plain SGD from one start: the low-rank path, not a fallback
        assert all(r.weights.pending is not None for r in batched.values())  # type: ignore[union-attr]
    _assert_same(batched, alone)


def test_cross_entropy_in_closed_form_equals_autograd_of_the_weighted_loss() -> None:
    """Loss and gradient of the closed form against autograd through torch's cross-entropy."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, 7, generator=generator) * 3
    targets = torch.randint(0, 7, (4, 2, 5), generator=generator)
    targets[0, 1, :2] = -100  # ignored: weight 0, any class index in the closed form
    mask = (torch.rand(4, 2, 5, generator=generator) > 0.3).to(torch.float32)
    loss = _ElementLoss(nn.CrossEntropyLoss())
    weights = loss.step_weights(targets, mask)[:, 1]
    closed_form = loss.closed_form(targets)
    assert closed_form is not None
    leaf = logits.clone().requires_grad_()
    expected = loss.weighted(leaf, targets[:, 1], weights)
    (expected_gradient,) = torch.autograd.grad(expected.sum(), leaf)

    values, gradient = closed_form(logits, targets[:, 1], weights)

    torch.testing.assert_close(values, expected.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("loss_fn", "targets"),
    [
        (nn.CrossEntropyLoss(label_smoothing=0.1), torch.zeros(2, 1, 3, dtype=torch.long)),
        (nn.CrossEntropyLoss(), torch.rand(2, 1, 3, 4)),  # class probabilities
        (nn.MSELoss(), torch.rand(2, 1, 3, 4)),
    ],
)
def test_other_losses_have_no_closed_form_and_train_with_autograd(
    loss_fn: nn.Module, targets: torch.Tensor
) -> None:
    assert _ElementLoss(loss_fn).closed_form(targets) is None


def test_kept_whole_picks_the_smaller_of_weights_and_factors() -> None:
    """784 x 100 weights outweigh 60 samples' factors; 100 x 10 weights do not."""
    assert not _vectorized_lowrank.kept_whole(nn.Linear(784, 100), samples=60)
    assert _vectorized_lowrank.kept_whole(nn.Linear(100, 10), samples=60)


def test_vectorized_plain_sgd_with_a_wide_and_a_narrow_layer_equals_own_fits() -> None:
    """The engine's own choice: the first layer in factors, the output layer kept whole."""
    layers = _vectorized_lowrank.low_rank_layers(_wide())
    assert layers is not None
    samples = 14 * 6  # the largest client's steps x batch
    assert [_vectorized_lowrank.kept_whole(m, samples) for _, m in layers[::2]] == [False, True]

    batched, alone = _fit_both(OPTIMIZERS["sgd"], model=_wide, features=WIDE)

    _assert_same(batched, alone)


def _flattening() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4, bias=False), nn.ReLU(), nn.Linear(4, 3))


def test_vectorized_fit_plain_sgd_through_flatten_and_bias_free_layers(form: str) -> None:
    """Inputs of shape (2, 3) per sample, flattened: the low-rank form with no bias to train."""
    optimizer = OPTIMIZERS["sgd"]
    jobs: dict[ClientId, tuple[TorchClient, FitIns]] = {}
    expected: dict[ClientId, FitRes] = {}
    for k, count in enumerate((13, 4)):
        generator = torch.Generator().manual_seed(k)
        data = (torch.randn(count, 2, 3, generator=generator), torch.randint(0, 3, (count,)))
        client = _client(data, optimizer, model=_flattening)
        ins = FitIns(weights=client.get_weights(), config={"seed": k})
        jobs[str(k)] = (client, ins)
        expected[str(k)] = _client(data, optimizer, model=_flattening).fit(ins.weights, ins.config)
    shared = jobs["0"][1].weights
    jobs = {
        cid: (client, FitIns(weights=shared, config=ins.config))
        for cid, (client, ins) in jobs.items()
    }

    batched = VectorizedFit().fit(jobs)

    _assert_same(batched, expected)


def _activation_first() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Tanh(), nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("model", [_mlp, _activation_first])
def test_vectorized_fit_plain_sgd_on_row_ranges_of_one_dataset(
    model: Callable[[], nn.Module], form: str
) -> None:
    """Clients holding views of one dataset (taken with one gather), uneven, one step apart.

    With an activation before the first linear layer, that layer sees the activated
    data, not the data: the low-rank form must remember what the layer saw.
    """
    optimizer = OPTIMIZERS["sgd"]
    inputs, targets = _data(sum(SIZES), seed=7)
    bounds = np.cumsum((0, *SIZES))
    start = _client((inputs, targets), optimizer, model=model).get_weights()
    jobs: dict[ClientId, tuple[TorchClient, FitIns]] = {}
    expected: dict[ClientId, FitRes] = {}
    for k, (low, high) in enumerate(itertools.pairwise(bounds.tolist())):
        data = (inputs[low:high], targets[low:high])
        ins = FitIns(weights=start, config={"seed": 20 + k})
        jobs[str(k)] = (_client(data, optimizer, model=model), ins)
        expected[str(k)] = _client(data, optimizer, model=model).fit(start, ins.config)

    batched = VectorizedFit().fit(jobs)

    _assert_same(batched, expected)


def test_vectorized_fit_plain_sgd_from_different_starts_equals_own_fits() -> None:
    """Clients that start from different weights take the general (per-client weights) path."""
    batched, alone = _fit_both(OPTIMIZERS["sgd"], shared_start=False)

    _assert_same(batched, alone)


def test_vectorized_fit_applies_the_servers_learning_rate() -> None:
    batched, alone = _fit_both(OPTIMIZERS["momentum-dampening"], config={"lr": 0.3})

    _assert_same(batched, alone)
    # lr 0.3 moves the weights further than the factory's 0.1 would: the override took effect
    default, _ = _fit_both(OPTIMIZERS["momentum-dampening"])
    assert not np.allclose(batched["0"].weights.flat, default["0"].weights.flat)  # type: ignore[union-attr]


def test_vectorized_fit_float64_models_train_and_return_float64() -> None:
    batched, alone = _fit_both(
        OPTIMIZERS["adamw"], model=lambda: _mlp(dtype=torch.float64), dtype=torch.float64
    )

    _assert_same(batched, alone)
    assert batched["0"].weights.flat.dtype == np.float64  # type: ignore[union-attr]


def test_vectorized_fit_results_are_rows_of_one_buffer() -> None:
    """No copy per client: every result's weights view one [clients, size] block in order."""
    batched, _ = _fit_both(OPTIMIZERS["sgd"], sizes=(12, 12, 12))

    flats = [result.weights.flat for result in batched.values()]  # type: ignore[union-attr]
    addresses = sorted(flat.__array_interface__["data"][0] for flat in flats)
    row_bytes = flats[0].nbytes
    assert np.diff(addresses).tolist() == [row_bytes, row_bytes]
    assert all(flat.dtype == np.float32 and not flat.flags.writeable for flat in flats)


def test_vectorized_fit_groups_clients_by_architecture() -> None:
    """A linear model and an MLP in one call: two batched groups, each equal to its own fits."""
    optimizer = OPTIMIZERS["momentum-weight-decay-nesterov"]
    linear = lambda: nn.Sequential(nn.Linear(5, 3))  # noqa: E731
    jobs: dict[ClientId, tuple[TorchClient, FitIns]] = {}
    expected: dict[ClientId, FitRes] = {}
    for k, model in enumerate((_mlp, linear, _mlp, linear)):
        data = _data(9 + k, seed=k)
        client = _client(data, optimizer, model=model)
        ins = FitIns(weights=client.get_weights(), config={"seed": k})
        jobs[str(k)] = (client, ins)
        expected[str(k)] = _client(data, optimizer, model=model).fit(ins.weights, ins.config)

    batched = VectorizedFit().fit(jobs)

    _assert_same(batched, expected)


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.linear(x), p=0.5, training=self.training)


def test_vectorized_fit_trains_randomness_it_cannot_see_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dropout called as a function is found only when vmap refuses it: those clients fall back."""
    caplog.set_level(logging.WARNING, logger="fedloom.simulation.vectorized")

    batched, alone = _fit_both(OPTIMIZERS["sgd"], model=_Scale)

    _assert_same(batched, alone)  # the same draws: TorchClient seeds them itself
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "these clients train one by one" in warnings[0]


class _Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)
        self.body.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def test_vectorized_fit_leaves_frozen_parameters_as_they_came() -> None:
    batched, alone = _fit_both(OPTIMIZERS["adam-amsgrad-weight-decay"], model=_Frozen)

    _assert_same(batched, alone)


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))


Build = Callable[[], tuple[object, FitIns]]
REFUSED: dict[str, tuple[Build, str]] = {}
"""Tasks the engine must refuse, and the words its reason must contain."""


def _refusal(name: str, match: str) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        REFUSED[name] = (build, match)
        return build

    return register


def _task(client: TorchClient, **config: object) -> tuple[object, FitIns]:
    return client, FitIns(weights=client.get_weights(), config={"seed": 1, **config})  # type: ignore[arg-type]


@_refusal(
    "batchnorm", r"buffers \(1\.running_mean, 1\.running_var, 1\.num_batches_tracked\).*BatchNorm"
)
def _batchnorm() -> tuple[object, FitIns]:
    return _task(_client(_data(8, 0), OPTIMIZERS["sgd"], model=_bn_model))


@_refusal("rmsprop", r"local optimizer RMSprop is not one the vectorized engine reproduces")
def _rmsprop() -> tuple[object, FitIns]:
    return _task(_client(_data(8, 0), lambda p: torch.optim.RMSprop(p, lr=0.01)))


@_refusal("dropout", r"random layers \(Dropout\)")
def _dropout() -> tuple[object, FitIns]:
    model = lambda: nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.2), nn.Linear(4, 3))  # noqa: E731
    return _task(_client(_data(8, 0), OPTIMIZERS["sgd"], model=model))


@_refusal("param-groups", r"several parameter groups")
def _groups() -> tuple[object, FitIns]:
    def optimizer(parameters: object) -> torch.optim.Optimizer:
        first, *rest = list(parameters)  # type: ignore[call-overload]
        return torch.optim.SGD([{"params": [first], "lr": 0.5}, {"params": rest}], lr=0.1)

    return _task(_client(_data(8, 0), optimizer))


@_refusal("weighted-loss", r"CrossEntropyLoss with class weights")
def _weighted() -> tuple[object, FitIns]:
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
    return _task(_client(_data(8, 0), OPTIMIZERS["sgd"], loss_fn=loss))


@_refusal("sum-loss", r"the loss MSELoss \(reduction 'sum'\)")
def _summed() -> tuple[object, FitIns]:
    return _task(_client(_data(8, 0), OPTIMIZERS["sgd"], loss_fn=nn.MSELoss(reduction="sum")))


@_refusal("dataloader", r"training data is a DataLoader")
def _loader() -> tuple[object, FitIns]:
    inputs, targets = _data(8, 0)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    return _task(TorchClient(_mlp(), loader))


@_refusal("plugins", r"client plug-ins \(fedprox\)")
def _plugins() -> tuple[object, FitIns]:
    return _task(_client(_data(8, 0), OPTIMIZERS["sgd"]), plugins="fedprox")


@_refusal("not-torch", r"the client is a FunctionClient")
def _function() -> tuple[object, FitIns]:
    client = FunctionClient(weights={"x": [0.0]}, fit=lambda w, c: (w, 1, {}))
    return client, FitIns(weights=Weights({"x": [0.0]}), config={"seed": 1})


@pytest.mark.parametrize("name", REFUSED)
def test_vectorized_fit_says_why_it_cannot_batch(name: str) -> None:
    build, match = REFUSED[name]
    client, ins = build()

    reason = VectorizedFit().unsupported(client, ins)  # type: ignore[arg-type]

    assert reason is not None
    assert re.search(match, reason), reason


def test_vectorized_fit_trains_refused_tasks_one_by_one() -> None:
    """Handed a task it refuses, fit still returns that client's own result."""
    client, ins = _batchnorm()
    expected = _client(_data(8, 0), OPTIMIZERS["sgd"], model=_bn_model).fit(ins.weights, ins.config)

    result = VectorizedFit().fit({"bn": (client, ins)})["bn"]  # type: ignore[dict-item]

    assert isinstance(result, FitRes)
    assert isinstance(result.weights, Weights)
    np.testing.assert_allclose(result.weights.flat, expected.weights.flat, rtol=0, atol=1e-7)  # type: ignore[union-attr]


# --- through simulate(engine="vectorized") ---------------------------------------------------


@pytest.fixture
def quickstart(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/quickstart/task.py, imported fresh from its folder."""
    monkeypatch.syspath_prepend(str(QUICKSTART))
    monkeypatch.delitem(sys.modules, "task", raising=False)
    threads = torch.get_num_threads()
    module = importlib.import_module("task")
    yield module
    torch.set_num_threads(threads)
    sys.modules.pop("task", None)


@pytest.fixture
def batched_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many fit tasks each VectorizedFit.fit call of the run received."""
    counts: list[int] = []
    fit = VectorizedFit.fit

    def counting(self: VectorizedFit, jobs: Mapping[ClientId, object]) -> object:
        counts.append(len(jobs))
        return fit(self, jobs)  # type: ignore[arg-type]

    monkeypatch.setattr(VectorizedFit, "fit", counting)
    return counts


def test_quickstart_vectorized_gives_the_sequential_weights_after_3_rounds(
    quickstart: ModuleType, batched_counts: list[int]
) -> None:
    """SGD with momentum 0.9, 2 epochs, Dirichlet-sized clients: every fit batched, same model."""

    def run(engine: str) -> fedloom.RunResult:
        return fedloom.simulate(
            quickstart.client_fn,
            num_clients=10,
            rounds=3,
            partitioner=Dirichlet(alpha=0.5),
            evaluate_fn=quickstart.evaluate,
            seed=0,
            engine=engine,
            device="cpu",
        )

    sequential = run("sequential")
    vectorized = run("vectorized")

    assert batched_counts == [10, 10, 10]  # all 10 clients' fits, batched in each round
    np.testing.assert_allclose(vectorized.weights.flat, sequential.weights.flat, rtol=0, atol=1e-5)
    assert dict(vectorized.history.series("central.accuracy")) == pytest.approx(
        dict(sequential.history.series("central.accuracy")), abs=1e-5
    )
    assert dict(vectorized.history.series("fit.loss")) == pytest.approx(
        dict(sequential.history.series("fit.loss")), abs=1e-5
    )


def _plain_sgd_client(context: ClientContext) -> TorchClient:
    """Client i holds 5 + 3 i samples: plain SGD on an MLP, the low-rank form's case."""
    data = _data(5 + 3 * context.partition_id, seed=context.partition_id)
    return _client(data, lambda p: torch.optim.SGD(p, lr=0.2))


def test_simulate_vectorized_plain_sgd_gives_the_sequential_weights(
    batched_counts: list[int], form: str
) -> None:
    def run(engine: str) -> fedloom.RunResult:
        return fedloom.simulate(
            _plain_sgd_client,
            num_clients=6,
            rounds=3,
            strategy=fedavg(fraction_fit=0.5, fraction_evaluate=0),
            seed=4,
            engine=engine,
            device="cpu",
        )

    sequential = run("sequential")
    vectorized = run("vectorized")

    assert batched_counts == [3, 3, 3]
    np.testing.assert_allclose(vectorized.weights.flat, sequential.weights.flat, rtol=0, atol=1e-5)
    assert not np.allclose(
        vectorized.weights.flat,
        _plain_sgd_client(ClientContext(client_id="0", partition_id=0, num_partitions=6))
        .get_weights()
        .flat,
    )  # it trained


def test_vectorized_fit_never_reuses_memory_that_results_still_hold() -> None:
    """A round's results stay intact while later rounds run; dropped ones free their buffer."""
    data = [_data(12, seed=k) for k in range(3)]
    engine = VectorizedFit()

    def round_of(seed: int) -> dict[ClientId, FitRes | Failure]:
        jobs = {}
        for k, part in enumerate(data):
            client = _client(part, OPTIMIZERS["sgd"])
            jobs[str(k)] = (client, FitIns(weights=client.get_weights(), config={"seed": seed}))
        return engine.fit(jobs)

    kept = round_of(1)
    copies = {cid: r.weights.flat.copy() for cid, r in kept.items()}  # type: ignore[union-attr]
    for seed in (2, 3, 4):  # each round's results are dropped: their buffer may be reused
        round_of(seed)

    for client_id, result in kept.items():
        np.testing.assert_array_equal(result.weights.flat, copies[client_id])  # type: ignore[union-attr]


def test_low_rank_results_are_deferred_and_the_block_sums_them_as_their_values_do(
    form: str,
) -> None:
    """Plain SGD from one start: results are computed only when read; their weighted sum is not."""
    batched, alone = _fit_both(OPTIMIZERS["sgd"], sizes=(40, 23, 7, 12))
    pending = [r.weights.pending for r in batched.values()]  # type: ignore[union-attr]
    assert all(p is not None for p in pending)
    block = pending[0][0]  # type: ignore[index]
    assert all(p[0] is block for p in pending)  # type: ignore[index]
    rows = [p[1] for p in pending]  # type: ignore[index]
    assert all(block.finite(row) for row in rows)
    base = next(iter(alone.values())).weights.flat * 0.5  # type: ignore[union-attr]
    values = {cid: r.weights.flat for cid, r in alone.items()}  # type: ignore[union-attr]
    ids = list(values)

    for chosen, scales in (
        ([0, 1, 2, 3], [40.0, 23.0, 7.0, 12.0]),  # every row, in the block's order or not
        ([2, 0], [1.0, 2.0]),  # some rows
        ([1, 1], [1.0, 1.0]),  # a row twice
    ):
        expected = sum(s * (values[ids[c]] - base) for c, s in zip(chosen, scales, strict=True))
        got = block.weighted_difference([rows[c] for c in chosen], scales, base)
        np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)

    _assert_same(batched, alone)  # reading them computes them


def test_unread_low_rank_results_stay_correct_while_later_rounds_run(form: str) -> None:
    """Deferred results view the round's stacked batches: later rounds must not overwrite them."""
    data = [_data(12, seed=k) for k in range(3)]
    engine = VectorizedFit()

    def round_of(seed: int) -> tuple[dict[ClientId, FitRes | Failure], dict[ClientId, FitRes]]:
        jobs, alone = {}, {}
        start = _client(data[0], OPTIMIZERS["sgd"]).get_weights()  # one start: low-rank path
        for k, part in enumerate(data):
            client = _client(part, OPTIMIZERS["sgd"])
            ins = FitIns(weights=start, config={"seed": seed})
            jobs[str(k)] = (client, ins)
            alone[str(k)] = _client(part, OPTIMIZERS["sgd"]).fit(ins.weights, ins.config)
        return engine.fit(jobs), alone

    kept, expected = round_of(1)
    for seed in (2, 3, 4):
        round_of(seed)

    assert all(r.weights.pending is not None for r in kept.values())  # type: ignore[union-attr]
    _assert_same(kept, expected)


def test_a_low_rank_result_that_overflows_is_not_proven_finite_and_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client whose data holds a huge value: its row is computed, checked and refused."""
    monkeypatch.setattr(_vectorized_lowrank, "kept_whole", lambda layer, samples: False)
    good = _data(12, seed=1)
    bad_inputs = good[0].clone()
    bad_inputs[3, 2] = 1e36  # its square overflows float32 in the factors' overlaps
    engine = VectorizedFit()
    start = _client(good, OPTIMIZERS["sgd"]).get_weights()
    jobs = {}
    for client_id, part in (("good", good), ("bad", (bad_inputs, good[1]))):
        client = _client(part, OPTIMIZERS["sgd"])
        jobs[client_id] = (client, FitIns(weights=start, config={"seed": 1}))

    results = engine.fit(jobs)

    block, row = results["bad"].weights.pending  # type: ignore[union-attr, misc]
    assert not block.finite(row)
    checked = start.conform(results["good"].weights, client_id="good")  # type: ignore[union-attr]
    assert checked.pending is not None  # type: ignore[attr-defined]  # proven without computing
    with pytest.raises(InvalidResult, match=r"client 'bad' returned tensor .* NaN or Inf"):
        start.conform(results["bad"].weights, client_id="bad")  # type: ignore[union-attr]


def test_layers_kept_whole_are_proven_finite_from_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same huge value through layers kept whole: finite, as the client's own fit is; NaN
    data gives NaN weights, which are not proven and are refused."""
    monkeypatch.setattr(_vectorized_lowrank, "kept_whole", lambda layer, samples: True)
    big, nan = _data(12, seed=1), _data(12, seed=1)
    big[0][3, 2] = 1e36
    nan[0][5, 1] = float("nan")
    start = _client(big, OPTIMIZERS["sgd"]).get_weights()
    ins = FitIns(weights=start, config={"seed": 1})
    jobs = {
        name: (_client(data, OPTIMIZERS["sgd"]), ins) for name, data in (("big", big), ("nan", nan))
    }

    results = VectorizedFit().fit(jobs)  # type: ignore[arg-type]

    checked = start.conform(results["big"].weights, client_id="big")  # type: ignore[union-attr]
    assert checked.pending is not None  # type: ignore[attr-defined]  # proven without computing
    expected = _client(big, OPTIMIZERS["sgd"]).fit(start, ins.config)
    _assert_same({"big": results["big"]}, {"big": expected})
    with pytest.raises(InvalidResult, match=r"client 'nan' returned tensor .* NaN or Inf"):
        start.conform(results["nan"].weights, client_id="nan")  # type: ignore[union-attr]
