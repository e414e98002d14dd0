"""The vectorized engine: many `TorchClient` fits of one architecture as one batched computation.

K clients that train the same network with the same loss and optimizer become
one set of stacked parameters ``[K, ...]``; ``torch.func.vmap`` over
``grad_and_value(functional_call(...))`` computes every client's gradient in one
call per step, and the optimizer update (SGD with momentum, dampening, weight
decay and Nesterov; Adam and AdamW with AMSGrad) is applied to the stacked
tensors exactly as ``torch.optim`` applies it to one model. Each client keeps
its own batches: `TorchClient`'s seeded shuffling is reproduced, batches are
padded to a common size and masked, so the loss is each client's mean over its
real samples, and a client whose steps are done stops moving. The results are
`TorchClient.fit`'s: the same weights (to float rounding), ``num_examples`` and
``loss`` metric.

Clients are trained a chunk at a time, all steps of a chunk before the next, so
one chunk's parameters, gradients and optimizer state stay in the CPU's cache.
What cannot be batched faithfully is refused by `VectorizedFit.unsupported`
with the reason, and runs on the per-client path.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedloom.client.torch import TorchClient
from fedloom.core import ClientId, Failure, FitIns, FitRes, Scalar, VectorSpec, Weights
from fedloom.core.dispatch import run_task
from fedloom.core.protocols import Client
from fedloom.core.weights import DeferredWeights
from fedloom.errors import ConfigError
from fedloom.simulation._vectorized_lowrank import LossGradient, LowRankSGD, low_rank_layers

__all__ = ["VectorizedFit"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = {"cpu": 8 << 20, "accelerator": 1 << 30}
"""Parameter bytes trained together: a few MiB stay in a CPU core's cache; a GPU takes all."""

_LOSSES: tuple[type[nn.Module], ...] = (
    nn.CrossEntropyLoss,
    nn.NLLLoss,
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)
"""Losses whose ``reduction="mean"`` is the mean of their ``reduction="none"`` elements."""

_RANDOM_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.RReLU,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """One client's fit, checked and described for batching."""

    client: TorchClient
    ins: FitIns
    group: tuple[object, ...]
    """Clients with equal groups train in one batched computation."""
    optimizer: OptimizerRule
    inputs: torch.Tensor
    targets: torch.Tensor
    count: int
    """How many training samples (``len(targets)``)."""
    epochs: int
    seed: int


