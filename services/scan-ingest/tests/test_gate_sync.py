"""The gate sync's decisions, in memory: what a notification asks for, and a session on a fake
listener over the memory repository (full load, follow notifications, periodic resync)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from scan_ingest.adapters.gate import CredentialGate
from scan_ingest.adapters.gate_sync import FULL_RELOAD, Changes, GateSync, notification_for
from scan_ingest.adapters.memory import GateStore, MemoryGateCredentials, StoredCredential
from scan_ingest.domain import CredentialFact, CredentialState, Standing
from scanner_auth_shared.listen import ConnectionLost

pytestmark = pytest.mark.unit


def test_a_notification_names_the_scanner_or_asks_for_everything() -> None:
    assert notification_for("sc-1") == "sc-1"
    assert notification_for("s" * 7900) == "s" * 7900
    assert notification_for("s" * 7901) == FULL_RELOAD  # NOTIFY payloads stop at 8000 bytes
    assert notification_for("é" * 3951) == FULL_RELOAD  # bytes, not characters


def test_changes_collect_scanners_until_taken() -> None:
    changes = Changes()
    assert changes.take(resync_due=False) == (False, [])
    for payload in ("sc-2", "sc-1", "sc-2"):
        changes.note(payload)
    assert changes.take(resync_due=False) == (False, ["sc-1", "sc-2"])
    assert changes.take(resync_due=False) == (False, [])


@pytest.mark.parametrize("payload", [FULL_RELOAD, ""])
def test_a_full_reload_request_or_a_due_resync_replaces_the_scanner_reloads(payload: str) -> None:
    changes = Changes()
    changes.note("sc-1")
    changes.note(payload)
    assert changes.take(resync_due=False) == (True, [])
    changes.note("sc-1")
    assert changes.take(resync_due=True) == (True, [])
    assert changes.take(resync_due=False) == (False, [])


# ------------------------------------------------------------------------------ a session


def _credential(
    store: GateStore, name: str, state: CredentialState = CredentialState.ACTIVE
) -> bytes:
    digest = hashlib.sha256(name.encode()).digest()
    fact = CredentialFact(digest, f"cred-{name}", datetime(2026, 3, 1, tzinfo=UTC))
    store.credentials[digest] = StoredCredential(f"sc-{name}", "org-1", fact, Standing(state))
    return digest


class Script:
    """A fake listener: each `idle` runs the next step (which may change the table, deliver a
    notification, move the clock) and returns whether a notification arrived; when the steps
    run out, the connection is lost (the session ends, as on a real listener)."""

    def __init__(self, sync: GateSync, clock: list[float]) -> None:
        self.sync = sync
        self.clock = clock
        self.steps: list[Callable[[], bool]] = []
        self.waits: list[float] = []

    def notify(self, payload: str, before: Callable[[], object] = lambda: None) -> None:
        def step() -> bool:
            before()
            self.sync.note(payload)
            return True

        self.steps.append(step)

    def wait(self, then: Callable[[], object] = lambda: None) -> None:
        """Nothing arrives: the whole wait passes (the clock moves by what was asked)."""

        def step() -> bool:
            self.clock[0] += self.waits[-1]
            then()
            return False

        self.steps.append(step)

    async def idle(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if not self.steps:
            raise ConnectionLost("the script ended")
        return self.steps.pop(0)()


def _rig(resync: float = 60.0) -> tuple[GateStore, CredentialGate, GateSync, Script]:
    store, gate, clock = GateStore(), CredentialGate(), [1000.0]
    sync = GateSync(
        gate,
        lambda conn: MemoryGateCredentials(store),
        resync_seconds=resync,
        chunk_rows=2,
        clock=lambda: clock[0],
    )
    return store, gate, sync, Script(sync, clock)


def _knows(gate: CredentialGate, digest: bytes, state: CredentialState | None = None) -> bool:
    found = gate.lookup(digest, time.time())
    return found is not None and (state is None or found.state == state)


async def test_a_session_loads_everything_then_reloads_the_scanners_notified() -> None:
    store, gate, sync, script = _rig()
    known = [_credential(store, f"a{i}") for i in range(5)]  # more than one chunk
    seen: dict[str, bool] = {}

    def change() -> None:
        _credential(store, "a0", CredentialState.REVOKED)
        _credential(store, "b")  # another scanner, not notified: not reloaded yet

    def check() -> None:
        seen["ready"] = sync.ready
        seen["revoked"] = _knows(gate, known[0], CredentialState.REVOKED)
        seen["unnotified"] = _knows(gate, hashlib.sha256(b"b").digest())

    script.notify("sc-a0", before=change)
    script.wait(then=check)
    assert not sync.ready
    with pytest.raises(ConnectionLost):
        await sync.session(script, conn=None)
    assert all(_knows(gate, d) for d in known) and gate.loaded
    assert seen == {"ready": True, "revoked": True, "unnotified": False}
    # The quiet wait ran until the resync was due: "b" came with it.
    assert sync.full_loads == 2 and _knows(gate, hashlib.sha256(b"b").digest())
    assert not sync.ready and not sync.following  # the connection was lost: not ready


async def test_a_session_resyncs_everything_when_due_and_on_request() -> None:
    store, gate, sync, script = _rig(resync=60.0)
    late = hashlib.sha256(b"late").digest()
    seen: dict[str, bool] = {}
    # Written without a notification of its own: another scanner's reload does not bring it.
    script.notify("sc-other", before=lambda: _credential(store, "late"))
    script.wait(then=lambda: seen.update(before_resync=_knows(gate, late)))
    script.notify(FULL_RELOAD, before=lambda: seen.update(after_resync=_knows(gate, late)))
    with pytest.raises(ConnectionLost):
        await sync.session(script, conn=None)
    assert seen == {"before_resync": False, "after_resync": True}
    assert script.waits == [60.0, 60.0, 60.0, 60.0]  # each time until the next resync is due
    assert sync.full_loads == 3  # at the start, when the resync fell due, on request


async def test_a_new_session_starts_with_a_full_load_and_forgets_earlier_notifications() -> None:
    store, gate, sync, script = _rig()
    sync.note("sc-x")  # while disconnected: the full load covers it
    _credential(store, "x")
    with pytest.raises(ConnectionLost):
        await sync.session(script, conn=None)
    assert sync.changes.take(resync_due=False) == (False, [])
    assert _knows(gate, hashlib.sha256(b"x").digest())
