"""Recording a run in a store as it goes, and resuming it after a crash.

`Recording` says which store and run; `Recording.begin` creates the run (or,
with ``resume=True``, checks the new config against the recorded one and loads
the last round recorded whole) and returns the `StoreRecorder` callback and the
`ResumePoint` for `Orchestrator.run`.

Each round the recorder writes the global weights and the strategy state
(server-optimizer moments, plug-in server state, and in simulation the virtual
clients' plug-in state) as safetensors files, atomically, then records the
round, its client results and the clients seen in one transaction that names
the files and their sha256. A process killed anywhere leaves either the whole
round in the store or none of it; resuming reads the files back only if their
checksums match.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedloom._faults import fault_point
from fedloom.core import Scalar, Vector
from fedloom.errors import ConfigError, CorruptState
from fedloom.server import Callback, ClientOutcome, History, ResumePoint, RoundRecord, RunResult
from fedloom.store.base import (
    ClientInfo,
    ClientResultInfo,
    RoundInfo,
    RoundWrite,
    RunStatus,
    Store,
)
from fedloom.store.checkpoints import (
    CHECKPOINT_DIR,
    read_model,
    read_state,
    write_round,
)
from fedloom.strategies import StrategyState

__all__ = [
    "HARMLESS_KEYS",
    "ClientStates",
    "Recording",
    "StoreRecorder",
    "config_differences",
    "run_recorded",
]

logger = logging.getLogger(__name__)

HARMLESS_KEYS = (
    "file",
    "config.run.rounds",
    "config.run.dir",
    "config.run.name",
    "config.stop",
    "config.server",
    "config.clients.evaluate",
    "config.log_level",
    "resolved.server",
    "resolved.callbacks",
    "resolved.tls",
    "resolved.tokens",
)
"""Config keys (dotted, and everything under them) a resume may change: they do not change
the math of a round (log level, deadlines, addresses, stop rules, how many rounds)."""

Roster = Callable[[], Mapping[str, Mapping[str, Scalar]]]
"""The clients connected now and what each told the server (its metadata)."""


class ClientStates(Protocol):
    """A channel whose clients' plug-in state lives in this process (simulation)."""

    def client_states(self) -> dict[str, dict[str, Vector]]:
        """Each client's kept state."""
        ...

    def restore_client_states(self, states: Mapping[str, Mapping[str, Vector]]) -> None:
        """Replace every client's kept state."""
        ...


