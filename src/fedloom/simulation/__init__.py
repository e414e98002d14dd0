"""Simulation: whole federations on one machine or a Ray cluster, run by the deployment loop.

`simulate` runs a federation of lazily built virtual clients; its ``engine``
option picks who runs the tasks (`ENGINES`: sequential, a process pool, Ray,
or the vectorized PyTorch engine), ``device`` where they compute, and `Fleet`
how fast and how available each simulated client is.
"""

from fedloom.simulation.engines import DEVICES, ENGINES, resolve_device
from fedloom.simulation.fleet import Fleet
from fedloom.simulation.run import simulate

__all__ = ["DEVICES", "ENGINES", "Fleet", "resolve_device", "simulate"]
