"""Plain SGD on stacks of linear layers, batched over clients without per-client weight matrices.

With plain SGD (no momentum, no weight decay) a linear layer's weights after
``t`` local steps are the start plus a sum of rank-``batch`` terms::

    W_k(t) = W_0 - lr * sum_{s < t} dZ_{k,s}^T A_{k,s}

where ``A_{k,s}`` is client k's input to the layer at step s and ``dZ_{k,s}``
the gradient of its loss with respect to the layer's output. So the layer's
output at step t is

    A W_k(t)^T = A W_0^T - lr * (A A_{k,<t}^T) dZ_{k,<t}

one large matrix product shared by all clients (the arithmetic of a
centralized step) plus products of ``batch x (t * batch)`` matrices. No
client's weight matrix, gradient or optimizer update is materialized during
training. After it, the factors ``dZ_k`` and ``A_k`` are kept: ``W_k = W_0 -
lr * dZ_k^T A_k`` is written only when a client's weights are read
(`LowRankSGD.write_weights`), and a weighted sum over clients
``sum_k s_k W_k`` is one product of the stacked factors
(`LowRankSGD.weighted_delta`), the arithmetic of a centralized weight
gradient, without writing the clients' weights at all. The values are those
of `torch.optim.SGD` stepping each client's model (summed in another order,
so equal to float rounding). Gradients with respect to every layer's output
come from one autograd pass over the sum of the clients' masked mean losses
(the clients' losses do not interact, so each client gets its own gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LowRankSGD", "low_rank_layers"]

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
"""``(outputs [K, B, ...], targets [K, B, ...], mask [K, B]) -> per-client mean loss [K]``."""


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


class LowRankSGD:
    """One round of plain SGD for clients that all start from the same weights.

    Args:
        layers: from `low_rank_layers`.
        biases: every bias as a ``[clients, out]`` tensor, trained in place
            (what it holds before is ignored).
        start: every parameter's starting value, shared by all clients.
        lr: the learning rate; negative to maximize.
        allocate: where the factors and temporaries live (default: fresh tensors);
            memory reused from round to round saves faulting fresh pages in.
    """

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        biases: dict[str, torch.Tensor],
        start: dict[str, torch.Tensor],
        lr: float,
        allocate: Allocate | None = None,
    ) -> None:
        self.layers = layers
        self.biases = biases
        self.start = start
        self.lr = lr
        self._allocate: Allocate = allocate or (lambda _, shape, like: like.new_empty(shape))
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        """Per linear layer's weight name: ``(dZ, A)``, ``[clients, samples, out / in]``."""

    def train(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        loss_fn: ElementLoss,
    ) -> torch.Tensor:
        """Run every step; the loss of each client at each step, ``[clients, steps]``.

        Afterwards `factors` holds what every client's weights are made of.
        When the first linear layer sees the data itself, its ``A`` is `inputs`
        (a view, no copy): keep `inputs` unchanged while the factors are used.

        Args:
            inputs: ``[clients, steps, batch, ...]``, padded.
            targets: ``[clients, steps, batch, ...]``, padded.
            mask: ``[clients, steps, batch]``, 1 for real samples.
            loss_fn: each client's masked mean loss.
        """
        clients, steps, batch = mask.shape
        samples = steps * batch
        flat_inputs = inputs.reshape(clients, samples, -1)
        linear = [(name, layer) for name, layer in self.layers if isinstance(layer, nn.Linear)]
        sizes = {name: (layer.in_features, layer.out_features) for name, layer in linear}
        start = {name: self.start[f"{name}.weight"] for name, _ in linear}
        for name, _ in linear:
            bias = self.biases.get(f"{name}.bias")
            if bias is not None:
                bias.copy_(self.start[f"{name}.bias"].expand_as(bias))
        first = linear[0][0]
        leading = 0  # layers before the first linear one
        while self.layers[leading][0] != first:
            leading += 1
        # the first linear layer sees the data itself when at most a Flatten comes before it:
        # then its shared product for every step is one matrix product before the first step
        direct = flat_inputs.shape[-1] == sizes[first][0] and all(
            type(layer) is nn.Flatten for _, layer in self.layers[:leading]
        )
        history_in: dict[str, torch.Tensor] = {}
        history_out: dict[str, torch.Tensor] = {}
        allocate = self._allocate
        for name, layer in linear:  # every step writes its samples' rows before they are read
            shape = (clients, samples, layer.out_features)
            history_out[name] = allocate(f"gradients.{name}", shape, flat_inputs)
            if direct and name == first:
                history_in[name] = flat_inputs  # the data itself: nothing to copy
            else:
                shape = (clients, samples, layer.in_features)
                history_in[name] = allocate(f"inputs.{name}", shape, flat_inputs)
        shared = None
        if direct:
            features, width = sizes[first]
            shared = allocate("shared", (clients, samples, width), flat_inputs)
            torch.mm(
                flat_inputs.view(clients * samples, features),
                start[first].T,
                out=shared.view(clients * samples, width),
            )
        losses = torch.zeros(clients, steps, dtype=mask.dtype, device=mask.device)
        for step in range(steps):
            done = slice(0, step * batch)
            now = slice(step * batch, (step + 1) * batch)
            x = inputs[:, step]
            if not direct:
                x = x.reshape(clients * batch, *inputs.shape[3:])
            outputs: list[torch.Tensor] = []
            for index, (name, module) in enumerate(self.layers):
                if name not in sizes:
                    if not (direct and index < leading):
                        x = module(x)
                    continue
                features, width = sizes[name]
                bias = self.biases.get(f"{name}.bias")
                if direct and name == first:
                    assert shared is not None
                    z = shared[:, now] if bias is None else shared[:, now] + bias.unsqueeze(1)
                    if step:  # this step's samples against the earlier ones: no copy of either
                        seen = flat_inputs[:, now]
                        overlap = torch.bmm(seen, flat_inputs[:, done].transpose(1, 2))
                        z = torch.baddbmm(z, overlap, history_out[name][:, done], alpha=-self.lr)
                    if bias is None and not step:  # a tensor of its own, not a view
                        z = z.clone()
                else:
                    seen = x.reshape(clients, batch, features)
                    if history_in[name] is not flat_inputs:
                        history_in[name][:, now] = seen.detach()
                    z = (x @ start[name].T).view(clients, batch, width)
                    if bias is not None:
                        z = z + bias.unsqueeze(1)
                    if step:
                        overlap = torch.bmm(seen, history_in[name][:, done].transpose(1, 2))
                        z = torch.baddbmm(z, overlap, history_out[name][:, done], alpha=-self.lr)
                if not z.requires_grad:
                    z.requires_grad_()
                outputs.append(z)
                x = z.reshape(clients * batch, width)
            shaped = x.view(clients, batch, *x.shape[1:])
            loss = loss_fn(shaped, targets[:, step], mask[:, step])
            gradients = torch.autograd.grad(loss.sum(), outputs)
            losses[:, step] = loss.detach()
            for (name, _), gradient in zip(linear, gradients, strict=True):
                history_out[name][:, now] = gradient
                if f"{name}.bias" in self.biases:
                    self.biases[f"{name}.bias"].add_(gradient.sum(1), alpha=-self.lr)
        self.factors = {
            f"{name}.weight": (history_out[name], history_in[name]) for name, _ in linear
        }
        return losses

    def write_weights(self, views: dict[str, torch.Tensor]) -> None:
        """``W_k = W_0 - lr * dZ_k^T A_k`` into each weight's ``[clients, out, in]`` view."""
        for name, (gradients, seen) in self.factors.items():
            weight = views[name]
            torch.bmm((gradients * -self.lr).transpose(1, 2), seen, out=weight)
            weight.add_(self.start[name])

    def weighted_delta(
        self, name: str, scales: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """``sum_k scales[k] * (W_k - W_0)`` of weight `name` over clients `rows` (None: all).

        One ``[out, clients * samples] x [clients * samples, in]`` product.
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

    def delta_bounds(self) -> torch.Tensor:
        """Per client, a float64 bound on ``|W_k - W_0|`` over every weight element.

        ``|lr * sum_s dZ[s, i] A[s, j]| <= |lr| * samples * max|dZ_k| * max|A_k|``;
        NaN when a factor holds NaN. The data's maximum is taken over all
        clients at once (one pass), the rest per client.
        """
        bound: torch.Tensor | None = None
        for gradients, seen in self.factors.values():
            clients, samples, _ = gradients.shape
            flat = gradients.view(clients, -1)  # max |x| as max(max x, -min x): no |x| temporary
            largest_gradient = torch.maximum(flat.amax(1), -flat.amin(1)).double()
            if seen.numel() > 1 << 20:  # the data: one pass for all clients
                low, high = torch.aminmax(seen)
                largest_seen = torch.maximum(low.abs(), high.abs()).double().expand(clients)
            else:
                flat = seen.reshape(clients, -1)
                largest_seen = torch.maximum(flat.amax(1), -flat.amin(1)).double()
            layer = abs(self.lr) * samples * largest_gradient * largest_seen
            bound = layer if bound is None else torch.maximum(bound, layer)
        assert bound is not None
        return bound
