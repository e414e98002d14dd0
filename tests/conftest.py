"""Shared test setup: make ``tests/`` importable so every test can ``import generators``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_TESTS_DIR = str(Path(__file__).parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# Property tests check behaviour, not speed (timing goals live in benchmarks/): no
# per-example deadline, so a loaded CI machine cannot fail a correct example.
settings.register_profile("fedloom", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fedloom")

# Keras 3 reads its backend once, when first imported: the tests use PyTorch's, so no
# TensorFlow install is needed (a backend chosen in the environment is kept).
os.environ.setdefault("KERAS_BACKEND", "torch")
# A throwaway PostgreSQL server for the store tests (session-wide, started on first use).
from postgres_fixtures import postgres_server, postgres_url  # noqa: E402, F401
