"""`TorchClient`: a PyTorch ``nn.Module`` with its data, loss and optimizer, as a fedloom Client.

The federated weights are the module's floating-point ``state_dict`` entries
(parameters and float buffers such as BatchNorm statistics); integer buffers
(``num_batches_tracked``) stay local. Training is seeded from
``config["seed"]``, which the orchestrator derives from the run seed, so a
simulation is reproducible without touching the global torch generator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedloom.client.plugins import (
    LocalPlugins,
    LocalRound,
    OptimizerChoice,
    PluginOutputs,
    parse_plugins,
)
from fedloom.core import Config, EvaluateRes, FitRes, Scalar, Vector, VectorSpec, Weights
from fedloom.errors import ConfigError
from fedloom.privacy.local import DPSGDBudget, history_from_vector, history_to_vector

if TYPE_CHECKING:
    from fedloom.privacy.dpsgd import PrivateTraining

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
    `fit_plugins` trains the same way while applying the client plug-ins the
    strategy names (FedProx, SCAFFOLD, FedNova, regularizers, elastic, a local
    optimizer chosen by the server).
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
        self.model = model if _placed(model, self.device) else model.to(self.device)
        self.train_data = _on_device(_check_data(train, "train"), self.device)
        self.test_data = (
            None if test is None else _on_device(_check_data(test, "test"), self.device)
        )
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.optimizer = optimizer
        self.local_epochs = local_epochs
        self.batch_size = batch_size

    def get_weights(self) -> Weights:
        state = self.model.state_dict()
        names = [name for name, value in state.items() if torch.is_floating_point(value)]
        return Weights({name: state[name].detach().cpu().numpy() for name in names})

    def set_weights(self, weights: Weights) -> None:
        """Load `weights` into the model in place."""
        flat = _read_only_tensor(weights.flat)
        state = self.model.state_dict()
        offset = 0
        with torch.no_grad():
            for name, size in zip(weights.spec.names, weights.spec.sizes, strict=True):
                target = state[name]
                target.copy_(flat[offset : offset + size].view(target.shape))
                offset += size

    def fit(self, weights: Weights, config: Config) -> FitRes:
        result, _ = self._train(weights, config, None, {}, {})
        return result

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        """Train like `fit`, applying the plug-ins named in ``config["plugins"]``.

        After each ``backward()`` the plug-ins' terms are added to every
        trainable parameter's ``.grad``, before ``optimizer.step()``. Float
        buffers (BatchNorm statistics) have no gradient: they get no
        correction, zero sensitivity, and their SCAFFOLD ``c_i`` stays as it
        was. The ``optimizer`` plug-in replaces the client's optimizer (and
        ``config["lr"]``) for this fit.

        Args:
            weights: the global weights.
            config: the fit config with the plug-ins' names and parameters.
            tensors: the server's plug-in tensors (SCAFFOLD's ``scaffold.c``).
            state: what this client kept from its last fit.

        Returns:
            The result (with the plug-ins' tensors and metrics) and the state to keep.

        Raises:
            ConfigError: an unknown plug-in, a bad parameter, or a local optimizer
                a plug-in is not defined for (SCAFFOLD needs plain SGD).
            ProtocolError: a plug-in's tensor is missing.
        """
        return self._train(weights, config, parse_plugins(config), tensors, state)

    def _train(
        self,
        weights: Weights,
        config: Config,
        plugins: LocalPlugins | None,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        """The one training loop of `fit` (``plugins=None``) and `fit_plugins`."""
        self.set_weights(weights)
        epochs = int(config.get("local_epochs", self.local_epochs))
        seed = int(config.get("seed", 0))
        if plugins is not None and plugins.optimizer is not None:
            optimizer = _build_optimizer(plugins.optimizer, self.model.parameters())
        else:
            optimizer = self.optimizer(self.model.parameters())
            if "lr" in config:
                for group in optimizer.param_groups:
                    group["lr"] = float(config["lr"])
        hooks: _PluginHooks | None = None
        if plugins is not None and plugins.names:
            choice = _describe_optimizer(optimizer)
            plugins.check_optimizer(choice)
            local = plugins.begin(weights.flat, tensors, state)
            hooks = _PluginHooks(self.model, weights.spec, plugins, local, choice)
        private = None
        if plugins is not None and plugins.dpsgd is not None:
            private = self._private(optimizer, plugins.dpsgd, epochs, state)
        generator = torch.Generator().manual_seed(seed)
        self.model.train()
        total_loss, total_examples, steps = 0.0, 0, 0
        with torch.random.fork_rng(devices=[]):
            # seeds DataLoader shuffling and dropout on the CPU, restored afterwards;
            # torch.manual_seed would also queue seeding of every accelerator backend,
            # which costs more than a small model's whole local epoch
            torch.default_generator.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed)
            if private is not None:
                with private:
                    total_loss, total_examples, steps = self._train_private(private, hooks)
            for _ in range(epochs if private is None else 0):
                total_loss, total_examples = 0.0, 0
                for inputs, targets in self._batches(self.train_data, generator, shuffle=True):
                    optimizer.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.model(inputs), targets)
                    loss.backward()
                    if hooks is not None:
                        hooks.after_backward()
                    optimizer.step()
                    steps += 1
                    total_loss += float(loss.detach()) * len(targets)
                    total_examples += len(targets)
        trained = self.get_weights()
        metrics: dict[str, Scalar] = {"loss": total_loss / max(total_examples, 1)}
        if hooks is None:
            return FitRes(trained, _num_examples(self.train_data), metrics), dict(state)
        outputs = hooks.finish(trained.flat, steps=steps)
        kept = outputs.state
        if private is not None:  # what this client has spent, reported and kept
            metrics["dpsgd.epsilon"] = private.plan.epsilon
            metrics["dpsgd.noise_multiplier"] = private.plan.noise_multiplier
            kept = {**kept, "dpsgd.history": history_to_vector(private.plan.history)}
        result = FitRes(
            trained,
            _num_examples(self.train_data),
            {**metrics, **outputs.metrics},
            outputs.tensors,
        )
        return result, kept

    def _private(
        self,
        optimizer: torch.optim.Optimizer,
        budget: DPSGDBudget,
        epochs: int,
        state: Mapping[str, Vector],
    ) -> PrivateTraining:
        """DP-SGD for this fit (the ``dpsgd`` plug-in): the plan after the kept history."""
        from fedloom.privacy.dpsgd import PrivateTraining, check_model  # fedloom[privacy]

        check_model(self.model)  # before the noise search: a refused model fails fast
        history = state.get("dpsgd.history")
        num_examples = _num_examples(self.train_data)
        if isinstance(self.train_data, DataLoader):  # Opacus' rate for a loader: 1 / batches
            batch_size = max(1, num_examples // max(len(self.train_data), 1))
        else:
            batch_size = self.batch_size
        plan = budget.plan(
            num_examples=num_examples,
            batch_size=batch_size,
            epochs=epochs,
            history=() if history is None else history_from_vector(history),
        )
        reduction = str(getattr(self.loss_fn, "reduction", "mean"))
        return PrivateTraining(self.model, optimizer, plan, loss_reduction=reduction)

    def _train_private(
        self, private: PrivateTraining, hooks: _PluginHooks | None
    ) -> tuple[float, int, int]:
        """The DP-SGD steps of a fit: total loss, examples seen, steps."""
        total_loss, total_examples, steps = 0.0, 0, 0
        for inputs, targets in self._private_batches(private):
            private.zero_grad()
            loss = self.loss_fn(private.model(inputs), targets)
            private.backward(loss)
            private.step(None if hooks is None else hooks.after_backward)
            steps += 1
            if len(targets):  # a Poisson batch may be empty: no loss to count
                total_loss += float(loss.detach()) * len(targets)
                total_examples += len(targets)
        return total_loss, total_examples, steps

    def _private_batches(
        self, private: PrivateTraining
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(self.train_data, DataLoader):
            inputs, targets = self.train_data
            for indices in private.batches(len(targets)):
                chosen = indices.to(self.device)
                yield inputs[chosen], targets[chosen]
            return
        for batch_inputs, batch_targets in private.loader_batches(self.train_data):
            yield batch_inputs.to(self.device), batch_targets.to(self.device)

    def evaluate(self, weights: Weights, config: Config) -> EvaluateRes:
        if self.test_data is None:
            raise ConfigError(
                "this TorchClient has no test data. Pass test=... or set "
                "fraction_evaluate=0 in the strategy.",
                field="test",
            )
        self.set_weights(weights)
        self.model.eval()  # safe: nn.Module.eval() switches to inference mode; nothing is evaluated
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
        inputs, targets = data  # already on the device (moved once, in __init__)
        count = len(targets)
        if not shuffle:
            for start in range(0, count, self.batch_size):
                yield (
                    inputs[start : start + self.batch_size],
                    targets[start : start + self.batch_size],
                )
            return
        order = torch.randperm(count, generator=generator).to(self.device)
        for start in range(0, count, self.batch_size):
            chosen = order[start : start + self.batch_size]
            yield inputs[chosen], targets[chosen]


class _PluginHooks:
    """The plug-ins of one fit, mapped onto the model's parameters through views.

    Each trainable parameter gets views of the flat vectors at its offset in the
    federated weights: the received weights (FedProx's anchor) and SCAFFOLD's
    ``c - c_i``. The received vector is read-only and only ever read.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: VectorSpec,
        plugins: LocalPlugins,
        local: LocalRound,
        optimizer: OptimizerChoice,
    ) -> None:
        self.plugins = plugins
        self._local = local
        self._optimizer = optimizer
        self._spec = spec
        parameters = dict(model.named_parameters())
        anchor = _read_only_tensor(local.start)
        control = None if local.control is None else _read_only_tensor(local.control)
        self.trainable = np.zeros(spec.size, dtype=bool)
        self._slots: list[_Slot] = []
        offset = 0
        for name, size in zip(spec.names, spec.sizes, strict=True):
            parameter = parameters.get(name)
            if parameter is not None and parameter.requires_grad:
                self.trainable[offset : offset + size] = True
                self._slots.append(
                    _Slot(
                        parameter=parameter,
                        offset=offset,
                        anchor=_view(anchor, offset, parameter),
                        control=None if control is None else _view(control, offset, parameter),
                        abs_grad_sum=torch.zeros_like(parameter) if plugins.elastic else None,
                    )
                )
            offset += size

    def after_backward(self) -> None:
        """Note each gradient's magnitude, then add the plug-ins' terms to it in place."""
        with torch.no_grad():
            for slot in self._slots:
                grad = slot.parameter.grad
                if grad is None:  # not used in this step's forward pass: the optimizer skips it
                    continue
                if slot.abs_grad_sum is not None:
                    slot.abs_grad_sum.add_(grad.abs())
                term = self.plugins.correction(
                    slot.parameter.detach(),
                    anchor=slot.anchor,
                    control=slot.control,
                    sign=torch.sign,
                )
                if term is not None:
                    grad.add_(term)

    def finish(self, trained: Vector, *, steps: int) -> PluginOutputs:
        """The plug-ins' tensors, metrics and new client state after `steps` local steps."""
        return self._local.finish(
            trained,
            steps=steps,
            optimizer=self._optimizer,
            trainable=self.trainable,
            abs_grad_sum=self._abs_grad_sum(),
        )

    def _abs_grad_sum(self) -> Vector | None:
        """The summed absolute gradients as a flat vector (zero for buffers), for elastic."""
        if not self.plugins.elastic:
            return None
        total = np.zeros(self._spec.size, dtype=self._spec.dtype)
        for slot in self._slots:
            assert slot.abs_grad_sum is not None
            values = slot.abs_grad_sum.detach().cpu().reshape(-1).numpy()
            total[slot.offset : slot.offset + values.size] = values
        return total


@dataclass(frozen=True, slots=True, kw_only=True)
class _Slot:
    parameter: nn.Parameter
    offset: int
    anchor: torch.Tensor
    control: torch.Tensor | None
    abs_grad_sum: torch.Tensor | None


def _view(flat: torch.Tensor, offset: int, parameter: nn.Parameter) -> torch.Tensor:
    """The part of `flat` at `offset` shaped, placed and typed like `parameter` (no copy on CPU)."""
    part = flat[offset : offset + parameter.numel()].view(parameter.shape)
    return part.to(device=parameter.device, dtype=parameter.dtype)


def _read_only_tensor(array: Vector) -> torch.Tensor:
    """A tensor sharing `array`'s memory, which must only ever be read."""
    with warnings.catch_warnings():  # torch warns that writing would be undefined; we never do
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _build_optimizer(
    choice: OptimizerChoice, parameters: Iterable[nn.Parameter]
) -> torch.optim.Optimizer:
    """The torch optimizer the ``optimizer`` plug-in chose."""
    if choice.kind == "adam":
        return torch.optim.Adam(parameters, lr=choice.lr)
    if choice.kind == "momentum":
        return torch.optim.SGD(parameters, lr=choice.lr, momentum=choice.momentum)
    return torch.optim.SGD(parameters, lr=choice.lr)


def _describe_optimizer(optimizer: torch.optim.Optimizer) -> OptimizerChoice:
    """What the plug-ins need to know of a torch optimizer: plain SGD, momentum, Adam, or other."""
    name = type(optimizer).__name__
    groups = optimizer.param_groups
    rates = {float(group["lr"]) for group in groups}
    if len(rates) != 1:
        return OptimizerChoice(kind=f"{name} with per-group learning rates", lr=min(rates))
    lr = rates.pop()
    if type(optimizer) is torch.optim.SGD:
        momenta = {float(group.get("momentum", 0.0)) for group in groups}
        nesterov = any(group.get("nesterov", False) for group in groups)
        damped = any(float(group.get("dampening", 0.0)) != 0 for group in groups)
        if len(momenta) == 1 and not nesterov:
            momentum = momenta.pop()
            if momentum == 0:
                return OptimizerChoice(kind="sgd", lr=lr)
            if not damped:
                return OptimizerChoice(kind="momentum", lr=lr, momentum=momentum)
        return OptimizerChoice(kind="SGD with nesterov, dampening or per-group momentum", lr=lr)
    if type(optimizer) is torch.optim.Adam:
        return OptimizerChoice(kind="adam", lr=lr)
    return OptimizerChoice(kind=name, lr=lr)


def _placed(model: nn.Module, device: torch.device) -> bool:
    """True when every tensor of `model` is on `device` already (``model.to`` would do nothing)."""
    # a plain walk over the module tree: named_modules' prefixes cost more than the check
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None and tensor.device != device:
                return False
        stack.extend(child for child in module._modules.values() if child is not None)
    return True


def _on_device(data: Batches, device: torch.device) -> Batches:
    """Tensor data moved to `device` once (a no-op when it is there); loaders move per batch."""
    if isinstance(data, DataLoader):
        return data
    inputs, targets = data
    return inputs.to(device), targets.to(device)


def _check_data(data: Batches, field: str) -> Batches:
    if isinstance(data, DataLoader):
        return data
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(part, torch.Tensor) for part in data)
    ):
        # samples along the first dimension (a 0-d tensor holds none)
        count, labels = (part.shape[0] if part.dim() else 0 for part in data)
        if count != labels or labels == 0:
            raise ConfigError(
                f"{field} has {count} inputs and {labels} targets; expected the same, "
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