class VectorizedFit:
    """Trains many `TorchClient` fits at once with ``torch.func``, when their models allow it.

    Works for networks whose training is a pure function of parameters and
    data: linear models, MLPs, CNNs without batch statistics. Refused, with a
    reason from `unsupported`: other client types, client plug-ins, data given
    as a DataLoader, models with buffers (BatchNorm statistics) or random
    layers (dropout), losses other than the common mean-reduced ones, and
    optimizers other than SGD, Adam and AdamW with one parameter group.

    Args:
        device: where the batched computation runs ("cpu", "cuda", "cuda:1", ...).

    Raises:
        ConfigError: `device` names no device torch can use here.

    Example:
        >>> import torch
        >>> from fedloom.client import TorchClient
        >>> from fedloom.core import FitIns
        >>> model = torch.nn.Linear(3, 2)
        >>> data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> client = TorchClient(model, data, batch_size=4)
        >>> ins = FitIns(weights=client.get_weights(), config={"seed": 1})
        >>> engine = VectorizedFit()
        >>> engine.unsupported(client, ins) is None
        True
        >>> results = engine.fit({"a": (client, ins), "b": (client, ins)})
        >>> results["a"].num_examples
        8
    """

    def __init__(self, *, device: str = "cpu") -> None:
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(
                f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'.",
                field="device",
                value=device,
            ) from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} was asked for, but torch sees no CUDA GPU here. "
                "Use device='cpu', or install a CUDA build of torch on a machine with a GPU.",
                field="device",
                value=device,
            )
        kind = "cpu" if self.device.type == "cpu" else "accelerator"
        self._chunk_bytes = _CHUNK_BYTES[kind]
        self._memory = _Memory()
        self._reported: set[str] = set()
        self._planner = _Planner()
        self._pending: dict[int, tuple[Client, FitIns, _Plan]] = {}

    def unsupported(self, client: Client, ins: FitIns) -> str | None:
        """Why this fit cannot be batched, or None when it can.

        Args:
            client: the client built for the task.
            ins: the task.

        Returns:
            A sentence naming what stands in the way (and how to lift it), or None.
        """
        plan = self._planner.plan(client, ins)
        if isinstance(plan, str):
            return plan
        self._pending[id(client)] = (client, ins, plan)  # fit() takes it from here
        return None

    def fit(
        self, jobs: Mapping[ClientId, tuple[Client, FitIns]]
    ) -> dict[ClientId, FitRes | Failure]:
        """Train every job; supported ones batched by architecture, the rest one by one.

        Args:
            jobs: the client built for each task, and the task.

        Returns:
            Each client's result, or a `Failure` naming what went wrong, in the order of `jobs`.
        """
        results: dict[ClientId, FitRes | Failure] = {}
        groups: dict[tuple[object, ...], dict[ClientId, _Plan]] = {}
        for client_id, (client, ins) in jobs.items():
            pending = self._pending.get(id(client))
            if pending is not None and pending[0] is client and pending[1] is ins:
                plan: _Plan | str = pending[2]
            else:
                plan = self._planner.plan(client, ins)
            if isinstance(plan, str):
                results[client_id] = self._one(client_id, client, ins)
            else:
                groups.setdefault(plan.group, {})[client_id] = plan
        self._pending.clear()
        for plans in groups.values():
            try:
                results.update(self._train_group(plans))
            except Exception as exc:  # the model cannot be batched after all: one by one
                reason = (
                    f"the batched computation raised {type(exc).__name__}: {exc}; these "
                    "clients train one by one"
                )
                if reason not in self._reported:
                    self._reported.add(reason)
                    logger.warning("vectorized engine: %s", reason)
                for client_id, plan in plans.items():
                    results[client_id] = self._one(client_id, plan.client, plan.ins)
        return {client_id: results[client_id] for client_id in jobs}

    def _one(self, client_id: ClientId, client: Client, ins: FitIns) -> FitRes | Failure:
        reply, _ = run_task(client, ins, {}, client_id=client_id)
        assert isinstance(reply, FitRes | Failure)
        return reply

    def _train_group(self, plans: Mapping[ClientId, _Plan]) -> dict[ClientId, FitRes]:
        """Train clients of one architecture, loss and optimizer; results share one buffer."""
        first = next(iter(plans.values()))
        model = first.client.model
        loss_fn = _per_element(first.client.loss_fn)
        parameters = dict(model.named_parameters())
        names = list(parameters)
        shapes = [tuple(parameters[name].shape) for name in names]
        dtype = parameters[names[0]].dtype
        spec = VectorSpec(
            names=tuple(names),
            shapes=tuple(shapes),
            dtype=str(torch.empty(0, dtype=dtype).numpy().dtype),
        )
        order = sorted(plans, key=lambda cid: -_steps(plans[cid]))  # similar lengths share a chunk
        schedules = _Schedules.of([plans[cid] for cid in order])
        starts = [plans[cid].ins.weights for cid in order]
        steps = schedules.index.shape[1]
        model.train()
        layers = _low_rank(model, first.optimizer, starts)
        if layers is not None and steps:
            inputs, targets, mask, _ = _stack_data(schedules, self.device, dtype, self._memory)
            lr = -first.optimizer.lr if first.optimizer.maximize else first.optimizer.lr
            initial = {
                name: torch.from_numpy(starts[0][name].copy()).to(self.device, dtype)
                for name in names
            }
            memory = self._memory
            held: list[str] = ["inputs"]  # the factors view the stacked inputs

            def allocate(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
                if like.device.type != "cpu":
                    return like.new_empty(shape)
                if name != "shared":  # a factor: kept while the results live
                    held.append(name)
                return memory.scratch(f"low-rank.{name}", shape, like.dtype)

            trainer = LowRankSGD(layers, initial, lr, allocate)
            weights = loss_fn.step_weights(targets, mask)
            closed_form = loss_fn.closed_form(targets)
            losses = trainer.train(inputs, targets, weights, loss_fn.weighted, closed_form)
            block = _LowRankRows(trainer, spec, starts[0].flat, memory)
            for name in held:
                memory.hold(name if name == "inputs" else f"low-rank.{name}", block)
            rows: Callable[[int], Weights] = lambda row: DeferredWeights(spec, block, row)  # noqa: E731
        else:
            buffer = self._memory.result((len(order), spec.size), dtype, self.device)
            losses = torch.zeros(len(order), steps, dtype=dtype, device=self.device)
            _load_rows(buffer, starts, spec)
            step = _batched_step(model, loss_fn)
            trainable = [name for name in names if parameters[name].requires_grad]
            per_client = max(1, spec.size * buffer.element_size())
            chunk = max(1, self._chunk_bytes // per_client)
            for start in range(0, len(order), chunk):
                part = schedules.part(start, start + chunk)
                done = _train_chunk(
                    step,
                    _views(buffer[start : start + chunk], spec),
                    trainable,
                    part,
                    first.optimizer,
                    self._memory,
                )
                losses[start : start + len(done), : done.shape[1]] = done
            flat = buffer.cpu().numpy()
            if buffer.device.type == "cpu":
                self._memory.recycle(flat, buffer)
            rows = lambda row: Weights.from_flat(spec, flat[row])  # noqa: E731
        mean_losses = schedules.mean_losses(losses.cpu().numpy().astype(np.float64))
        results: dict[ClientId, FitRes] = {}
        for row, client_id in enumerate(order):
            metrics: dict[str, Scalar] = {"loss": mean_losses[row]}
            results[client_id] = FitRes(rows(row), plans[client_id].count, metrics)
        return results


class _LowRankRows:
    """The results of a low-rank round as factors: a `DeferredRows` block (see LowRankSGD).

    The rows (every client's weights) are written only when one is read; the
    server's weighted mean is one product of the stacked factors; a row is
    proven finite from a bound on its factors.
    """

    def __init__(
        self, trainer: LowRankSGD, spec: VectorSpec, start: np.ndarray, memory: _Memory
    ) -> None:
        self._trainer = trainer
        self._spec = spec
        self._start = start
        self._memory = memory
        self._rows: np.ndarray | None = None
        self._finite: list[bool] | None = None
        tensor = trainer.tensors()[0]  # all of one dtype, on one device
        self._dtype, self._device, self._count = tensor.dtype, tensor.device, len(tensor)

    def rows(self) -> np.ndarray:
        if self._rows is None:
            shape = (self._count, self._spec.size)
            buffer = self._memory.result(shape, self._dtype, self._device)
            self._trainer.write_weights(_views(buffer, self._spec))
            flat = buffer.cpu().numpy()
            if buffer.device.type == "cpu":
                self._memory.recycle(flat, buffer)
            self._rows = flat
        return self._rows

    def finite(self, row: int) -> bool:
        if self._finite is None:
            self._finite = self._trainer.proven_finite().tolist()
        return self._finite[row]

    def weighted_difference(
        self, rows: Sequence[int], scales: Sequence[float], base: np.ndarray
    ) -> np.ndarray:
        factors = self._trainer.factors
        index: torch.Tensor | None = None
        if len(rows) == self._count and len(set(rows)) == self._count:  # every row once
            scale = torch.zeros(self._count, dtype=self._dtype)
            scale[torch.tensor(rows)] = torch.tensor(scales, dtype=self._dtype)
        else:
            index = torch.tensor(rows, device=self._device)
            scale = torch.tensor(scales, dtype=self._dtype)
        scale = scale.to(self._device)
        total = float(sum(scales))
        out: np.ndarray = (self._start - base) * self._start.dtype.type(total)
        offset = 0
        for name, size in zip(self._spec.names, self._spec.sizes, strict=True):
            part = out[offset : offset + size]
            if name in factors:
                delta = self._trainer.weighted_delta(name, scale, index)
                part += delta.cpu().numpy().reshape(-1)
            else:  # kept whole per client (a bias, a narrow layer): sum_k s_k (x_k - base)
                values = self._trainer.whole[name]
                chosen = values if index is None else values[index]
                summed = (scale @ chosen.reshape(len(scale), -1)).cpu().numpy()
                part[...] = summed - base[offset : offset + size] * base.dtype.type(total)
            offset += size
        return out


@dataclass(frozen=True, slots=True)
class _Schedules:
    """Clients' batches as their `TorchClient`s draw them: sample indices per client and step.

    ``index[k, step]`` holds client k's indices at that step, padded with index
    0 (the last batch of an epoch, a smaller batch size, the steps after a
    shorter client's last); ``counts[k, step]`` says how many are real.
    """

    inputs: list[torch.Tensor]
    targets: list[torch.Tensor]
    index: torch.Tensor
    """``[clients, steps, batch]`` sample indices."""
    counts: torch.Tensor
    """``[clients, steps]`` real samples at each step (0 once a client is done)."""
    per_epoch: list[int]
    steps: list[int]

    @classmethod
    def of(cls, plans: Sequence[_Plan]) -> _Schedules:
        """The plans' batches: one shuffle per epoch, seeded with the plan's seed."""
        sizes = [plan.client.batch_size for plan in plans]
        per_epoch = [math.ceil(plan.count / size) for plan, size in zip(plans, sizes, strict=True)]
        epochs = [max(0, plan.epochs) for plan in plans]
        steps = [count * number for count, number in zip(per_epoch, epochs, strict=True)]
        generator = torch.Generator()  # reseeded per client: as a fresh one, without the cost
        draws: list[torch.Tensor] = []  # one shuffle per epoch, as TorchClient's loop draws them
        for plan, number in zip(plans, epochs, strict=True):
            generator.manual_seed(plan.seed)
            for _ in range(number):
                draws.append(torch.randperm(plan.count, generator=generator))
        clients, batch, longest = len(plans), max(sizes, default=1), max(steps, default=0)
        alike = len({(plan.count, size) for plan, size in zip(plans, sizes, strict=True)}) == 1
        if alike and len(set(steps)) == 1 and longest:
            # every client alike (the usual simulation): whole tensors, no per-client writes
            count, length = plans[0].count, per_epoch[0]
            drawn = torch.stack(draws).view(clients, epochs[0], count)
            padded = torch.zeros(clients, epochs[0], length * batch, dtype=torch.int64)
            padded[:, :, :count] = drawn  # each epoch's last batch padded with index 0
            pattern = torch.full((epochs[0], length), batch, dtype=torch.int64)
            pattern[:, -1] = count - (length - 1) * batch
            counts = pattern.view(1, longest).repeat(clients, 1)
            index = padded.view(clients, longest, batch)
        else:
            index = torch.zeros(clients, longest, batch, dtype=torch.int64)
            counts = torch.zeros(clients, longest, dtype=torch.int64)
            used = 0
            for row, plan in enumerate(plans):
                size, count, length = sizes[row], plan.count, per_epoch[row]
                if not steps[row]:
                    continue
                own = torch.zeros(epochs[row], length * size, dtype=torch.int64)
                own[:, :count] = torch.stack(draws[used : used + epochs[row]])
                used += epochs[row]
                index[row, : steps[row], :size] = own.view(steps[row], size)
                per_step = counts[row, : steps[row]].view(epochs[row], length)
                per_step.fill_(size)
                per_step[:, -1] = count - (length - 1) * size  # each epoch's last batch
        return cls(
            [plan.inputs for plan in plans],
            [plan.targets for plan in plans],
            index,
            counts,
            per_epoch,
            steps,
        )

    def part(self, start: int, stop: int) -> _Schedules:
        """Clients ``start:stop``, cut to their steps (clients come sorted by steps, longest
        first)."""
        longest = max(self.steps[start:stop], default=0)
        return _Schedules(
            self.inputs[start:stop],
            self.targets[start:stop],
            self.index[start:stop, :longest].contiguous(),
            self.counts[start:stop, :longest].contiguous(),
            self.per_epoch[start:stop],
            self.steps[start:stop],
        )

    def mean_losses(self, losses: np.ndarray) -> list[float]:
        """Each client's last-epoch loss per sample from its ``[clients, steps]`` step losses,
        summed batch by batch as `TorchClient` sums it."""
        counts = self.counts.numpy().astype(np.float64)
        totals = np.zeros(len(self.steps), dtype=np.float64)
        examples = np.zeros(len(self.steps), dtype=np.float64)
        if len(set(self.steps)) == 1 and len(set(self.per_epoch)) == 1:
            steps, length = self.steps[0], self.per_epoch[0]
            for column in range(max(0, steps - length), steps):  # every client at once
                totals += losses[:, column] * counts[:, column]
                examples += counts[:, column]
        else:
            for row, (steps, length) in enumerate(zip(self.steps, self.per_epoch, strict=True)):
                for column in range(max(0, steps - length), steps):
                    totals[row] += losses[row, column] * counts[row, column]
                    examples[row] += counts[row, column]
        means: list[float] = (totals / np.maximum(examples, 1)).tolist()
        return means


def _steps(plan: _Plan) -> int:
    return max(0, plan.epochs) * math.ceil(plan.count / plan.client.batch_size)


StepFn = Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]]


