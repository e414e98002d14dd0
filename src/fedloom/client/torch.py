"""`TorchClient`: a PyTorch ``nn.Module`` with its data, loss and optimizer, as a fedloom Client.

The federated weights are the module's floating-point ``state_dict`` entries
(parameters and float buffers such as BatchNorm statistics); integer buffers
(``num_batches_tracked``) stay local. Training is seeded from
``config["seed"]``, which the orchestrator derives from the run seed, so a
simulation is reproducible without touching the global torch generator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedloom.core import Config, EvaluateRes, FitRes, Weights
from fedloom.errors import ConfigError

__all__ = ["Batches", "OptimizerFactory", "TorchClient"]

Batches: TypeAlias = (
    "DataLoader[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]"
)
"""Training or test data: a DataLoader of ``(inputs, targets)``, or the two tensors."""

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""Builds the local optimizer from the model's parameters, e.g. ``lambda p: SGD(p, lr=0.1)``."""


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01)


class TorchClient:
    """Train and evaluate a PyTorch model on local data.

    Args:
        model: the network; its float state defines the federated weights.
        train: training data, a DataLoader or an ``(inputs, targets)`` tensor pair.
        test: evaluation data, same forms; without it the client is not evaluated.
        loss_fn: defaults to cross-entropy.
        optimizer: builds the local optimizer each round (default SGD, lr=0.01).
        local_epochs: epochs per round; ``config["local_epochs"]`` overrides it.
        batch_size: batch size when data is given as tensors.
        device: where to train ("cpu", "cuda", ...).

    ``config["lr"]``, when the server sends it, sets the optimizer's learning rate.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Batches,
        *,
        test: Batches | None = None,
        loss_fn: nn.Module | None = None,
        optimizer: OptimizerFactory = _default_optimizer,
        local_epochs: int = 1,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        if local_epochs < 1:
            raise ConfigError(
                f"local_epochs must be >= 1, got {local_epochs}.", field="local_epochs"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.", field="batch_size")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_data = _check_data(train, "train")
        self.test_data = None if test is None else _check_data(test, "test")
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.optimizer = optimizer
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self._names = [
            name for name, value in model.state_dict().items() if torch.is_floating_point(value)
        ]

    def get_weights(self) -> Weights:
        state = self.model.state_dict()
        return Weights({name: state[name].detach().cpu().numpy() for name in self._names})

    def set_weights(self, weights: Weights) -> None:
        """Load `weights` into the model in place."""
        with warnings.catch_warnings():  # the tensor is only read, never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            flat = torch.from_numpy(weights.flat)
        state = self.model.state_dict()
        offset = 0
        with torch.no_grad():
            for name, size in zip(weights.spec.names, weights.spec.sizes, strict=True):
                target = state[name]
                target.copy_(flat[offset : offset + size].view(target.shape))
                offset += size

    def fit(self, weights: Weights, config: Config) -> FitRes:
        self.set_weights(weights)
        epochs = int(config.get("local_epochs", self.local_epochs))
        seed = int(config.get("seed", 0))
        optimizer = self.optimizer(self.model.parameters())
        if "lr" in config:
            for group in optimizer.param_groups:
                group["lr"] = float(config["lr"])
        generator = torch.Generator().manual_seed(seed)
        self.model.train()
        total_loss, total_examples = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # DataLoader shuffling and dropout, restored afterwards
            for _ in range(epochs):
                total_loss, total_examples = 0.0, 0
                for inputs, targets in self._batches(self.train_data, generator, shuffle=True):
                    optimizer.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.model(inputs), targets)
                    loss.backward()
                    optimizer.step()
                    total_loss += float(loss.detach()) * len(targets)
                    total_examples += len(targets)
        return FitRes(
            self.get_weights(),
            _num_examples(self.train_data),
            {"loss": total_loss / max(total_examples, 1)},
        )

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        if self.test_data is None:
            raise ConfigError(
                "this TorchClient has no test data. Pass test=... or set "
                "fraction_evaluate=0 in the strategy.",
                field="test",
            )
        self.set_weights(weights)
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        classify = True
        with torch.no_grad():
            for inputs, targets in self._batches(self.test_data, None, shuffle=False):
                outputs = self.model(inputs)
                total_loss += float(self.loss_fn(outputs, targets)) * len(targets)
                count += len(targets)
                classify = classify and outputs.ndim == 2 and not torch.is_floating_point(targets)
                if classify:
                    correct += int((outputs.argmax(dim=1) == targets).sum())
        metrics = {"accuracy": correct / count} if classify and count else {}
        return EvaluateRes(total_loss / max(count, 1), count, metrics)

    def _batches(
        self, data: Batches, generator: torch.Generator | None, *, shuffle: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(data, DataLoader):
            for inputs, targets in data:
                yield inputs.to(self.device), targets.to(self.device)
            return
        inputs, targets = data
        count = len(targets)
        order = torch.randperm(count, generator=generator) if shuffle else None
        for start in range(0, count, self.batch_size):
            index = slice(start, start + self.batch_size)
            if order is None:
                yield inputs[index].to(self.device), targets[index].to(self.device)
            else:
                chosen = order[index]
                yield inputs[chosen].to(self.device), targets[chosen].to(self.device)


def _check_data(data: Batches, field: str) -> Batches:
    if isinstance(data, DataLoader):
        return data
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(part, torch.Tensor) for part in data)
    ):
        inputs, targets = data
        if len(inputs) != len(targets) or len(targets) == 0:
            raise ConfigError(
                f"{field} has {len(inputs)} inputs and {len(targets)} targets; expected the same, "
                "non-zero number of each.",
                field=field,
            )
        return data
    if isinstance(data, tuple) and len(data) == 2:
        got = ", ".join(type(part).__name__ for part in data)
        raise ConfigError(
            f"{field} must be a DataLoader or a pair of torch tensors, got a pair of ({got}). "
            "Convert arrays with torch.as_tensor(...).",
            field=field,
        )
    raise ConfigError(
        f"{field} must be a DataLoader or an (inputs, targets) pair of tensors, got "
        f"{type(data).__name__}.",
        field=field,
    )


def _num_examples(data: Batches) -> int:
    if isinstance(data, DataLoader):
        dataset = data.dataset
        return len(dataset) if hasattr(dataset, "__len__") else 0
    return len(data[1])
