"""Run state: the store (runs, rounds, client results, model versions) and the run folder.

`open_store` opens a SQLite file or a PostgreSQL database behind one `Store`
interface; `RunFolder` writes ``history.json`` and ``weights.safetensors``.
"""

from fedloom.store.base import (
    BEST_RULE,
    STORE_FILE,
    ClientInfo,
    ClientResultInfo,
    ModelVersion,
    RoundInfo,
    RoundWrite,
    RunEvent,
    RunInfo,
    RunStatus,
    Store,
    mask_url,
    open_store,
)
from fedloom.store.runfolder import HISTORY_FILE, WEIGHTS_FILE, RunFolder

__all__ = [
    "BEST_RULE",
    "HISTORY_FILE",
    "WEIGHTS_FILE",
    "ClientInfo",
    "ClientResultInfo",
    "ModelVersion",
    "RoundInfo",
    "RoundWrite",
    "RunEvent",
    "RunFolder",
    "RunInfo",
    "RunStatus",
    "STORE_FILE",
    "Store",
    "mask_url",
    "open_store",
]
