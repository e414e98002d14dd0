"""The server's side of SecAgg+: the stage state machine, and the driver over a Channel.

`SecAggServer` holds one round's protocol state. For each stage it produces the
requests (`requests`), takes the replies (`receive`) and closes the stage
(`close_stage`), dropping clients that failed, timed out or answered badly, and
aborting with `SecAggAborted` before any share is requested when too few clients
remain to unmask safely. The masked inputs are summed as they arrive (modulo
``2^modulus_bits``), so the server never holds one client's vector beyond its
arrival. `run_secure_round` drives the four stages over a `Channel`.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from fedloom.core import Channel, ClientId, Failure, FitIns, FitRes, Reply, Scalar, Weights
from fedloom.errors import AggregationError, FedloomError, SecAggAborted
from fedloom.secagg import _crypto, shamir
from fedloom.secagg.graph import harary_neighbours
from fedloom.secagg.params import RoundParams, SecAggPlus
from fedloom.secagg.quantize import dequantize_sum
from fedloom.secagg.stages import (
    CLEAR_METRICS,
    MASKED,
    PAYLOAD,
    SESSION,
    STAGE,
    STAGES,
    b64,
    dump_payload,
    load_payload,
    unb64,
)

__all__ = ["SecAggServer", "SecureSum", "run_secure_round"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureSum:
    """What the server learns from a round: the sum, and who it covers.

    Attributes:
        total: ``sum_i w_i x_i`` over the surviving clients (dequantized; float64).
        total_weight: ``sum_i w_i`` (example counts, or 1 per client when unweighted).
        count: how many clients' updates the sum holds.
        count_within_clip: how many of them had norm <= the clip norm (with central DP).
        survivors: their ids.
        failures: why each other participant dropped out.
        metrics: each survivor's privacy-accounting metrics, sent in the clear when the
            round asked for them (``clear_metrics``); empty otherwise.
    """

    total: NDArray[np.float64]
    total_weight: float
    count: int
    count_within_clip: int
    survivors: tuple[ClientId, ...]
    failures: Mapping[ClientId, str]
    metrics: Mapping[ClientId, Mapping[str, Scalar]] = field(default_factory=dict)


class SecAggServer:
    """One round of SecAgg+ on the server.

    Args:
        params: the round's parameters (`SecAggPlus.for_round`).
        participants: the clients sampled for the round.
        dim: the model's size (masked vectors hold ``dim + 2`` values: the weight and clip flag).
        rng: shuffles the neighbour graph.
        weighted: clients weight their update by num_examples (else by 1).
        clip_norm: clients clip their update to this L2 norm before quantizing (central DP).
        idle_timeout_s: how long a client keeps a session waiting for its next stage.
        clear_metrics: finite numeric metrics every masked input must carry in the
            clear (privacy accounting, `fedloom.privacy.local.ACCOUNTING_METRICS`); a
            client without them is dropped before its masked vector is summed.
    """

    def __init__(
        self,
        params: RoundParams,
        *,
        participants: Sequence[ClientId],
        dim: int,
        rng: np.random.Generator,
        weighted: bool = True,
        clip_norm: float | None = None,
        idle_timeout_s: float = 600.0,
        clear_metrics: Sequence[str] = (),
    ) -> None:
        self.params = params
        self.clear_metrics = tuple(clear_metrics)
        self._clear: dict[ClientId, dict[str, Scalar]] = {}
        self.session = secrets.token_hex(16)
        self.index, self.graph = harary_neighbours(
            list(participants), num_neighbours=params.num_neighbours, rng=rng
        )
        self._dim = dim
        self._settings: dict[str, Scalar | None] = {
            "threshold": params.threshold,
            "num_clients": params.num_clients,
            "clipping_range": params.clipping_range,
            "quantization_bits": params.quantization_bits,
            "modulus_bits": params.modulus_bits,
            "weighted": weighted,
            "clip_norm": clip_norm,
            "idle_timeout_s": idle_timeout_s,
        }
        self._stage = 0
        self._alive: set[ClientId] = set(participants)  # those still in the round
        self._answered: set[ClientId] = set()
        self.failures: dict[ClientId, str] = {}
        self._keys: dict[ClientId, tuple[bytes, bytes]] = {}
        self._ciphertexts: dict[ClientId, dict[ClientId, str]] = {}
        self._shared: set[ClientId] = set()  # U2: those whose shares went out
        self._sum = np.zeros(dim + 2, dtype=np.uint64)
        self._masked: set[ClientId] = set()  # U3
        self._b_shares: dict[ClientId, dict[int, int]] = {}
        self._s_shares: dict[ClientId, dict[int, int]] = {}
        self._finished = False

    @property
    def stage(self) -> str:
        """The stage whose requests are out (or next); "done" after the last."""
        return STAGES[self._stage] if self._stage < len(STAGES) else "done"

    @property
    def held_shares(self) -> dict[ClientId, tuple[int, int]]:
        """For each client, how many self-mask and mask-key shares the server holds in clear."""
        owners = set(self._b_shares) | set(self._s_shares)
        return {
            owner: (len(self._b_shares.get(owner, {})), len(self._s_shares.get(owner, {})))
            for owner in owners
        }

    def requests(self) -> dict[ClientId, dict[str, Scalar]]:
        """The current stage's config for each client still in the round."""
        stage = self.stage
        base: dict[str, Scalar] = {STAGE: stage, SESSION: self.session}
        requests = {}
        for client in sorted(self._alive, key=self.index.__getitem__):
            requests[client] = {**base, PAYLOAD: dump_payload(self._payload(stage, client))}
        return requests

    def _payload(self, stage: str, client: ClientId) -> dict[str, object]:
        peers = self.graph[client] & self._alive
        if stage == "setup":
            return {
                "index": self.index[client],
                "neighbours": {peer: self.index[peer] for peer in sorted(self.graph[client])},
                "params": self._settings,
            }
        if stage == "share_keys":
            return {"keys": {p: [b64(self._keys[p][0]), b64(self._keys[p][1])] for p in peers}}
        if stage == "masked_input":
            return {"shares": {p: self._ciphertexts[p][client] for p in peers}}
        survivors = sorted(peers & self._masked)
        dropped = sorted((self.graph[client] & self._shared) - self._masked)
        return {"survivors": survivors, "dropped": dropped}

    def receive(self, client: ClientId, reply: Reply) -> None:
        """Take `client`'s reply to the current stage; a bad or failed reply drops it."""
        if client not in self._alive or client in self._answered:
            logger.warning("ignored a '%s' reply from '%s'", self.stage, client)
            return
        try:
            if isinstance(reply, Failure):
                raise _Dropped(reply.reason)
            if not isinstance(reply, FitRes):
                raise _Dropped(f"expected a FitRes reply, got {type(reply).__name__}")
            self._take(client, reply)
        except (_Dropped, FedloomError) as exc:
            self.drop(client, f"{self.stage}: {exc}")
            return
        self._answered.add(client)

    def drop(self, client: ClientId, reason: str) -> None:
        """Count `client` out of the round (it failed, timed out, or answered badly)."""
        logger.warning("secure aggregation: client '%s' dropped: %s", client, reason)
        self.failures.setdefault(client, reason)
        self._alive.discard(client)

    def _take(self, client: ClientId, reply: FitRes) -> None:
        stage = self.stage
        who = f"client '{client}'"
        if stage == "masked_input":
            self._take_masked(client, reply)
            return
        payload = load_payload(reply.metrics, stage=stage, sender=who)
        if stage == "setup":
            keys = (
                unb64(payload.get("c"), stage=stage, what=f"{who}'s encryption key"),
                unb64(payload.get("s"), stage=stage, what=f"{who}'s mask key"),
            )
            if any(len(key) != 32 for key in keys):
                raise _Dropped("public keys must be 32 bytes")
            self._keys[client] = keys
        elif stage == "share_keys":
            expected = self.graph[client] & self._alive
            if set(payload) != expected or not all(isinstance(v, str) for v in payload.values()):
                raise _Dropped(f"expected one encrypted share for each of {sorted(expected)}")
            self._ciphertexts[client] = dict(payload)
        else:
            self._take_shares(client, payload)

    def _take_masked(self, client: ClientId, reply: FitRes) -> None:
        weights = reply.weights
        if not isinstance(weights, Weights) or tuple(weights) != (MASKED,):
            raise _Dropped(f"expected one tensor '{MASKED}'")
        vector = weights[MASKED]
        modulus = float(1 << self.params.modulus_bits)
        if vector.shape != (self._dim + 2,) or vector.dtype != np.float64:
            raise _Dropped(
                f"'{MASKED}' has shape {vector.shape} {vector.dtype}; expected "
                f"({self._dim + 2},) float64"
            )
        valid = (vector >= 0) & (vector < modulus) & (np.floor(vector) == vector)
        if not bool(valid.all()):
            raise _Dropped(f"'{MASKED}' must hold integers in [0, 2**{self.params.modulus_bits})")
        clear = self._take_clear_metrics(reply.metrics)  # before the vector joins the sum
        np.add(self._sum, vector.astype(np.uint64), out=self._sum)
        self._masked.add(client)
        if clear:
            self._clear[client] = clear

    def _take_clear_metrics(self, metrics: Mapping[str, Scalar]) -> dict[str, Scalar]:
        extra = sorted(set(metrics) - set(self.clear_metrics))
        if extra:
            raise _Dropped(f"sent metrics {extra[:5]} in the clear, which were not asked for")
        clear: dict[str, Scalar] = {}
        for name in self.clear_metrics:
            value = metrics.get(name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise _Dropped(
                    f"expected the finite number '{name}' in the clear with its masked input, "
                    f"got {value!r:.40}"
                )
            clear[name] = value
        return clear

    def _take_shares(self, client: ClientId, payload: Mapping[str, object]) -> None:
        x = self.index[client]
        holds = self.graph[client] | {client}
        owners = {"b": self._masked & holds, "s": (self._shared - self._masked) & holds}
        taken: list[tuple[dict[ClientId, dict[int, int]], ClientId, int]] = []
        for kind, store in (("b", self._b_shares), ("s", self._s_shares)):
            shares = payload.get(kind)
            if not isinstance(shares, dict):
                raise _Dropped(f"expected a '{kind}' object of shares")
            for owner, text in shares.items():
                if owner not in owners[kind]:
                    raise _Dropped(f"sent a '{kind}' share of '{owner}', which was not asked for")
                value = int.from_bytes(unb64(text, stage="unmask", what="a share"), "big")
                if value >= shamir.PRIME:
                    raise _Dropped(f"sent a share of '{owner}' outside the field")
                taken.append((store, owner, value))
        for store, owner, value in taken:  # all or nothing
            store.setdefault(owner, {})[x] = value

    def close_stage(self) -> None:
        """End the current stage: who did not answer drops out; check enough remain.

        Raises:
            SecAggAborted: too few clients remain to go on without revealing more than a
                sum of at least ``t`` updates (checked before any share is requested).
        """
        stage = self.stage
        for client in sorted(self._alive - self._answered):
            self.drop(client, f"{stage}: no reply before the stage's deadline")
        self._answered = set()
        if stage == "share_keys":
            self._shared = set(self._alive)
        if stage in ("setup", "share_keys"):
            self._prune(stage)
        elif stage == "masked_input":
            self._check_unmaskable()
        self._stage += 1

    def _prune(self, stage: str) -> None:
        """Drop clients with fewer than ``t - 1`` live neighbours, until none is left."""
        t = self.params.threshold
        changed = True
        while changed:
            changed = False
            for client in sorted(self._alive):
                if len(self.graph[client] & self._alive) + 1 < t:
                    self.drop(client, f"{stage}: fewer than t={t} of its neighbourhood remain")
                    changed = True
        if stage == "share_keys":
            self._shared &= self._alive
        if len(self._alive) < max(2, t):
            self._abort(stage, f"only {len(self._alive)} clients remain")

    def _check_unmaskable(self) -> None:
        t = self.params.threshold
        survivors = self._alive & self._masked
        self._alive = survivors
        short = [c for c in sorted(survivors) if len(self.graph[c] & survivors) + 1 < t]
        short += [c for c in sorted(self._shared - survivors) if len(self.graph[c] & survivors) < t]
        if len(survivors) < t or short:
            self._abort(
                "masked_input",
                f"{len(survivors)} clients sent masked inputs; the neighbourhoods of "
                f"{short[:10]} keep fewer than t={t} of them",
            )

    def _abort(self, stage: str, problem: str) -> None:
        raise SecAggAborted(
            f"secure aggregation aborted the round at stage '{stage}': {problem}, so the "
            f"masks cannot be removed without exposing individual updates (threshold "
            f"t={self.params.threshold} of {self.params.num_neighbours + 1} share holders). "
            "No share was requested. Lower reconstruction_threshold, sample more clients, or "
            "make clients more reliable.",
            stage=stage,
        )

    def result(self) -> SecureSum:
        """Rebuild the seeds, remove the masks, and dequantize the sum.

        Raises:
            SecAggAborted: fewer than ``t`` shares came back for some secret.
            AggregationError: the weighted sum overflowed ``2^modulus_bits``.
        """
        if self.stage != "done":
            raise SecAggAborted(
                f"the unmasked sum is ready after the 'unmask' stage; the protocol is at "
                f"'{self.stage}'.",
                stage=self.stage,
            )
        t = self.params.threshold
        survivors = sorted(self._masked)
        dropped = sorted(self._shared - self._masked)
        missing = [c for c in survivors if len(self._b_shares.get(c, {})) < t]
        missing += [c for c in dropped if len(self._s_shares.get(c, {})) < t]
        if missing:
            raise SecAggAborted(
                f"secure aggregation aborted at stage 'unmask': fewer than t={t} shares came "
                f"back for {missing[:10]}, so their masks cannot be removed. Lower "
                "reconstruction_threshold or make clients more reliable.",
                stage="unmask",
            )
        expander = _crypto.MaskExpander(self._dim + 2)
        session = self.session.encode()
        total = self._sum
        for client in survivors:
            seed = shamir.combine(self._b_shares[client], threshold=t)
            key = _crypto.derive(seed, b"fedloom-secagg self|" + session, 16)
            expander.apply(total, key, sign=-1)
        for gone in dropped:
            seed = shamir.combine(self._s_shares[gone], threshold=t)
            mask_key = _crypto.mask_private_key(seed, session)
            if _crypto.public_bytes(mask_key) != self._keys[gone][1]:
                raise SecAggAborted(
                    f"the shares of client '{gone}''s mask key rebuild another key than the "
                    "one it advertised: some shares were altered.",
                    stage="unmask",
                    client_id=gone,
                )
            for peer in sorted(self.graph[gone] & self._masked):
                pair = _crypto.agree(
                    mask_key, self._keys[peer][1], b"fedloom-secagg pair|" + session, 16
                )
                sign = 1 if self.index[peer] < self.index[gone] else -1
                expander.apply(total, pair, sign=-sign)  # remove what `peer` added
        total &= np.uint64((1 << self.params.modulus_bits) - 1)
        total_weight, within = int(total[-2]), int(total[-1])
        if total_weight * self.params.levels >= 1 << self.params.modulus_bits:
            raise AggregationError(
                f"the weighted sum of {len(survivors)} updates (total weight {total_weight}) "
                f"overflows 2**{self.params.modulus_bits}. Lower quantization_bits or raise "
                "modulus_bits."
            )
        vector = dequantize_sum(
            total[:-2],
            total_weight=total_weight,
            clipping_range=self.params.clipping_range,
            bits=self.params.quantization_bits,
        )
        return SecureSum(
            total=vector,
            total_weight=float(total_weight),
            count=len(survivors),
            count_within_clip=within,
            survivors=tuple(survivors),
            failures=dict(self.failures),
            metrics={c: self._clear[c] for c in survivors if c in self._clear},
        )


class _Dropped(Exception):
    pass


def run_secure_round(
    channel: Channel,
    tasks: Mapping[ClientId, FitIns],
    config: SecAggPlus,
    *,
    server_round: int,
    rng: np.random.Generator,
    fit_timeout_s: float | None = None,
    weighted: bool = True,
    clip_norm: float | None = None,
    clear_metrics: Sequence[str] = (),
) -> SecureSum:
    """Run the four stages of SecAgg+ for `tasks` over `channel`; the unmasked sum.

    Every stage has a deadline: ``config.timeout_s``, or `fit_timeout_s` for the
    masked-input stage (training) when it is set.

    Args:
        channel: reaches the clients.
        tasks: the round's fit tasks (all with the same global weights).
        config: the SecAgg+ parameters.
        server_round: the round, sent with every stage.
        rng: shuffles the neighbour graph.
        fit_timeout_s: the deadline of the training stage.
        weighted: weight updates by num_examples (else 1 per client).
        clip_norm: clients clip updates to this L2 norm before masking (central DP).
        clear_metrics: privacy-accounting metrics each client sends in the clear with
            its masked input (`fedloom.privacy.local.ACCOUNTING_METRICS`; the local DP
            plug-in's ``dpsgd.epsilon``); they come back in `SecureSum.metrics`.

    Raises:
        SecAggAborted: too few clients remained to unmask safely.
        ConfigError: fewer than 2 tasks, or a threshold the round's size cannot meet.
    """
    params = config.for_round(len(tasks))
    dim = next(iter(tasks.values())).weights.spec.size
    fit_s = config.timeout_s if fit_timeout_s is None else fit_timeout_s
    server = SecAggServer(
        params,
        participants=list(tasks),
        dim=dim,
        rng=rng,
        weighted=weighted,
        clip_norm=clip_norm,
        idle_timeout_s=2.0 * max(fit_s, config.timeout_s),
        clear_metrics=clear_metrics,
    )
    asked: dict[str, Scalar] = {CLEAR_METRICS: ",".join(clear_metrics)} if clear_metrics else {}
    empty = Weights({})
    for stage in STAGES:
        requests = server.requests()
        stage_tasks: dict[ClientId, FitIns]
        if stage == "masked_input":
            stage_tasks = {
                cid: replace(tasks[cid], config={**tasks[cid].config, **extra, **asked})
                for cid, extra in requests.items()
            }
        else:
            stage_tasks = {
                cid: FitIns(weights=empty, config={"server_round": server_round, **extra})
                for cid, extra in requests.items()
            }
        timeout = fit_s if stage == "masked_input" else config.timeout_s
        for client, reply in channel.run(stage_tasks, timeout_s=timeout):
            server.receive(client, reply)
            del reply
        server.close_stage()
    return server.result()
