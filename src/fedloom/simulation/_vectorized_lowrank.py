"""Plain SGD on stacks of linear layers, batched over clients without per-client weight matrices.

With plain SGD (no momentum, no weight decay) a linear layer's weights after
``t`` local steps are the start plus a sum of rank-``batch`` terms::

    W_k(t) = W_0 - lr * sum_{s < t} dZ_{k,s}^T A_{k,s}

where ``A_{k,s}`` is client k's input to the layer at step s and ``dZ_{k,s}``
the gradient of its loss with respect to the layer's output. So the layer's
output at step t is

    A W_k(t)^T = A W_0^T - lr * (A A_{k,<t}^T) dZ_{k,<t}

one large matrix product shared by all clients (the arithmetic of a
centralized step) plus products of ``batch x (t * batch)`` matrices. A bias
is a weight on a constant input of 1: it adds 1 to every overlap, and is
summed from the factors once at the end. No such layer's per-client weight
matrix, gradient or optimizer update is materialized during training. A
layer whose weights are smaller than its factors would be (a narrow output
layer) is kept whole instead: per-client weights, updated in place each step
by one batched product (see `kept_whole`). After training, the factors
``dZ_k`` and ``A_k`` are kept: ``W_k = W_0 - lr * dZ_k^T A_k`` is written
only when a client's weights are read (`LowRankSGD.write_weights`), and a weighted sum over clients
``sum_k s_k W_k`` is one product of the stacked factors
(`LowRankSGD.weighted_delta`), the arithmetic of a centralized weight
gradient, without writing the clients' weights at all. The values are those
of `torch.optim.SGD` stepping each client's model (summed in another order,
so equal to float rounding). Gradients with respect to every layer's output
come from one autograd pass over the sum of the clients' masked mean losses
(the clients' losses do not interact, so each client gets its own gradient),
or, for a loss given in closed form with its gradient (cross-entropy), from
one pass that starts at the model's outputs.
A padded sample has zero loss weight, so its gradient rows are zero and it
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LossGradient", "LowRankSGD", "kept_whole", "low_rank_layers"]

_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
)
"""Parameter-free modules that act on each value alone: a batch of clients' samples is one batch."""

Allocate = Callable[[str, tuple[int, ...], torch.Tensor], torch.Tensor]
"""``(name, shape, like) -> an uninitialized tensor`` of `like`'s dtype and device."""

ElementLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(outputs [K, B, ...], targets [K, B, ...], weights [K, B, ...]) -> per-client loss [K]``:
the loss's elements weighted by `weights` (each client's weights sum to 1 over its real samples)."""

LossGradient = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
"""An `ElementLoss` in closed form: ``(outputs, targets, weights) -> (per-client loss [K],
its gradient with respect to outputs)``, computed without autograd."""


def low_rank_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of `model` when it is a stack the low-rank form covers, else None.

    That is an ``nn.Sequential`` of ``nn.Linear`` layers (with or without bias),
    element-wise activations and ``nn.Flatten()`` before the first linear layer,
    whose parameters all train.
    """
    if type(model) is not nn.Sequential:
        return None
    layers = list(model.named_children())
    seen_linear = False
    for _, layer in layers:
        if type(layer) is nn.Linear:
            seen_linear = True
            if not all(p.requires_grad for p in layer.parameters()):
                return None
        elif type(layer) is nn.Flatten:
            if seen_linear or layer.start_dim != 1 or layer.end_dim != -1:
                return None
        elif type(layer) not in _ELEMENTWISE:
            return None
    return layers if seen_linear else None


def kept_whole(layer: nn.Linear, samples: int) -> bool:
    """True when a client's weights of `layer` are no larger than its low-rank factors.

    The factors hold ``samples x (in + out)`` values per client, the weights
    ``in x out``: a narrow layer (an MLP's output layer) is cheaper kept whole
    and updated in place, a wide one (the first layer on images) in factors.
    """
    return layer.in_features * layer.out_features <= samples * (
        layer.in_features + layer.out_features
    )