def _batched_step(model: nn.Module, loss_fn: _ElementLoss) -> StepFn:
    """``(trainable, frozen, inputs, targets, mask) -> (gradients, losses)`` over clients."""

    def client_loss(
        trainable: dict[str, torch.Tensor],
        frozen: dict[str, torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        outputs = functional_call(model, {**trainable, **frozen}, (inputs,))
        return loss_fn(outputs, targets, mask)

    return vmap(grad_and_value(client_loss))


def _train_chunk(
    step: StepFn,
    views: dict[str, torch.Tensor],
    trainable: Sequence[str],
    schedules: _Schedules,
    rule: OptimizerRule,
    memory: _Memory,
) -> torch.Tensor:
    """Run every step of a chunk of clients on `views`, in place; each client's loss per step."""
    clients, steps = schedules.counts.shape
    parameters = {name: views[name] for name in trainable}
    first = next(iter(views.values()))
    device = first.device
    losses = torch.zeros(clients, steps, dtype=first.dtype, device=device)
    if not steps:
        return losses
    inputs, targets, mask, active = _stack_data(schedules, device, losses.dtype, memory)
    frozen = {name: value for name, value in views.items() if name not in parameters}
    state = rule.init(parameters)
    for index in range(steps):
        gradients, loss = step(
            parameters, frozen, inputs[:, index], targets[:, index], mask[:, index]
        )
        losses[:, index] = loss.detach()
        rows = active[index]
        if rows is None:
            rule.step(parameters, gradients, state, index + 1)
        else:  # clients whose steps are done keep their parameters and optimizer state
            kept = [(tensor, tensor[~rows].clone()) for tensor in _tensors(parameters, state)]
            rule.step(parameters, gradients, state, index + 1)
            for tensor, saved in kept:
                tensor[~rows] = saved
    return losses


def _tensors(
    parameters: dict[str, torch.Tensor], state: dict[str, dict[str, torch.Tensor]]
) -> Iterator[torch.Tensor]:
    yield from parameters.values()
    for slots in state.values():
        yield from slots.values()


def _stack_data(
    schedules: _Schedules, device: torch.device, dtype: torch.dtype, memory: _Memory
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Every client's batches gathered once into ``[clients, steps, batch, ...]``, with masks.

    Padding repeats a real sample (so every forward pass sees finite values)
    with mask 0; ``active[step]`` is None when every client has that step.
    """
    clients, steps, size = schedules.index.shape
    index = schedules.index.view(clients, steps * size)
    counts = schedules.counts
    sample_inputs, sample_targets = schedules.inputs[0], schedules.targets[0]
    inputs = memory.scratch(
        "inputs", (clients, steps * size, *sample_inputs.shape[1:]), sample_inputs.dtype
    )
    targets = memory.scratch(
        "targets", (clients, steps * size, *sample_targets.shape[1:]), sample_targets.dtype
    )
    gathered = _gather_rows(schedules.inputs, index, inputs) and _gather_rows(
        schedules.targets, index, targets
    )
    pairs = zip(schedules.inputs, schedules.targets, strict=True)
    for row, (own_inputs, own_targets) in enumerate([] if gathered else pairs):
        if own_inputs.device.type == "cpu":  # gathered straight into place
            torch.index_select(own_inputs, 0, index[row], out=inputs[row])
            torch.index_select(own_targets, 0, index[row], out=targets[row])
        else:
            rows = index[row].to(own_inputs.device)
            inputs[row] = torch.index_select(own_inputs, 0, rows).cpu()
            targets[row] = torch.index_select(own_targets, 0, rows).cpu()
    mask = (torch.arange(size) < counts.unsqueeze(-1)).to(dtype)
    has_step = counts > 0
    active: list[torch.Tensor | None] = [
        None if bool(has_step[:, number].all()) else has_step[:, number].to(device)
        for number in range(steps)
    ]
    shape = (clients, steps, size)
    return (
        inputs.view(*shape, *sample_inputs.shape[1:]).to(device),
        targets.view(*shape, *sample_targets.shape[1:]).to(device),
        mask.to(device),
        active,
    )


def _gather_rows(tensors: Sequence[torch.Tensor], index: torch.Tensor, out: torch.Tensor) -> bool:
    """``out[k] = tensors[k][index[k]]`` in one call when every tensor is rows of one tensor.

    Clients' data are often row ranges of one dataset (a partition's views);
    their rows are then taken from it at once instead of client by client.
    Returns False (and writes nothing) when the tensors are not such views.
    """
    first = tensors[0]
    base = first if first._base is None else first._base
    if base.device.type != "cpu" or base.dim() == 0 or base.dtype != out.dtype:
        return False
    row = math.prod(base.shape[1:])
    if not base.is_contiguous() or row == 0:
        return False
    starts: list[int] = []
    for tensor in tensors:
        owner = tensor if tensor._base is None else tensor._base
        if owner is not base or tensor.shape[1:] != base.shape[1:] or not tensor.is_contiguous():
            return False
        offset = tensor.storage_offset() - base.storage_offset()
        if offset % row:
            return False
        starts.append(offset // row)
    rows = index + torch.tensor(starts, dtype=index.dtype).unsqueeze(1)
    torch.index_select(base, 0, rows.view(-1), out=out.view(-1, *base.shape[1:]))
    return True


class _Memory:
    """Memory the engine reuses from round to round, so it is not faulted in afresh each time.

    Scratch tensors (the stacked batches) live only during a fit. A result
    buffer is handed out again only after every result that views it is gone:
    `recycle` files it when its numpy array (the base of every result's
    weights) is garbage collected.
    """

    _KEEP = 2

    def __init__(self) -> None:
        self._scratch: dict[str, torch.Tensor] = {}
        self._free: list[torch.Tensor] = []

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A CPU tensor of `shape`, reused by the next call with the same `name`."""
        size = math.prod(shape)
        kept = self._scratch.get(name)
        if kept is None or kept.dtype != dtype or kept.numel() < size:
            kept = self._scratch[name] = torch.empty(size, dtype=dtype)
        return kept[:size].view(shape)

    def result(
        self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A tensor for a round's results: a recycled one when one fits."""
        for index, buffer in enumerate(self._free):
            if buffer.shape == shape and buffer.dtype == dtype and buffer.device == device:
                return self._free.pop(index)
        return torch.empty(shape, dtype=dtype, device=device)

    def recycle(self, array: np.ndarray, buffer: torch.Tensor) -> None:
        """Take `buffer` back once `array` (its numpy view) is garbage collected."""
        weakref.finalize(array, self._file, buffer)

    def hold(self, name: str, owner: object) -> None:
        """Keep scratch `name` out of reuse while `owner` (which views it) lives."""
        tensor = self._scratch.pop(name, None)
        if tensor is not None:
            weakref.finalize(owner, self._give_back, name, tensor)

    def _give_back(self, name: str, tensor: torch.Tensor) -> None:
        kept = self._scratch.get(name)
        if kept is None or kept.numel() < tensor.numel():
            self._scratch[name] = tensor

    def _file(self, buffer: torch.Tensor) -> None:
        if len(self._free) < self._KEEP:
            self._free.append(buffer)


def _views(rows: torch.Tensor, spec: VectorSpec) -> dict[str, torch.Tensor]:
    """Each tensor of `spec` as a ``[clients, *shape]`` view of the flat rows (no copy)."""
    views: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape, size in zip(spec.names, spec.shapes, spec.sizes, strict=True):
        views[name] = rows[:, offset : offset + size].view(len(rows), *shape)
        offset += size
    return views


def _load_rows(buffer: torch.Tensor, weights: Sequence[Weights], spec: VectorSpec) -> None:
    """Copy each client's starting weights into its row; one broadcast when they are shared."""
    first = weights[0]
    if all(w is first for w in weights) and first.spec.names == spec.names:
        buffer.copy_(_as_tensor(first.flat).expand_as(buffer))
        return
    for row, received in enumerate(weights):
        if received.spec.names == spec.names:
            buffer[row].copy_(_as_tensor(received.flat))
            continue
        views = _views(buffer[row : row + 1], spec)
        for name in received:
            views[name][0].copy_(torch.from_numpy(received[name].copy()))


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing `array`'s memory, which must only ever be read."""
    with warnings.catch_warnings():  # torch warns that writing would be undefined; we never do
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class _ElementLoss:
    """A mean-reduced loss as the masked mean of its per-element values (one client, one batch)."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.loss_fn = copy.copy(loss_fn)
        setattr(self.loss_fn, "reduction", "none")  # noqa: B010 (nn.Module types attributes loosely)
        self.ignore_index: int | None = getattr(loss_fn, "ignore_index", None)

    def __call__(
        self, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        values = self.loss_fn(outputs, targets)
        weight = mask.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
        if self.ignore_index is not None and not targets.is_floating_point():
            weight = weight * (targets != self.ignore_index).to(weight.dtype)
        total: torch.Tensor = (values * weight).sum() / weight.sum().clamp_min(1)
        return total

    def step_weights(self, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each sample's weight in its client's mean loss at its step, for every step at once.

        ``mask / count`` (ignored targets count as padding), ``[clients, steps, batch, ...]``
        from ``[clients, steps, batch, ...]`` targets and a ``[clients, steps, batch]`` mask.
        """
        weight = mask
        if self.ignore_index is not None and not targets.is_floating_point():
            trailing = (1,) * (targets.dim() - mask.dim())
            weight = mask.view(*mask.shape, *trailing) * (targets != self.ignore_index).to(
                mask.dtype
            )
        count = weight.flatten(2).sum(-1).clamp_min(1)
        return weight / count.view(*count.shape, *(1,) * (weight.dim() - 2))

    def weighted(
        self, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Each client's mean loss, ``[clients]``, from one step's ``[clients, batch, ...]``
        outputs and targets and its `step_weights`."""
        clients, batch = weights.shape[:2]
        values = self.loss_fn(outputs.flatten(0, 1), targets.flatten(0, 1))
        values = values.view(clients, batch, -1)
        weight = weights.reshape(clients, batch, -1)
        total: torch.Tensor = (values * weight).sum((1, 2))
        if weight.shape[-1] != values.shape[-1]:  # one weight per sample: the mean of its elements
            total = total / values.shape[-1]
        return total

    def closed_form(self, targets: torch.Tensor) -> LossGradient | None:
        """`weighted` with its gradient, without autograd, when the loss has a closed form.

        That is cross-entropy over class indices (``[clients, steps, batch]`` targets)
        without label smoothing: torch's log-softmax is slow on a few classes, and a
        step then builds no graph for its loss. None for every other loss.
        """
        loss = self.loss_fn
        if (
            type(loss) is not nn.CrossEntropyLoss
            or getattr(loss, "label_smoothing", 0.0) != 0
            or loss.weight is not None
            or targets.is_floating_point()
            or targets.dim() != 3
        ):
            return None
        return self._cross_entropy

    def _cross_entropy(
        self, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each client's weighted cross-entropy, ``[clients]``, and its gradient with respect
        to the ``[clients, batch, classes]`` logits: ``weight * (softmax - one_hot)``."""
        classes = targets.unsqueeze(-1)
        if self.ignore_index is not None:  # weighted 0 already: any class index will do
            classes = classes.masked_fill(classes == self.ignore_index, 0)
        top = outputs.amax(-1, keepdim=True)
        exponentials = (outputs - top).exp_()
        total = exponentials.sum(-1, keepdim=True)
        chosen = outputs.gather(-1, classes).sub_(top).sub_(total.log())  # log-probabilities
        loss = (chosen.squeeze(-1) * weights).sum(1).neg_()
        gradient = exponentials.div_(total)
        gradient.scatter_add_(-1, classes, torch.full_like(chosen, -1.0))
        return loss, gradient.mul_(weights.unsqueeze(-1))


def _low_rank(
    model: nn.Module, rule: OptimizerRule, starts: Sequence[Weights]
) -> list[tuple[str, nn.Module]] | None:
    """The model's layers when plain SGD from one shared start can take the low-rank form."""
    plain = rule.kind == "sgd" and rule.momentum == 0 and rule.weight_decay == 0
    if not plain or not all(start is starts[0] for start in starts):
        return None
    return low_rank_layers(model)


def _per_element(loss_fn: nn.Module) -> _ElementLoss:
    return _ElementLoss(loss_fn)


class _Planner:
    """Describes fits for batching; what depends only on a model or optimizer is kept per model.

    Clients built by one process for one round often share their model object
    (a client builds it once and reloads the weights): its checks then run once.
    """

    def __init__(self) -> None:
        self._models: weakref.WeakKeyDictionary[nn.Module, _ModelFacts | str] = (
            weakref.WeakKeyDictionary()
        )
        self._losses: weakref.WeakKeyDictionary[nn.Module, tuple[object, ...] | str] = (
            weakref.WeakKeyDictionary()
        )
        self._optimizers: weakref.WeakKeyDictionary[
            nn.Module, dict[tuple[object, object], OptimizerRule | str]
        ] = weakref.WeakKeyDictionary()

    def plan(self, client: Client, ins: FitIns) -> _Plan | str:
        """The client's fit described for batching, or why it cannot be batched."""
        if not isinstance(client, TorchClient) or any(
            getattr(type(client), method) is not getattr(TorchClient, method)
            for method in ("fit", "_train", "_batches", "set_weights", "get_weights")
        ):
            return (
                f"the client is a {type(client).__name__}, whose training the vectorized engine "
                "does not know; it batches TorchClient's own training loop only"
            )
        if ins.config.get("plugins"):
            return (
                f"the strategy's client plug-ins ({ins.config['plugins']}) change local "
                "training and keep per-client state; they run on the per-client path"
            )
        if not isinstance(client.train_data, tuple):  # a DataLoader
            return (
                "the client's training data is a DataLoader, whose batches the engine cannot "
                "gather; pass train=(inputs, targets) tensors to TorchClient"
            )
        model = client.model
        facts = self._models.get(model)
        if facts is None:
            facts = self._models[model] = _model_facts(model)
        if isinstance(facts, str):
            return facts
        received = ins.weights.spec
        if not _same_layout(received, facts):
            return "the weights sent do not match the client's model (names or shapes differ)"
        loss = self._losses.get(client.loss_fn)
        if loss is None:
            problem = _loss_problem(client.loss_fn)
            loss = self._losses[client.loss_fn] = (
                problem
                if problem is not None
                else (type(client.loss_fn), _attributes(client.loss_fn))
            )
        if isinstance(loss, str):
            return loss
        rule = self._optimizer(client, ins)
        if isinstance(rule, str):
            return rule
        group = (facts.architecture, loss, rule)
        inputs, targets = client.train_data
        return _Plan(
            client=client,
            ins=ins,
            group=group,
            optimizer=rule,
            inputs=inputs,
            targets=targets,
            count=targets.shape[0],
            epochs=int(ins.config.get("local_epochs", client.local_epochs)),
            seed=int(ins.config.get("seed", 0)),
        )

    def _optimizer(self, client: TorchClient, ins: FitIns) -> OptimizerRule | str:
        """The client's optimizer as TorchClient builds it for `ins`, described."""
        key = (client.optimizer, ins.config.get("lr"))
        known = self._optimizers.setdefault(client.model, {})
        rule = known.get(key)
        if rule is None:
            parameters = list(client.model.parameters())
            optimizer = client.optimizer(parameters)
            if "lr" in ins.config:
                for settings in optimizer.param_groups:
                    settings["lr"] = float(ins.config["lr"])
            rule = describe_optimizer(optimizer, parameters)
            if len(known) >= 8:  # a factory built per client (a lambda) would only pile up
                known.clear()
            known[key] = rule
        return rule


def _same_layout(received: VectorSpec, facts: _ModelFacts) -> bool:
    if received.names == facts.names and received.shapes == facts.shapes:
        return True
    return dict(zip(received.names, received.shapes, strict=True)) == dict(
        zip(facts.names, facts.shapes, strict=True)
    )


@dataclass(frozen=True, slots=True)
class _ModelFacts:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    architecture: tuple[object, ...]
    """Module types, settings and parameter shapes: equal for models that batch together."""


def _model_facts(model: nn.Module) -> _ModelFacts | str:
    """What batching needs to know of `model`, or why it cannot be batched."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return (
            f"the model has buffers ({_listed(buffers)}), "
            "such as BatchNorm's running statistics, which change during training; use "
            "GroupNorm or LayerNorm (no running statistics) to batch it"
        )
    random = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, _RANDOM_MODULES) and _random(m)}
    )
    if random:
        return (
            f"the model has random layers ({', '.join(random)}) whose draws a batched run "
            "cannot reproduce; without them (or with p=0) it can be batched"
        )
    parameters = dict(model.named_parameters())
    if len(list(model.named_parameters(remove_duplicate=False))) != len(parameters):
        return (
            "the model shares parameters between layers; the vectorized engine needs one "
            "tensor per parameter"
        )
    if not parameters:
        return "the model has no parameters to train"
    dtypes = {value.dtype for value in parameters.values()}
    if (
        len(dtypes) != 1
        or next(iter(dtypes)).is_complex
        or not next(iter(dtypes)).is_floating_point
    ):
        return (
            f"the model's parameters are of several or complex dtypes "
            f"({_listed(sorted(map(str, dtypes)))}); "
            "the vectorized engine trains models of one real dtype"
        )
    architecture = tuple(
        (name, type(module), _attributes(module)) for name, module in model.named_modules()
    )
    described = tuple(
        (name, tuple(value.shape), value.dtype, value.requires_grad)
        for name, value in parameters.items()
    )
    return _ModelFacts(
        names=tuple(parameters),
        shapes=tuple(tuple(value.shape) for value in parameters.values()),
        architecture=(architecture, described),
    )


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _random(module: nn.Module) -> bool:
    if isinstance(module, nn.RReLU):
        return True
    return float(getattr(module, "p", 0.0)) > 0


def _loss_problem(loss_fn: nn.Module) -> str | None:
    if type(loss_fn) not in _LOSSES or getattr(loss_fn, "reduction", None) != "mean":
        known = ", ".join(loss.__name__ for loss in _LOSSES)
        return (
            f"the loss {type(loss_fn).__name__} (reduction "
            f"{getattr(loss_fn, 'reduction', None)!r}) is not one the vectorized engine can "
            f"mask; it batches {known} with reduction='mean'"
        )
    if isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss) and loss_fn.weight is not None:
        return (
            f"{type(loss_fn).__name__} with class weights averages by weight, which the "
            "vectorized engine does not reproduce; it batches the unweighted loss"
        )
    return None


def _attributes(module: nn.Module) -> tuple[tuple[str, object], ...]:
    """A module's plain settings (sizes, flags, rates): part of what makes architectures equal."""
    return tuple(
        (key, value)
        for key, value in vars(module).items()
        if not key.startswith("_")
        and key != "training"
        and isinstance(value, bool | int | float | str | tuple | type(None))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizerRule:
    """A torch optimizer's update, applied to stacked ``[clients, ...]`` tensors.

    ``kind`` is ``"sgd"`` (``torch.optim.SGD``) or ``"adam"`` (``torch.optim.Adam``,
    and ``AdamW`` as Adam with decoupled weight decay). Each `step` does what
    that optimizer's single-tensor step does, operation for operation.
    """

    kind: str
    lr: float
    weight_decay: float = 0.0
    maximize: bool = False
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False
    decoupled_weight_decay: bool = False

    def init(self, parameters: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """The optimizer state of every parameter before the first step."""
        if self.kind == "sgd":
            return {name: {} for name in parameters}
        slots = (
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
            if self.amsgrad
            else ("exp_avg", "exp_avg_sq")
        )
        return {
            name: {
                slot: torch.zeros_like(value, memory_format=torch.contiguous_format)
                for slot in slots
            }
            for name, value in parameters.items()
        }

    def step(
        self,
        parameters: Mapping[str, torch.Tensor],
        gradients: Mapping[str, torch.Tensor],
        state: dict[str, dict[str, torch.Tensor]],
        number: int,
    ) -> None:
        """Update `parameters` in place with their `gradients`; `number` counts steps from 1."""
        for name, parameter in parameters.items():
            gradient = gradients[name] if not self.maximize else -gradients[name]
            if self.kind == "sgd":
                self._sgd(parameter, gradient, state[name])
            else:
                self._adam(parameter, gradient, state[name], number)

    def _sgd(
        self, parameter: torch.Tensor, gradient: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> None:
        if self.weight_decay != 0:
            gradient = gradient.add(parameter, alpha=self.weight_decay)
        if self.momentum != 0:
            buffer = state.get("momentum")
            if buffer is None:
                buffer = state["momentum"] = gradient.detach().clone()
            else:
                buffer.mul_(self.momentum).add_(gradient, alpha=1 - self.dampening)
            gradient = gradient.add(buffer, alpha=self.momentum) if self.nesterov else buffer
        parameter.add_(gradient, alpha=-self.lr)

    def _adam(
        self,
        parameter: torch.Tensor,
        gradient: torch.Tensor,
        state: dict[str, torch.Tensor],
        number: int,
    ) -> None:
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                parameter.mul_(1 - self.lr * self.weight_decay)
            else:
                gradient = gradient.add(parameter, alpha=self.weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(gradient, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        step = float(number)
        step_size = self.lr / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        if self.amsgrad:
            highest = state["max_exp_avg_sq"]
            torch.maximum(highest, exp_avg_sq, out=highest)
            denom = (highest.sqrt() / bias_correction2_sqrt).add_(self.eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        parameter.addcdiv_(exp_avg, denom, value=-step_size)


def describe_optimizer(
    optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor]
) -> OptimizerRule | str:
    """The rule that reproduces `optimizer` on stacked tensors, or why there is none."""
    name = type(optimizer).__name__
    if type(optimizer) not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        return (
            f"the local optimizer {name} is not one the vectorized engine reproduces; it "
            "batches SGD (with momentum, dampening, weight decay, Nesterov), Adam and AdamW"
        )
    groups = optimizer.param_groups
    if len(groups) != 1 or {id(p) for p in groups[0]["params"]} != {id(p) for p in parameters}:
        return (
            f"the local optimizer {name} has several parameter groups, or leaves some of the "
            "model's parameters out; the vectorized engine batches one group over every parameter"
        )
    group = groups[0]
    lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
    maximize = bool(group["maximize"])
    if type(optimizer) is torch.optim.SGD:
        return OptimizerRule(
            kind="sgd",
            lr=lr,
            weight_decay=weight_decay,
            maximize=maximize,
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            nesterov=bool(group["nesterov"]),
        )
    beta1, beta2 = group["betas"]
    return OptimizerRule(
        kind="adam",
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        betas=(float(beta1), float(beta2)),
        eps=float(group["eps"]),
        amsgrad=bool(group["amsgrad"]),
        decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False))
        or type(optimizer) is torch.optim.AdamW,
    )
