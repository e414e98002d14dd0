"""Watching a run: a progress bar with per-round metrics (logging, TensorBoard, dashboard later).

`ProgressBar` needs ``rich`` (a dependency of fedloom); it is imported only
when this package is, never by ``import fedloom``.
"""

from fedloom.observe.progress import ProgressBar, format_metrics

__all__ = ["ProgressBar", "format_metrics"]
