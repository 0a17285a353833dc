"""The in-memory gate: lookups, updates, swaps, and what a credential costs in memory."""

from __future__ import annotations

import gc
import hashlib
import os
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from scan_ingest.adapters.gate import CredentialGate, GateBuilder, GateRow
from scan_ingest.domain import CredentialState

pytestmark = pytest.mark.unit


def row(
    n: int, state: str = "active", valid_until: datetime | None = None, org: str = "org-1"
) -> GateRow:
    return GateRow(
        hashlib.sha256(f"credential-{n}".encode()).digest(),
        f"cred-{n}",
        f"scanner-{n}",
        org,
        state,
        valid_until,
    )


def test_an_unknown_digest_is_none_and_a_known_one_is_decoded() -> None:
    gate = CredentialGate()
    assert not gate.loaded
    assert gate.lookup(row(1).digest, time.time()) is None
    gate.upsert([row(1), row(2, org="org-2")])
    found = gate.lookup(row(2).digest, time.time())
    assert found is not None
    assert (found.scanner_id, found.org_id, found.credential_id) == ("scanner-2", "org-2", "cred-2")
    assert found.state == CredentialState.ACTIVE and found.admitted
    assert len(gate) == 2


def test_states_and_deadlines_decide_admission() -> None:
    gate = CredentialGate()
    soon = datetime.now(UTC) + timedelta(seconds=60)
    gate.upsert([row(1, "rotating", soon), row(2, "replaced"), row(3, "revoked")])
    now = time.time()
    rotating = gate.lookup(row(1).digest, now)
    assert rotating is not None and rotating.admitted
    expired = gate.lookup(row(1).digest, soon.timestamp() + 0.001)
    assert expired is not None and not expired.admitted
    for n, state in ((2, CredentialState.REPLACED), (3, CredentialState.REVOKED)):
        found = gate.lookup(row(n).digest, now)
        assert found is not None and found.state == state and not found.admitted


def test_an_upsert_updates_in_place_and_a_full_load_swaps_everything() -> None:
    gate = CredentialGate()
    gate.upsert([row(1), row(2)])
    gate.upsert([row(1, "revoked")])
    assert gate.lookup(row(1).digest, time.time()).state == CredentialState.REVOKED  # type: ignore[union-attr]
    built = GateBuilder()
    built.add([row(3)])
    gate.replace_all(built)
    assert gate.loaded and len(gate) == 1
    assert gate.lookup(row(1).digest, time.time()) is None
    assert gate.lookup(row(3).digest, time.time()) is not None


def test_rows_that_cannot_be_credentials_are_skipped() -> None:
    gate = CredentialGate()
    assert gate.upsert([row(1)._replace(digest=b"short"), row(2)]) == 1
    assert gate.lookup(b"short", time.time()) is None


def test_non_ascii_ids_survive_the_packing() -> None:
    gate = CredentialGate()
    gate.upsert([row(1)._replace(scanner_id="scanner-ø-1", credential_id="cred-é", org_id="örg")])
    found = gate.lookup(row(1).digest, time.time())
    assert found is not None
    assert (found.scanner_id, found.credential_id, found.org_id) == ("scanner-ø-1", "cred-é", "örg")


def test_a_scanner_costs_at_most_300_bytes_of_memory() -> None:
    """One credential per scanner, uuid-sized ids, 200 organisations. 22,000 credentials: just
    past a resize of the dict (21,845 entries fill 32,768 slots; one more takes 65,536), so its
    slots are as sparse as they get, the costliest size per credential; and few enough for a
    unit test under tracemalloc (1,000,000 are measured by bench/gate_bench.py)."""
    n = 22_000
    rows = [
        GateRow(
            os.urandom(32), str(uuid.uuid4()), str(uuid.uuid4()), f"org-{i % 200}", "active", None
        )
        for i in range(n)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        built = GateBuilder()
        built.add(rows)
        gate = CredentialGate()
        gate.replace_all(built)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The org names themselves are in `rows` already; everything else was made by the gate.
    assert len(gate) == n
    assert used / n <= 300, f"{used / n:.0f} bytes per scanner"
