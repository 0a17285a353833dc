"""The redeemer's decisions, as pure functions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from redeemer.domain import (
    AddressThrottle,
    SerialThrottle,
    ThrottlePolicy,
    TokenView,
    address_failed,
    address_key,
    refusal,
    retry_after,
    serial_failed,
    serial_key,
    standing,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
TOKEN = TokenView(
    token_id="t1",
    scanner_id="sc-1",
    org_id="o",
    code_digest="d" * 64,
    status="active",
    expires_at=NOW + timedelta(days=3),
    scanner_serial="LVS-0001",
    scanner_removed=False,
)


def test_a_good_token_for_its_own_scanner_is_not_refused():
    assert refusal(TOKEN, "LVS-0001", NOW) is None
    assert refusal(TOKEN, "lvs-0001", NOW) is None  # serial numbers compare case-insensitively


@pytest.mark.parametrize(
    ("token", "serial", "reason"),
    [
        (None, "LVS-0001", "invalid_code"),
        (replace(TOKEN, status="revoked"), "LVS-0001", "revoked"),
        (replace(TOKEN, status="redeemed"), "LVS-0001", "already_used"),
        (replace(TOKEN, status="expired"), "LVS-0001", "expired"),
        (replace(TOKEN, expires_at=NOW), "LVS-0001", "expired"),  # judged by the clock alone
        (TOKEN, "LVS-0002", "serial_mismatch"),
        (replace(TOKEN, scanner_serial=None), "LVS-0001", "serial_mismatch"),
        (replace(TOKEN, scanner_removed=True), "LVS-0001", "serial_mismatch"),
        # the order of the checks: revoked before used before expired before the serial
        (replace(TOKEN, status="revoked", expires_at=NOW), "X", "revoked"),
        (replace(TOKEN, status="redeemed", expires_at=NOW), "X", "already_used"),
        (replace(TOKEN, expires_at=NOW), "X", "expired"),
    ],
)
def test_refusals_in_order(token, serial, reason):
    assert refusal(token, serial, NOW) == reason


def test_a_serial_locks_at_its_fifth_consecutive_failure_and_starts_counting_again():
    policy = ThrottlePolicy()
    state = SerialThrottle()
    for n in range(1, 5):
        state, locked = serial_failed(state, NOW, policy)
        assert (state.failures, locked, state.locked_until) == (n, False, None)
    state, locked = serial_failed(state, NOW, policy)
    assert locked and state == SerialThrottle(0, NOW + timedelta(minutes=15))


def test_an_address_locks_at_thirty_failures_within_a_sliding_hour():
    policy = ThrottlePolicy()
    state = AddressThrottle()
    for minute in range(29):
        state, locked = address_failed(state, NOW + timedelta(minutes=minute), policy)
        assert not locked
    # An hour after the first failure, it no longer counts: 29 in the window, no lock.
    later = NOW + timedelta(minutes=60)
    state, locked = address_failed(state, later, policy)
    assert not locked and len(state.failures) == 29
    state, locked = address_failed(state, later, policy)
    assert locked and state == AddressThrottle((), later + timedelta(hours=1))


def test_retry_after_is_the_longest_lock_in_force_in_whole_seconds():
    assert retry_after(NOW, None, None) is None
    assert retry_after(NOW, NOW - timedelta(seconds=1), None) is None
    assert retry_after(NOW, NOW + timedelta(seconds=1.2), NOW + timedelta(seconds=10)) == 10
    assert retry_after(NOW, NOW + timedelta(seconds=1.2), None) == 2
    assert retry_after(NOW, NOW + timedelta(milliseconds=1), None) == 1


def test_keys_of_serials_and_addresses():
    assert serial_key("  LVS-0001 ") == serial_key("lvs-0001")
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8:1:2:3:4:5:6") == address_key("2001:db8:1:2:ffff::1")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("unknown") == "unknown"


def test_how_a_credential_stands():
    assert standing("active", None, NOW) == "current"
    assert standing("rotating", NOW + timedelta(seconds=1), NOW) == "grace"
    assert standing("rotating", NOW, NOW) == "ended"
    assert standing("replaced", None, NOW) == "ended"
    assert standing("revoked", NOW + timedelta(hours=1), NOW) == "ended"
