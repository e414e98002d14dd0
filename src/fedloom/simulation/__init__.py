"""Simulation: whole federations in one process, through the deployment orchestrator."""

from fedloom.simulation.run import simulate

__all__ = ["simulate"]
