"""Runs SecAgg+ rounds with the protocol core directly: a server and in-memory clients.

`run_round` plays every stage, dropping chosen clients at chosen stages (they just
stop answering), and returns the server with its result or the error it raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedloom.core import FitIns, FitRes, Reply, Scalar, Weights
from fedloom.secagg import SecAggPlus
from fedloom.secagg.server import SecAggServer, SecureSum
from fedloom.secagg.sessions import SecAggSessions
from fedloom.secagg.stages import CLEAR_METRICS, STAGES


@dataclass
class Outcome:
    server: SecAggServer
    updates: dict[str, np.ndarray]
    result: SecureSum | None = None
    error: Exception | None = None
    replies: dict[str, dict[str, Reply]] = field(default_factory=dict)


def make_updates(n: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"c{i}": rng.uniform(-1.0, 1.0, size=dim) for i in range(n)}


def run_round(
    config: SecAggPlus,
    updates: Mapping[str, np.ndarray],
    *,
    drop: Mapping[str, set[str]] | None = None,
    num_examples: Mapping[str, int] | None = None,
    weighted: bool = False,
    clip_norm: float | None = None,
    tamper: Callable[[str, str, dict[str, object]], dict[str, object]] | None = None,
    clear_metrics: Sequence[str] = (),
    metrics: Mapping[str, Mapping[str, Scalar]] | None = None,
) -> Outcome:
    """One round; `drop[stage]` clients do not answer that stage (nor any later one).

    Client ``c`` trains to ``updates[c]`` with ``metrics[c]`` (default none); the
    masked-input stage asks for `clear_metrics` in the clear, as `run_secure_round` does.
    """
    drop = drop or {}
    ids = list(updates)
    dim = next(iter(updates.values())).size
    params = config.for_round(len(ids))
    server = SecAggServer(
        params,
        participants=ids,
        dim=dim,
        rng=np.random.default_rng(1),
        weighted=weighted,
        clip_norm=clip_norm,
        clear_metrics=clear_metrics,
    )
    sessions = SecAggSessions()
    base = Weights({"w": np.zeros(dim)})
    outcome = Outcome(server=server, updates=dict(updates))
    gone: set[str] = set()
    try:
        for stage in STAGES:
            gone |= drop.get(stage, set())
            outcome.replies[stage] = {}
            for client, extra in server.requests().items():
                if client in gone:
                    continue
                if stage == "masked_input" and clear_metrics:
                    extra = {**extra, CLEAR_METRICS: ",".join(clear_metrics)}
                if tamper is not None:
                    extra = tamper(stage, client, dict(extra))
                task = FitIns(weights=base, config={"seed": 7, **extra})

                def fit(ins: FitIns, client: str = client) -> Reply:
                    examples = 1 if num_examples is None else num_examples[client]
                    own = {} if metrics is None else dict(metrics.get(client, {}))
                    return FitRes({"w": ins.weights["w"] + updates[client]}, examples, own)

                reply = sessions.handle(client, task, fit)
                outcome.replies[stage][client] = reply
                server.receive(client, reply)
            server.close_stage()
        outcome.result = server.result()
    except Exception as exc:
        outcome.error = exc
    return outcome