class LowRankSGD:
    """One round of plain SGD for clients that all start from the same weights.

    Args:
        layers: from `low_rank_layers`.
        start: every parameter's starting value, shared by all clients.
        lr: the learning rate; negative to maximize.
        allocate: where the factors, the whole weights and temporaries live
            (default: fresh tensors); memory reused from round to round saves
            faulting fresh pages in.
    """

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        start: dict[str, torch.Tensor],
        lr: float,
        allocate: Allocate | None = None,
    ) -> None:
        self.layers = layers
        self.start = start
        self.lr = lr
        self._allocate: Allocate = allocate or (lambda _, shape, like: like.new_empty(shape))
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        """Per low-rank layer's weight name: ``(dZ, A)``, ``[clients, samples, out / in]``."""
        self.whole: dict[str, torch.Tensor] = {}
        """Every other parameter (biases, whole layers' weights): ``[clients, *shape]``."""

    def train(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        loss_fn: ElementLoss,
        closed_form: LossGradient | None = None,
    ) -> torch.Tensor:
        """Run every step; the loss of each client at each step, ``[clients, steps]``.

        Afterwards `factors` and `whole` hold what every client's weights are
        made of. When the first linear layer sees the data itself, its ``A`` is
        `inputs` (a view, no copy): keep `inputs` unchanged while the factors are used.

        Args:
            inputs: ``[clients, steps, batch, ...]``, padded.
            targets: ``[clients, steps, batch, ...]``, padded.
            weights: ``[clients, steps, batch, ...]``, each sample's weight in its
                client's mean loss at that step; 0 for padding.
            loss_fn: each client's mean loss at a step.
            closed_form: the same loss with its gradient, if known in closed form:
                autograd then starts at the model's outputs.
        """
        clients, steps, batch = weights.shape[:3]
        samples = steps * batch
        lr, allocate = self.lr, self._allocate
        flat_inputs = inputs.reshape(clients, samples, -1)
        linear = [(name, layer) for name, layer in self.layers if isinstance(layer, nn.Linear)]
        sizes = {name: (layer.in_features, layer.out_features) for name, layer in linear}
        whole = {name for name, layer in linear if kept_whole(layer, samples)}
        start = {name: self.start[f"{name}.weight"] for name, _ in linear}
        first = linear[0][0]
        leading = 0  # layers before the first linear one
        while self.layers[leading][0] != first:
            leading += 1
        # the first linear layer sees the data itself when at most a Flatten comes before it:
        # then its shared product for every step is one matrix product before the first step
        direct = (
            first not in whole
            and flat_inputs.shape[-1] == sizes[first][0]
            and all(type(layer) is nn.Flatten for _, layer in self.layers[:leading])
        )
        kept: dict[str, torch.Tensor] = {}  # whole layers' weights, [clients, out, in]
        kept_biases: dict[str, torch.Tensor] = {}  # whole layers' biases, [clients, out]
        history_in: dict[str, torch.Tensor] = {}
        history_out: dict[str, torch.Tensor] = {}
        for name, _ in linear:
            features, width = sizes[name]
            bias = self.start.get(f"{name}.bias")
            if name in whole:
                shape = (clients, width, features)
                kept[name] = allocate(f"{name}.weight", shape, flat_inputs)
                kept[name].copy_(start[name].expand(shape))
                if bias is not None:
                    kept_biases[name] = allocate(f"{name}.bias", (clients, width), flat_inputs)
                    kept_biases[name].copy_(bias.expand(clients, width))
                continue
            # every step writes its samples' rows before they are read
            shape = (clients, samples, width)
            history_out[name] = allocate(f"gradients.{name}", shape, flat_inputs)
            if direct and name == first:
                history_in[name] = flat_inputs  # the data itself: nothing to copy
            else:
                shape = (clients, samples, features)
                history_in[name] = allocate(f"inputs.{name}", shape, flat_inputs)
        shared = None
        if direct:
            features, width = sizes[first]
            shared = allocate("shared", (clients, samples, width), flat_inputs)
            rows = flat_inputs.view(clients * samples, features)
            out = shared.view(clients * samples, width)
            bias = self.start.get(f"{first}.bias")
            if bias is None:
                torch.mm(rows, start[first].T, out=out)
            else:
                torch.addmm(bias, rows, start[first].T, out=out)
        losses = torch.zeros(clients, steps, dtype=weights.dtype, device=weights.device)
        for step in range(steps):
            done = slice(0, step * batch)
            now = slice(step * batch, (step + 1) * batch)
            x = inputs[:, step]
            if not direct:
                x = x.reshape(clients * batch, *inputs.shape[3:])
            outputs: list[torch.Tensor] = []
            seen_by: dict[str, torch.Tensor] = {}  # whole layers' inputs at this step
            for index, (name, module) in enumerate(self.layers):
                if name not in sizes:
                    if not (direct and index < leading):
                        x = module(x)
                    continue
                features, width = sizes[name]
                bias = self.start.get(f"{name}.bias")
                if name in whole:
                    seen = x.reshape(clients, batch, features)
                    seen_by[name] = seen.detach()
                    weight = kept[name].transpose(1, 2)
                    if bias is None:
                        z = torch.bmm(seen, weight)
                    else:
                        z = torch.baddbmm(kept_biases[name].unsqueeze(1), seen, weight)
                elif direct and name == first:
                    assert shared is not None
                    z = shared[:, now]  # this step's rows of the shared product, bias included
                    if step:  # this step's samples against the earlier ones: no copy of either
                        seen = flat_inputs[:, now]
                        overlap = torch.bmm(seen, flat_inputs[:, done].transpose(1, 2))
                        if bias is not None:
                            overlap.add_(1)  # the bias: a weight on an input of 1
                        z = torch.baddbmm(z, overlap, history_out[name][:, done], alpha=-lr)
                    else:
                        z = z.detach()  # a tensor of its own to take the gradient at
                else:
                    seen = x.reshape(clients, batch, features)
                    history_in[name][:, now] = seen.detach()
                    if bias is None:
                        flat = x @ start[name].T
                    else:
                        flat = torch.addmm(bias, x, start[name].T)
                    z = flat.view(clients, batch, width)
                    if step:
                        overlap = torch.bmm(seen, history_in[name][:, done].transpose(1, 2))
                        if bias is not None:
                            overlap = overlap + 1
                        z = torch.baddbmm(z, overlap, history_out[name][:, done], alpha=-lr)
                if not z.requires_grad:
                    z.requires_grad_()
                outputs.append(z)
                x = z.reshape(clients * batch, width)
            shaped = x.view(clients, batch, *x.shape[1:])
            if closed_form is None:
                loss = loss_fn(shaped, targets[:, step], weights[:, step])
                gradients = torch.autograd.grad(loss.sum(), outputs)
            else:
                with torch.no_grad():
                    loss, at_outputs = closed_form(shaped, targets[:, step], weights[:, step])
                gradients = torch.autograd.grad(shaped, outputs, grad_outputs=at_outputs)
            losses[:, step] = loss.detach()
            for (name, _), gradient in zip(linear, gradients, strict=True):
                if name in whole:  # torch.optim.SGD's step: p -= lr * grad
                    kept[name].baddbmm_(gradient.transpose(1, 2), seen_by[name], alpha=-lr)
                    if name in kept_biases:
                        kept_biases[name].add_(gradient.sum(1), alpha=-lr)
                else:
                    history_out[name][:, now] = gradient
        self.factors = {
            f"{name}.weight": (history_out[name], history_in[name]) for name in history_out
        }
        self.whole = {f"{name}.weight": weight for name, weight in kept.items()}
        self.whole.update({f"{name}.bias": bias for name, bias in kept_biases.items()})
        for name, outputs_grad in history_out.items():  # b_k = b_0 - lr * (sum of dZ_k's rows)
            bias = self.start.get(f"{name}.bias")
            if bias is not None:
                summed = allocate(f"{name}.bias", (clients, sizes[name][1]), flat_inputs)
                torch.sum(outputs_grad, dim=1, out=summed)
                self.whole[f"{name}.bias"] = summed.mul_(-lr).add_(bias)
        return losses

    def tensors(self) -> list[torch.Tensor]:
        """Every per-client tensor the results are made of, ``[clients, ...]`` each."""
        return [*self.whole.values(), *(t for pair in self.factors.values() for t in pair)]

    def write_weights(self, views: dict[str, torch.Tensor]) -> None:
        """Every client's parameters into their ``[clients, *shape]`` views.

        ``W_k = W_0 - lr * dZ_k^T A_k`` for the low-rank layers; a copy of the rest.
        """
        for name, (gradients, seen) in self.factors.items():
            weight = views[name]
            torch.bmm((gradients * -self.lr).transpose(1, 2), seen, out=weight)
            weight.add_(self.start[name])
        for name, values in self.whole.items():
            views[name].copy_(values)

    def weighted_delta(
        self, name: str, scales: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """``sum_k scales[k] * (W_k - W_0)`` of low-rank weight `name` over clients `rows`.

        One ``[out, clients * samples] x [clients * samples, in]`` product; `rows`
        None means every client.
        """
        gradients, seen = self.factors[name]
        if rows is not None:
            gradients, seen = gradients[rows], seen[rows]
        clients, samples, width = gradients.shape
        flat_seen = seen.reshape(clients * samples, seen.shape[-1])
        if bool((scales == scales[0]).all()):  # equal weights (equal sizes, Mean): no temporary
            summed = gradients.view(clients * samples, width).T @ flat_seen
            return summed.mul_(scales[0] * -self.lr)
        weighted = gradients * (scales * -self.lr).view(clients, 1, 1)
        return weighted.view(clients * samples, width).T @ flat_seen

    def proven_finite(self) -> torch.Tensor:
        """Per client (``[clients]`` bool, on the CPU): True when every weight is proven finite.

        A low-rank layer's ``|W_k - W_0|`` is at most ``|lr| * ||dZ_k|| * ||A_k||``
        in every element (Cauchy-Schwarz over the samples, Frobenius norms): a
        client is proven when that plus ``max |W_0|`` stays far below the
        dtype's largest value (NaN compares False) and its whole tensors are finite.
        """
        tensor = self.tensors()[0]
        clients, dtype, device = len(tensor), tensor.dtype, tensor.device
        largest = max((float(t.abs().max()) for t in self.start.values() if t.numel()), default=0.0)
        limit = torch.finfo(dtype).max / 16
        proven = torch.ones(clients, dtype=torch.bool, device=device)
        for gradients, seen in self.factors.values():
            gradient_norms = torch.linalg.vector_norm(gradients.reshape(clients, -1), dim=1)
            seen_norms = torch.linalg.vector_norm(seen.reshape(clients, -1), dim=1)
            bound = abs(self.lr) * gradient_norms.double() * seen_norms.double() + largest
            proven &= bound < limit
        for values in self.whole.values():
            proven &= torch.isfinite(values).reshape(clients, -1).all(1)
        return proven.cpu()