def config_differences(
    recorded: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """The keys whose values differ, split into (changes the math, harmless).

    Keys are dotted paths (``config.strategy.lr``); each maps to ``(recorded, new)``
    with None for a key that one side lacks. Harmless keys are `HARMLESS_KEYS`.
    """
    old_flat, new_flat = _flatten(recorded), _flatten(new)
    math: dict[str, tuple[Any, Any]] = {}
    harmless: dict[str, tuple[Any, Any]] = {}
    for key in sorted(old_flat.keys() | new_flat.keys()):
        before, after = old_flat.get(key), new_flat.get(key)
        if before == after:
            continue
        is_harmless = any(key == h or key.startswith(h + ".") for h in HARMLESS_KEYS)
        (harmless if is_harmless else math)[key] = (before, after)
    return math, harmless


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat.update(_flatten(item, path + "."))
        else:
            flat[path] = item
    return flat


class StoreRecorder(Callback):
    """Records each round of run `run_id` whole in `store`, its files in ``folder/checkpoints``.

    Args:
        store: where rounds are recorded.
        run_id: the run (created already).
        folder: the run folder.
        client_states: the channel whose virtual clients keep plug-in state (simulation).
        roster: the connected clients and their metadata (deployment).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        folder: str | Path,
        *,
        client_states: ClientStates | None = None,
        roster: Roster | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.folder = Path(folder)
        self._client_states = client_states
        self._roster = roster
        self._started: float | None = None
        self._outcomes: list[ClientOutcome] = []
        self._ended = False
        self.write_s = 0.0
        """Seconds spent writing the last round's files and transaction."""

    def on_round_start(self, server_round: int) -> None:
        self._started = time.time()
        self._outcomes = []

    def on_client_result(self, outcome: ClientOutcome) -> None:
        self._outcomes.append(outcome)

    def on_checkpoint(self, record: RoundRecord, state: StrategyState) -> None:
        began = time.perf_counter()
        server_round = record.server_round
        ended = time.time()
        started = self._started if self._started is not None and server_round else ended
        groups: dict[str, Mapping[str, Vector]] = {
            "optimizer": state.optimizer,
            "plugins": state.plugins,
        }
        if self._client_states is not None:
            groups["clients"] = {
                f"{client_id}/{key}": vector
                for client_id, kept in self._client_states.client_states().items()
                for key, vector in kept.items()
            }
        model, state_path, state_sha256 = write_round(
            self.folder, server_round, state.weights, groups
        )
        results = tuple(
            ClientResultInfo(
                server_round=server_round,
                client_id=outcome.client_id,
                kind="evaluate" if outcome.kind == "evaluate" else "fit",
                metrics=dict(outcome.metrics),
                num_examples=outcome.num_examples,
                duration_s=outcome.duration_s,
                failure=outcome.failure,
                staleness=outcome.staleness,
            )
            for outcome in self._outcomes
        )
        seen: dict[str, Mapping[str, Scalar]] = {o.client_id: {} for o in self._outcomes}
        if self._roster is not None:
            seen.update(self._roster())
        clients = tuple(
            ClientInfo(client_id=name, metadata=dict(meta), first_seen=ended, last_seen=ended)
            for name, meta in seen.items()
        )
        info = RoundInfo(
            server_round=server_round,
            started_at=started,
            ended_at=ended,
            outcome="completed" if server_round else "initial",
            metrics={k: v for k, v in record.metrics.items() if _is_number(v)},  # type: ignore[misc]
            num_results=record.num_results,
            num_failures=len(record.failures),
            state_path=state_path,
            state_sha256=state_sha256,
        )
        fault_point("checkpoint", server_round)
        self.store.record_round(
            self.run_id, RoundWrite(round=info, model=model, results=results, clients=clients)
        )
        self._outcomes = []
        self._started = None
        self.write_s = time.perf_counter() - began

    def on_run_end(self, result: RunResult) -> None:
        self._ended = True
        self.store.set_status(self.run_id, "finished")
        self.store.add_event(self.run_id, "finished", {"stop_reason": result.stop_reason})

    def mark(self, status: RunStatus, reason: str) -> None:
        """Record that the run ended otherwise than by finishing (failed, interrupted)."""
        if self._ended:
            return
        self._ended = True
        self.store.set_status(self.run_id, status)
        self.store.add_event(self.run_id, status, {"reason": reason})


def run_recorded(recorder: StoreRecorder, run: Callable[[], RunResult]) -> RunResult:
    """`run()`, marking the recorded run failed or interrupted if it raises."""
    try:
        return run()
    except KeyboardInterrupt:
        recorder.mark("interrupted", "interrupted (Ctrl-C or SIGINT)")
        raise
    except Exception as exc:
        recorder.mark("failed", f"{type(exc).__name__}: {exc}")
        raise


def code_version() -> str:
    """``fedloom <version>`` of the installed package (what recorded a run)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"fedloom {version('fedloom')}"
    except PackageNotFoundError:
        return "fedloom (not installed)"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Recording:
    """Which store and run a federation records into, and whether it resumes.

    Args:
        store: the store (see `open_store`).
        run_id: the run's id (the run folder's name by default in the CLI).
        folder: the run folder; checkpoint files go to ``folder/checkpoints``.
        config: the run's configuration as recorded (compared on resume).
        seed: the run seed.
        resume: continue the recorded run `run_id` instead of creating it.
    """

    store: Store
    run_id: str
    folder: Path
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    resume: bool = False

    def begin(
        self,
        *,
        client_states: ClientStates | None = None,
        roster: Roster | None = None,
    ) -> tuple[StoreRecorder, ResumePoint | None]:
        """Create the run, or load where it resumes; the recorder and the resume point.

        Raises:
            ConfigError: the run exists and ``resume`` is False; or it does not exist and
                ``resume`` is True; or the new config changes the math of the recorded run.
            CorruptState: the last recorded round's files fail their checksums.
        """
        recorder = StoreRecorder(
            self.store, self.run_id, self.folder, client_states=client_states, roster=roster
        )
        if not self.resume:
            self.store.create_run(
                run_id=self.run_id,
                name=self.run_id,
                config=dict(self.config),
                seed=self.seed,
                code_version=code_version(),
                folder=str(self.folder.resolve()),
            )
            return recorder, None
        return recorder, self._resume(client_states)

    def _resume(self, client_states: ClientStates | None) -> ResumePoint:
        run = self.store.get_run(self.run_id)
        if self.config:
            self._check_config(run.config, run.seed)
        rounds = {info.server_round: info for info in self.store.rounds(self.run_id)}
        versions = {v.server_round: v for v in self.store.model_versions(self.run_id)}
        last = run.rounds_done
        if last not in rounds or last not in versions:
            raise CorruptState(
                f"run '{self.run_id}' in {self.store.url} says {last} rounds are done but has "
                f"no complete record of round {last} (rounds {sorted(rounds)}). The store was "
                "changed by hand or damaged: restore it, or start a new run."
            )
        weights = read_model(versions[last])
        optimizer, plugins, clients = _split_state(
            read_state(rounds[last].state_path, rounds[last].state_sha256)
        )
        if clients and client_states is None:
            logger.info("the recorded clients' state is not used: the clients keep their own")
        if client_states is not None:
            client_states.restore_client_states(clients)
        _remove_partial_files(Path(run.folder or self.folder))
        history = _history(self.store, self.run_id, [rounds[r] for r in sorted(rounds)])
        self.store.set_status(self.run_id, "running")
        self.store.add_event(self.run_id, "resumed", {"after_round": last})
        store, run_id = self.store, self.run_id
        return ResumePoint(
            server_round=last,
            state=StrategyState(weights=weights, optimizer=optimizer, plugins=plugins),
            history=history,
            weights_of=lambda server_round: store.load_weights(run_id, server_round),
        )

    def _check_config(self, recorded: dict[str, Any], recorded_seed: int) -> None:
        new = dict(self.config)
        math, harmless = config_differences(recorded, new)
        if self.seed != recorded_seed:
            math["seed"] = (recorded_seed, self.seed)
        if math:
            listed = "; ".join(f"{key}: {old!r} -> {now!r}" for key, (old, now) in math.items())
            raise ConfigError(
                f"cannot resume run '{self.run_id}': the config changes the math of the "
                f"recorded run at {', '.join(sorted(math))} ({listed}). Resume with the "
                "recorded config (restore those keys), or start a new run under another name.",
                field=sorted(math)[0],
                value=sorted(math),
            )
        if harmless:
            self.store.update_config(self.run_id, new)
            self.store.add_event(
                self.run_id,
                "config_changed",
                {key: {"recorded": old, "new": now} for key, (old, now) in harmless.items()},
            )
            logger.info(
                "resuming run '%s' with changed settings: %s", self.run_id, sorted(harmless)
            )


def _split_state(
    groups: dict[str, dict[str, Vector]],
) -> tuple[dict[str, Vector], dict[str, Vector], dict[str, dict[str, Vector]]]:
    """(optimizer, plugins, clients) from the groups `read_state` returned."""
    clients: dict[str, dict[str, Vector]] = {}
    for key, vector in groups.get("clients", {}).items():
        client_id, _, tensor = key.rpartition("/")
        clients.setdefault(client_id, {})[tensor] = vector
    return groups.get("optimizer", {}), groups.get("plugins", {}), clients


def _history(store: Store, run_id: str, rounds: list[RoundInfo]) -> History:
    """The History an uninterrupted run would hold after these rounds."""
    failures: dict[int, dict[str, str]] = {}
    for result in store.client_results(run_id):
        if result.kind == "fit" and result.failure is not None:
            failures.setdefault(result.server_round, {})[result.client_id] = result.failure
    records = [
        RoundRecord(
            server_round=info.server_round,
            metrics=dict(info.metrics),
            num_results=info.num_results,
            failures=failures.get(info.server_round, {}),
            duration_s=info.ended_at - info.started_at,
        )
        for info in rounds
        if info.server_round > 0 or info.metrics  # round 0 is in a history when evaluated
    ]
    return History(records)


def _remove_partial_files(folder: Path) -> None:
    """Temporary files of a write that a kill interrupted."""
    for partial in (folder / CHECKPOINT_DIR).glob(".*.tmp"):
        partial.unlink(missing_ok=True)
