"""The fuzz suite runs on the stack it shares with tests/faults and tests/security (one per
session: fault_kit.rig)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "faults"))

from fault_kit import healed, rig

__all__ = ["healed", "rig"]

# Schemathesis is a development dependency of this suite; without it, the OpenAPI fuzzing is not
# collected (everything else runs).
collect_ignore = [] if importlib.util.find_spec("schemathesis") else ["test_openapi_fuzz.py"]
if collect_ignore:
    warnings.warn(
        "schemathesis is not installed: tests/fuzz/test_openapi_fuzz.py skipped", stacklevel=1
    )
