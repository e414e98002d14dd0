"""The web dashboard: runs, live round progress, clients, metric plots and configs.

`start_dashboard` serves a page (plain HTML, CSS and a script shipped in this
package; plots are inline SVG, nothing is fetched from the internet) and the
read-only JSON API it polls (`fedloom.observe.dashboard.api`) over a store.
``fedloom dashboard --store URL`` runs it on its own; ``fedloom server
--dashboard PORT`` next to a live federation.
"""

from fedloom.observe.dashboard.api import ApiError, handle, run_progress
from fedloom.observe.dashboard.server import (
    Dashboard,
    TokenCheck,
    check_exposure,
    is_loopback,
    start_dashboard,
)

__all__ = [
    "ApiError",
    "Dashboard",
    "TokenCheck",
    "check_exposure",
    "handle",
    "is_loopback",
    "run_progress",
    "start_dashboard",
]
