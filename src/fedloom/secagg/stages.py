"""How SecAgg+'s stages ride on fit tasks: config keys, stage names, payload encoding.

A stage request is a `FitIns` whose config holds ``secagg.stage``, ``secagg.session``
(a random id for the round's run of the protocol) and ``secagg.payload`` (a JSON
object; bytes in it are base64). A stage reply is a `FitRes` whose metrics hold
``secagg.payload``; the masked input travels as the float64 tensor ``secagg.masked``
(integers below ``2^52``, so exact). The masked-input request may list, in
``secagg.clear_metrics`` (comma-separated), privacy-accounting metrics
(`fedloom.privacy.local.ACCOUNTING_METRICS`) the client sends in the clear in that
reply's metrics; no other per-client metric leaves it. This module has no
cryptography, so runtimes can recognise stage tasks without loading it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from fedloom.core import FitIns, Scalar, Task
from fedloom.errors import SecAggAborted

__all__ = [
    "CLEAR_METRICS",
    "MASKED",
    "PAYLOAD",
    "SESSION",
    "STAGE",
    "STAGES",
    "b64",
    "clear_metric_names",
    "dump_payload",
    "is_stage_task",
    "load_payload",
    "unb64",
]

STAGE = "secagg.stage"
SESSION = "secagg.session"
PAYLOAD = "secagg.payload"
MASKED = "secagg.masked"
CLEAR_METRICS = "secagg.clear_metrics"
STAGES = ("setup", "share_keys", "masked_input", "unmask")
"""The stages of a round, in order."""


def is_stage_task(task: Task) -> bool:
    """Whether `task` is a secure-aggregation stage (a fit task naming its stage)."""
    return isinstance(task, FitIns) and STAGE in task.config


def clear_metric_names(config: Mapping[str, Scalar]) -> tuple[str, ...]:
    """The metric names a masked-input request asks to see in the clear (may be none)."""
    listed = config.get(CLEAR_METRICS)
    if not isinstance(listed, str):
        return ()
    return tuple(name for name in listed.split(",") if name)


def b64(data: bytes) -> str:
    """`data` as base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, *, stage: str, what: str) -> bytes:
    """The bytes of base64 `text`.

    Raises:
        SecAggAborted: `text` is not base64.
    """
    if not isinstance(text, str):
        raise SecAggAborted(f"{what} must be base64 text, got {type(text).__name__}.", stage=stage)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SecAggAborted(f"{what} is not base64 ({exc}).", stage=stage) from exc


def load_payload(values: Mapping[str, Scalar], *, stage: str, sender: str) -> dict[str, Any]:
    """The JSON object in ``values["secagg.payload"]``.

    Raises:
        SecAggAborted: it is missing or not a JSON object.
    """
    text = values.get(PAYLOAD)
    if not isinstance(text, str):
        raise SecAggAborted(
            f"{sender}'s '{stage}' message has no '{PAYLOAD}' text; expected a JSON object. "
            "Run the same fedloom version on both sides.",
            stage=stage,
        )
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SecAggAborted(
            f"{sender}'s '{stage}' payload is not JSON ({exc}).", stage=stage
        ) from exc
    if not isinstance(payload, dict):
        raise SecAggAborted(
            f"{sender}'s '{stage}' payload must be a JSON object, got {type(payload).__name__}.",
            stage=stage,
        )
    return payload


def dump_payload(payload: Mapping[str, Any]) -> str:
    """`payload` as compact JSON text."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)
