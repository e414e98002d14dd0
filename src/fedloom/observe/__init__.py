"""Watching runs: a progress bar, TensorBoard event files, a run catalog and the web dashboard.

- `progress`: `ProgressBar`, a bar over the rounds with per-round metric lines;
- `tensorboard`: `TensorBoardLogger`, global and per-client metrics as event files;
- `catalog`: `open_catalog`, one read-only view over a store or many run folders;
- `dashboard`: `start_dashboard`, the web page and its read-only JSON API.

`ProgressBar` needs ``rich`` (a dependency of fedloom); it is imported only
when this package is, never by ``import fedloom``. The other modules are
imported from their own paths, so this package stays light.
"""

from fedloom.observe.progress import ProgressBar, format_metrics

__all__ = ["ProgressBar", "format_metrics"]
