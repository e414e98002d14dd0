"""Run state on disk: the run folder with history.json and weights.safetensors."""

from fedloom.store.runfolder import HISTORY_FILE, WEIGHTS_FILE, RunFolder

__all__ = ["HISTORY_FILE", "WEIGHTS_FILE", "RunFolder"]
