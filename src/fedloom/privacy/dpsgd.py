"""DP-SGD for torch models through Opacus: per-example clipping, noise, Poisson sampling.

`check_model` refuses layers that break per-example privacy (BatchNorm mixes the
examples of a batch) using Opacus' ``ModuleValidator``, with a fedloom error
that names the layer and the fix. `PrivateTraining` wraps a model and optimizer
for one fit of a `DPSGDPlan`: Opacus' ``GradSampleModule`` computes per-example
gradients, its ``DPOptimizer`` clips them and adds the noise, and its
``UniformWithReplacementSampler`` draws Poisson-sampled batches. Closing it
removes Opacus' hooks, so the model is as it was (clients may share one model).

Randomness: sampling and noise come from a generator seeded from the operating
system's entropy, never from the fit's seed, which the server chooses (a server
that knew the noise could subtract it). Opacus' ``secure_mode`` needs
torchcsprng, which is not installed; torch's generator is not a cryptographic one.

Needs torch and Opacus: ``pip install fedloom[privacy]``.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedloom.errors import ConfigError
from fedloom.privacy.local import DPSGDPlan

try:
    from opacus import GradSampleModule
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from opacus.validators import ModuleValidator
except ImportError as exc:  # an optional extra
    raise ImportError("DP-SGD needs Opacus: pip install 'fedloom[privacy]'") from exc

__all__ = ["PrivateTraining", "check_model"]

_BATCHNORM = (
    "BatchNorm mixes the examples of a batch, so no example has a gradient of its own",
    "replace it with nn.GroupNorm (e.g. nn.GroupNorm(min(32, C), C) for C channels), or "
    "convert the model with opacus.validators.ModuleValidator.fix(model)",
)


def check_model(model: nn.Module) -> None:
    """Refuse a model with layers DP-SGD cannot train privately.

    Raises:
        ConfigError: naming each offending layer (its name in the model), why, and
            the fix (BatchNorm -> GroupNorm).

    Example:
        >>> check_model(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
        Traceback (most recent call last):
        ...
        fedloom.errors.ConfigError: local DP (DP-SGD) cannot train layer '1' (BatchNorm1d): ...
    """
    if not _problems(model):
        return
    offending = [
        (name, type(module).__name__)
        for name, module in model.named_modules()
        if next(module.children(), None) is None and _problems(module)  # leaves only
    ]
    if not offending:  # a model-wide problem (e.g. no trainable layer): Opacus' own words
        detail = "; ".join(str(problem) for problem in _problems(model))
        raise ConfigError(f"local DP (DP-SGD) cannot train this model: {detail}", field="model")
    described = ", ".join(f"'{name}' ({kind})" for name, kind in offending)
    name, kind = offending[0]
    if "BatchNorm" in kind:
        why, fix = _BATCHNORM
    else:
        why = "Opacus cannot compute per-example gradients for it"
        fix = "replace it with a layer Opacus supports (opacus.validators.ModuleValidator)"
    plural = "s" if len(offending) > 1 else ""
    raise ConfigError(
        f"local DP (DP-SGD) cannot train layer{plural} {described}: {why}. Fix: {fix}.",
        field="model",
        value=name,
    )


def _problems(module: nn.Module) -> list[Exception]:
    """What Opacus' validator finds wrong with `module`'s layers (in training mode, as DP-SGD
    trains it; its mode is restored)."""
    training = module.training
    module.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(ModuleValidator.validate(module, strict=False))
    finally:
        module.train(training)


class PrivateTraining:
    """One fit of DP-SGD over `model` and `optimizer`, as `plan` says; close it afterwards.

    Use `model` for the forward pass, `batches` for Poisson-sampled example indices,
    and `step` instead of ``optimizer.step()``.

    Args:
        model: the client's model (checked with `check_model`).
        optimizer: its local optimizer, built over ``model.parameters()``.
        plan: the fit's noise, sampling and steps (`DPSGDBudget.plan`).
        loss_reduction: ``"mean"`` or ``"sum"``, as the loss function reduces a batch.

    Raises:
        ConfigError: a layer DP-SGD cannot train, or a loss that does not reduce
            by mean or sum.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: DPSGDPlan,
        *,
        loss_reduction: str = "mean",
    ) -> None:
        check_model(model)
        if loss_reduction not in ("mean", "sum"):
            raise ConfigError(
                f"DP-SGD needs a loss that averages or sums over the batch, got reduction "
                f"{loss_reduction!r}. Use e.g. nn.CrossEntropyLoss() (reduction='mean').",
                field="loss_fn",
                value=loss_reduction,
            )
        self.plan = plan
        self._generator = torch.Generator().manual_seed(secrets.randbits(63))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "secure RNG turned off": see the module docstring
            self.model = GradSampleModule(model, loss_reduction=loss_reduction)
            self.optimizer = DPOptimizer(
                optimizer,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.clip_norm,
                expected_batch_size=plan.expected_batch_size,
                loss_reduction=loss_reduction,
                generator=self._generator,
            )

    def batches(self, num_examples: int) -> Iterator[torch.Tensor]:
        """The fit's ``plan.steps`` batches of example indices, each example in each with
        probability ``plan.sample_rate`` (a batch may be empty)."""
        sampler = UniformWithReplacementSampler(
            num_samples=num_examples,
            sample_rate=self.plan.sample_rate,
            generator=self._generator,
            steps=self.plan.steps,
        )
        for indices in sampler:
            yield torch.as_tensor(indices, dtype=torch.long)

    def loader_batches(
        self, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``plan.steps`` Poisson-sampled batches of `loader`'s dataset (Opacus' DPDataLoader)."""
        private = DPDataLoader.from_data_loader(loader, generator=self._generator)
        steps = 0
        while steps < self.plan.steps:
            for batch in private:
                yield batch
                steps += 1
                if steps == self.plan.steps:
                    return

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, which also computes the per-example gradients."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks on inputs without grad
            torch.autograd.backward(loss)

    def step(self, after_noise: Callable[[], Any] | None = None) -> None:
        """Clip each example's gradient, add the noise, then run `after_noise` and the step.

        `after_noise` may adjust the privatized gradients (client plug-ins' terms that do
        not read the data, such as FedProx's): what it adds is not clipped or noised.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full backward hooks on inputs without grad
            if self.optimizer.pre_step():
                if after_noise is not None:
                    after_noise()
                self.optimizer.original_optimizer.step()

    def zero_grad(self) -> None:
        """Clear the gradients and per-example gradients."""
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks, per-example gradients and sums from the model."""
        self.optimizer.zero_grad(set_to_none=True)
        module = self.model.to_standard_module()
        for parameter in module.parameters():  # DPOptimizer's running sum, left behind
            if hasattr(parameter, "summed_grad"):
                del parameter.summed_grad

    def __enter__(self) -> PrivateTraining:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
