"""The security suite runs on the stack it shares with tests/faults and tests/fuzz (one per
session: fault_kit.rig)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "faults"))

from fault_kit import healed, rig

__all__ = ["healed", "rig"]
