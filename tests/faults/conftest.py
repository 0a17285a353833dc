"""The fault suite runs on the stack it shares with tests/fuzz and tests/security (one per
session: fault_kit.rig); every test makes its own scanners and users, and leaves the stack
whole for the next (fault_kit.healed). The broker-fault tests run on a stack of their own on a
3-broker cluster (fault_kit.cluster_rig), the rolling restarts on a stack of two replicas per
service (fault_kit.replicated_rig)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fault_kit import cluster_rig, healed, replicated_rig, rig

__all__ = ["cluster_rig", "healed", "replicated_rig", "rig"]
