"""What a run records: one `RoundRecord` per round, collected in a `History`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from fedloom.core import Scalar

__all__ = ["ClientOutcome", "History", "RoundRecord"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRecord:
    """One round's outcome.

    Metric keys are namespaced: ``fit.*`` (clients' training metrics),
    ``evaluate.*`` (federated evaluation, example-weighted, with
    ``evaluate.loss``) and ``central.*`` (the server-side evaluation function).
    Round 0 holds only the central evaluation of the initial weights.
    """

    server_round: int
    metrics: dict[str, Scalar]
    num_results: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOutcome:
    """One client's task in a round: its result, or its failure and the reason.

    `duration_s` runs from when the round sent the task to when the reply came;
    `staleness` is set for asynchronous schedules only.
    """

    server_round: int
    client_id: str
    kind: str
    metrics: dict[str, Scalar]
    num_examples: int = 0
    duration_s: float = 0.0
    failure: str | None = None
    staleness: int | None = None


class History:
    """Every round's record, in order, with helpers to read a metric's series."""

    def __init__(self, records: list[RoundRecord] | None = None) -> None:
        self._records: list[RoundRecord] = list(records or [])

    def append(self, record: RoundRecord) -> None:
        """Add the record of a finished round."""
        self._records.append(record)

    def __iter__(self) -> Iterator[RoundRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> RoundRecord:
        return self._records[index]

    def series(self, metric: str) -> list[tuple[int, float]]:
        """``(server_round, value)`` for every round that recorded numeric `metric`."""
        return [
            (r.server_round, float(r.metrics[metric]))
            for r in self._records
            if isinstance(r.metrics.get(metric), int | float)
        ]

    def last(self, metric: str) -> float:
        """The latest value of `metric`.

        Raises:
            KeyError: no round recorded it.
        """
        values = self.series(metric)
        if not values:
            raise KeyError(
                f"no round recorded metric '{metric}'; recorded: {sorted(self.metric_names())}"
            )
        return values[-1][1]

    def metric_names(self) -> set[str]:
        """Every metric key any round recorded."""
        return {key for record in self._records for key in record.metrics}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form: ``{"rounds": [record, ...]}`` (non-finite floats become None)."""
        return {"rounds": [_json_safe(asdict(record)) for record in self._records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Invert `to_dict`."""
        return cls([RoundRecord(**record) for record in data["rounds"]])


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value
