"""Secure aggregation: SecAgg+ (Bell et al. 2020), so the server learns only the sum.

Turn it on with one option: ``Strategy(secure_aggregation=SecAggPlus())`` (or a
``[strategy.secure_aggregation]`` table in TOML). The parts:

- `params`: `SecAggPlus`, the user's option, and its per-round resolution.
- `quantize`: updates to integers modulo ``2^k`` and back, with the error bound.
- `shamir`: t-of-n secret sharing over a prime field.
- `graph`: the sparse (Harary) neighbour graph.
- `client` / `server`: the two sides of the protocol (they need ``cryptography``:
  ``pip install 'fedloom[secagg]'``); `server.run_secure_round` drives a round over
  a Channel; `sessions`: the clients' stage handler the runtimes call; `stages`:
  how stages ride on fit tasks.

Importing this package loads neither ``cryptography`` nor the protocol modules.
"""

from fedloom.secagg.params import RoundParams, SecAggPlus
from fedloom.secagg.stages import is_stage_task

__all__ = ["RoundParams", "SecAggPlus", "is_stage_task"]
