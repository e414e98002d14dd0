"""A client's side of SecAgg+: one `SecAggClient` per round, driven stage by stage.

An honest client checks every request before it answers: the stages come in
order, once each, for the session it was set up with and within the deadline;
the peers named are its neighbours; enough of them remain that its secrets can be
rebuilt only by ``t`` holders; and no peer is ever reported both alive and dropped,
so it never reveals both the self-mask share and the mask-key share of one peer.
Any violation raises `SecAggAborted` (`StageOrderError`, `StageTimeout`) and the
session is discarded. `SecAggSessions` keeps the sessions of the clients a
runtime hosts and turns stage tasks into replies.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedloom.core import (
    ClientId,
    Config,
    Vector,
)
from fedloom.errors import SecAggAborted, StageOrderError, StageTimeout
from fedloom.privacy.clipping import clip_update, l2_norm
from fedloom.secagg import _crypto, shamir
from fedloom.secagg.quantize import quantize
from fedloom.secagg.stages import (
    SESSION,
    STAGES,
    b64,
    dump_payload,
    load_payload,
    unb64,
)

__all__ = ["MaskingParams", "SecAggClient"]


@dataclass(frozen=True, kw_only=True)
class MaskingParams:
    """What the server fixes for the round in the setup stage."""

    threshold: int
    num_clients: int
    clipping_range: float
    quantization_bits: int
    modulus_bits: int
    weighted: bool
    clip_norm: float | None
    idle_timeout_s: float

    def __post_init__(self) -> None:
        """Refuse values no honest server sends (ValueError, reported as an abort)."""
        counts = (self.threshold, self.num_clients, self.quantization_bits, self.modulus_bits)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise ValueError(f"counts and bit widths must be ints, got {counts}")
        if not isinstance(self.weighted, bool):
            raise ValueError(f"weighted must be a bool, got {self.weighted!r}")
        reals = [self.clipping_range, self.idle_timeout_s]
        if self.clip_norm is not None:
            reals.append(self.clip_norm)
        for value in reals:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"expected a finite number > 0 (deadlines too), got {value!r}")


@dataclass
class _Secrets:
    encryption_key: Any  # X25519PrivateKey
    mask_seed: bytes
    mask_key: Any  # X25519PrivateKey
    self_seed: bytes = b""
    keys: dict[ClientId, tuple[bytes, bytes]] = field(default_factory=dict)
    shares: dict[ClientId, tuple[int, int]] = field(default_factory=dict)  # (b, seed) for peers
    pair_keys: dict[ClientId, bytes] = field(default_factory=dict)  # AES-GCM key per peer


def _fail(stage: str, client_id: ClientId, problem: str) -> SecAggAborted:
    return SecAggAborted(
        f"client '{client_id}' aborted secure aggregation at stage '{stage}': {problem}",
        stage=stage,
        client_id=client_id,
    )


class SecAggClient:
    """One client's run of the protocol for one round (a session).

    Args:
        client_id: this client's id, as the server names it.
        clock: time source for the stage deadline (injectable for tests).
    """

    def __init__(self, client_id: ClientId, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self._clock = clock
        self._done = ""  # the last stage answered
        self._session = ""
        self._deadline = math.inf
        self._index = 0
        self._neighbours: dict[ClientId, int] = {}
        self._params: MaskingParams | None = None
        self._secrets: _Secrets | None = None
        self._revealed: dict[ClientId, str] = {}

    @property
    def stage(self) -> str:
        """The last stage this client answered ("" before setup)."""
        return self._done

    @property
    def params(self) -> MaskingParams:
        """The round's parameters from the setup stage.

        Raises:
            StageOrderError: the session was not set up, or is over.
        """
        params, _ = self._require()
        return params

    def _enter(self, stage: str, config: Config) -> dict[str, Any]:
        """Check that `stage` may run now; its payload."""
        expected = STAGES[STAGES.index(self._done) + 1] if self._done in STAGES[:-1] else None
        if stage != "setup" and stage != expected:
            after = f"after '{self._done}'" if self._done else "before 'setup'"
            raise StageOrderError(
                f"client '{self.client_id}' got stage '{stage}' {after}; the stages run "
                f"{' -> '.join(STAGES)}, each once. The session is discarded.",
                stage=stage,
                client_id=self.client_id,
            )
        session = config.get(SESSION)
        if stage != "setup" and session != self._session:
            raise StageOrderError(
                f"client '{self.client_id}' got stage '{stage}' for session {session!r:.40}, "
                f"but it is in session {self._session!r}. The session is discarded.",
                stage=stage,
                client_id=self.client_id,
            )
        if stage != "setup" and self._clock() > self._deadline:
            raise StageTimeout(
                f"client '{self.client_id}' got stage '{stage}' after its "
                f"{self._params.idle_timeout_s if self._params else 0:g} s deadline; the "
                "session is discarded.",
                stage=stage,
                client_id=self.client_id,
            )
        return load_payload(config, stage=stage, sender="the server")

    def _answered(self, stage: str) -> None:
        self._done = stage
        idle = self._params.idle_timeout_s if self._params else 0.0
        self._deadline = self._clock() + idle

    # --- stage 0 --------------------------------------------------------------------------

    def setup(self, config: Config) -> dict[str, str]:
        """Learn the round's neighbours and parameters; return this client's two public keys."""
        if self._done:
            raise StageOrderError(
                f"client '{self.client_id}' got 'setup' again in the same session (after "
                f"'{self._done}'); a session runs once.",
                stage="setup",
                client_id=self.client_id,
            )
        payload = self._enter("setup", config)
        session = config.get(SESSION)
        if not isinstance(session, str) or not session:
            raise _fail("setup", self.client_id, "the request names no session.")
        try:
            params = MaskingParams(**payload["params"])
            index = int(payload["index"])
            neighbours = {str(k): int(v) for k, v in dict(payload["neighbours"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail("setup", self.client_id, f"malformed setup payload ({exc}).") from exc
        holders = len(neighbours) + 1
        indices = [index, *neighbours.values()]
        if self.client_id in neighbours or min(indices) < 1 or len(set(indices)) != holders:
            raise _fail(
                "setup",
                self.client_id,
                "neighbour indices must be distinct and >= 1, self excluded.",
            )
        if not (2 * params.threshold > holders and params.threshold <= holders):
            raise _fail(
                "setup",
                self.client_id,
                f"threshold t={params.threshold} for {holders} share holders; an honest client "
                f"needs {holders // 2 + 1} <= t <= {holders}, so that no two disjoint groups "
                "of holders can rebuild both of its secrets.",
            )
        if not (1 <= params.quantization_bits < params.modulus_bits <= 52):
            raise _fail("setup", self.client_id, "quantization or modulus bits out of range.")
        self._session, self._index, self._neighbours, self._params = (
            session,
            index,
            neighbours,
            params,
        )
        mask_seed = secrets.token_bytes(16)
        self._secrets = _Secrets(
            encryption_key=_crypto.new_private_key(),
            mask_seed=mask_seed,
            mask_key=_crypto.mask_private_key(mask_seed, session.encode()),
        )
        self._answered("setup")
        return {
            "c": b64(_crypto.public_bytes(self._secrets.encryption_key)),
            "s": b64(_crypto.public_bytes(self._secrets.mask_key)),
        }

    # --- stage 1 --------------------------------------------------------------------------

    def share_keys(self, config: Config) -> dict[str, str]:
        """Secret-share the self-mask seed and mask key; return the shares, encrypted per peer."""
        payload = self._enter("share_keys", config)
        params, own = self._require()
        keys = payload.get("keys")
        if not isinstance(keys, dict):
            raise _fail("share_keys", self.client_id, "the request holds no 'keys' object.")
        strangers = sorted(set(keys) - set(self._neighbours))
        if strangers:
            raise _fail(
                "share_keys",
                self.client_id,
                f"keys of clients that are not neighbours: {strangers}.",
            )
        decoded: dict[ClientId, tuple[bytes, bytes]] = {}
        for peer, pair in keys.items():
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _fail("share_keys", self.client_id, f"peer '{peer}' has no key pair.")
            c = unb64(pair[0], stage="share_keys", what=f"peer '{peer}' encryption key")
            s = unb64(pair[1], stage="share_keys", what=f"peer '{peer}' mask key")
            decoded[peer] = (c, s)
        own_keys = (
            _crypto.public_bytes(own.encryption_key),
            _crypto.public_bytes(own.mask_key),
        )
        every = [key for pair in [*decoded.values(), own_keys] for key in pair]
        if len(set(every)) != len(every):
            raise _fail("share_keys", self.client_id, "two public keys are the same.")
        if len(decoded) + 1 < params.threshold:
            raise _fail(
                "share_keys",
                self.client_id,
                f"only {len(decoded)} neighbours remain; with itself that is fewer than the "
                f"threshold t={params.threshold}, so its secrets could not be rebuilt.",
            )
        own.keys = decoded
        own.self_seed = secrets.token_bytes(16)
        holders = {peer: self._neighbours[peer] for peer in decoded}
        xs = [self._index, *holders.values()]
        b_shares = shamir.split(own.self_seed, xs=xs, threshold=params.threshold)
        s_shares = shamir.split(own.mask_seed, xs=xs, threshold=params.threshold)
        own.shares[self.client_id] = (b_shares[self._index], s_shares[self._index])
        ciphertexts = {}
        for peer, x in holders.items():
            key = self._pair_key(decoded[peer][0], peer)
            plaintext = _share_bytes(b_shares[x], s_shares[x])
            ciphertexts[peer] = b64(
                _crypto.encrypt(key, plaintext, self._aad(self.client_id, peer))
            )
        self._answered("share_keys")
        return ciphertexts

    # --- stage 2 --------------------------------------------------------------------------

    def masked_input(
        self, config: Config, update: Vector, weight: int, rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Decrypt the shares sent to this client; return its masked, quantized update.

        The result is ``w * q(update) || w || f + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^bits``
        as float64 (exact integers), with ``v`` over the neighbours whose shares arrived
        and ``f`` 1 when the update's norm is within the clip norm (central DP), else 0.
        """
        payload = self.check_masked_input(config)
        params, own = self._require()
        self._open_shares(payload, own)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise _fail(
                "masked_input", self.client_id, f"weight must be an int >= 0, got {weight!r}."
            )
        limit = ((1 << params.modulus_bits) - 1) // (
            ((1 << params.quantization_bits) - 1) * params.num_clients
        )
        if weight > limit:
            raise _fail(
                "masked_input",
                self.client_id,
                f"its weight (num_examples={weight}) is over {limit}, the most that cannot "
                f"overflow 2**{params.modulus_bits} with {params.num_clients} clients. Lower "
                "quantization_bits or raise modulus_bits.",
            )
        vector: Vector = np.asarray(update, dtype=np.float64)
        within = 0
        if params.clip_norm is not None:  # central DP: clip here, the server adds the noise
            within = int(l2_norm(vector) <= params.clip_norm)
            vector = clip_update(vector, params.clip_norm)
        values = np.empty(vector.size + 2, dtype=np.uint64)
        values[:-2] = quantize(
            vector, clipping_range=params.clipping_range, bits=params.quantization_bits, rng=rng
        )
        values[:-2] *= np.uint64(weight)
        values[-2] = weight
        values[-1] = within
        expander = _crypto.MaskExpander(values.size)
        session = self._session.encode()
        expander.apply(
            values, _crypto.derive(own.self_seed, b"fedloom-secagg self|" + session, 16), sign=1
        )
        for peer in own.shares:
            if peer == self.client_id:
                continue
            seed = _crypto.agree(
                own.mask_key, own.keys[peer][1], b"fedloom-secagg pair|" + session, 16
            )
            sign = 1 if self._index < self._neighbours[peer] else -1
            expander.apply(values, seed, sign=sign)
        values &= np.uint64((1 << params.modulus_bits) - 1)
        self._answered("masked_input")
        return values.astype(np.float64)

    def check_masked_input(self, config: Config) -> dict[str, Any]:
        """Check that the masked-input stage may run now (before training); its payload."""
        return self._enter("masked_input", config)

    def _open_shares(self, payload: Mapping[str, Any], own: _Secrets) -> None:
        params, _ = self._require()
        shares = payload.get("shares")
        if not isinstance(shares, dict):
            raise _fail("masked_input", self.client_id, "the request holds no 'shares' object.")
        strangers = sorted(set(shares) - set(own.keys))
        if strangers:
            raise _fail(
                "masked_input",
                self.client_id,
                f"shares from clients whose keys it never got: {strangers}.",
            )
        if len(shares) + 1 < params.threshold:
            raise _fail(
                "masked_input",
                self.client_id,
                f"shares came from only {len(shares)} neighbours; with itself that is fewer "
                f"than the threshold t={params.threshold}.",
            )
        for peer, text in shares.items():
            message = unb64(text, stage="masked_input", what=f"the share from '{peer}'")
            key = self._pair_key(own.keys[peer][0], peer)
            plaintext = _crypto.decrypt(key, message, self._aad(peer, self.client_id))
            own.shares[peer] = _parse_share(plaintext)

    # --- stage 3 --------------------------------------------------------------------------

    def unmask(self, config: Config) -> dict[str, dict[str, str]]:
        """Reveal the self-mask share of each survivor and the mask-key share of each dropout."""
        payload = self._enter("unmask", config)
        params, own = self._require()
        survivors, dropped = payload.get("survivors"), payload.get("dropped")
        if not (isinstance(survivors, list) and isinstance(dropped, list)):
            raise _fail(
                "unmask", self.client_id, "the request needs 'survivors' and 'dropped' lists."
            )
        alive, gone = {str(peer) for peer in survivors}, {str(peer) for peer in dropped}
        both = sorted(alive & gone)
        if both:
            raise _fail(
                "unmask",
                self.client_id,
                f"the server marked {both} both dropped and alive; revealing both shares of a "
                "peer would expose its update.",
            )
        peers = set(own.shares) - {self.client_id}
        if self.client_id in gone or (alive | gone) - {self.client_id} != peers:
            raise _fail(
                "unmask",
                self.client_id,
                f"survivors and dropouts must split exactly the neighbours whose shares it "
                f"holds ({sorted(peers)}), got survivors {sorted(alive)}, dropped {sorted(gone)}.",
            )
        alive.add(self.client_id)
        if len(alive) < params.threshold:
            raise _fail(
                "unmask",
                self.client_id,
                f"only {len(alive)} of its neighbourhood survived, fewer than the threshold "
                f"t={params.threshold}; unmasking so few would expose their updates.",
            )
        revealed: dict[str, dict[str, str]] = {"b": {}, "s": {}}
        for peer in sorted(alive | gone):
            kind = "b" if peer in alive else "s"
            if self._revealed.setdefault(peer, kind) != kind:  # never both shares of one peer
                raise _fail("unmask", self.client_id, f"asked for both shares of '{peer}'.")
            b_share, s_share = own.shares[peer]
            value = b_share if kind == "b" else s_share
            revealed[kind][peer] = b64(value.to_bytes(shamir.SHARE_BYTES, "big"))
        self._answered("unmask")
        self._secrets = None  # nothing of the session is needed again
        return revealed

    # --- helpers --------------------------------------------------------------------------

    def _require(self) -> tuple[MaskingParams, _Secrets]:
        if self._params is None or self._secrets is None:
            raise StageOrderError(
                f"client '{self.client_id}' has no live session.",
                stage=self._done or "setup",
                client_id=self.client_id,
            )
        return self._params, self._secrets

    def _pair_key(self, peer_public: bytes, peer: ClientId) -> bytes:
        _, own = self._require()
        cached = own.pair_keys.get(peer)
        if cached is None:
            ids = sorted((self.client_id, peer))
            info = f"fedloom-secagg enc|{self._session}|{ids[0]}|{ids[1]}".encode()
            cached = own.pair_keys[peer] = _crypto.agree(own.encryption_key, peer_public, info)
        return cached

    def _aad(self, sender: ClientId, receiver: ClientId) -> bytes:
        return dump_payload({"session": self._session, "from": sender, "to": receiver}).encode()


def _share_bytes(b_share: int, s_share: int) -> bytes:
    return b_share.to_bytes(shamir.SHARE_BYTES, "big") + s_share.to_bytes(shamir.SHARE_BYTES, "big")


def _parse_share(plaintext: bytes) -> tuple[int, int]:
    size = shamir.SHARE_BYTES
    if len(plaintext) != 2 * size:
        raise SecAggAborted(
            f"a decrypted share has {len(plaintext)} bytes; expected {2 * size}.",
            stage="masked_input",
        )
    return int.from_bytes(plaintext[:size], "big"), int.from_bytes(plaintext[size:], "big")
