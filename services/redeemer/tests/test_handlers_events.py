"""The redeemer's own views, from the events it consumes, on the memory fakes: token events in
any order, the directory's serial numbers and removals, and the throttle housekeeping."""

from __future__ import annotations

from datetime import timedelta

import pytest

from redeemer import domain, handlers
from redeemer.domain import CodeRefused

from .conftest import World

pytestmark = pytest.mark.unit


async def test_a_token_issued_makes_the_code_redeemable(world: World):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    row = world.store.tokens[issued.token_id]
    assert (row.status, row.scanner_id) == ("active", "sc-1")
    assert (await world.redeem(issued.code, "LVS-0001")).scanner_id == "sc-1"


async def test_a_revocation_that_overtakes_its_token_issued_keeps_the_token_revoked(
    world: World,
):
    await world.register("sc-1", "LVS-0001")
    issued, data = world.token_issued("sc-1")
    await world.revoke(issued)  # unknown yet: recorded as revoked, without a digest
    assert world.store.tokens[issued.token_id].code_digest is None
    await world.apply(handlers.on_token_issued, data)
    await world.apply(handlers.on_token_issued, data)  # and again: nothing changes
    row = world.store.tokens[issued.token_id]
    assert (row.status, row.code_digest) == ("revoked", data.code_digest)
    refused = await world.refused(issued.code, "LVS-0001")
    assert isinstance(refused, CodeRefused) and refused.reason == "revoked"


async def test_an_expiry_that_overtakes_its_token_issued_keeps_the_token_expired(world: World):
    await world.register("sc-1", "LVS-0001")
    issued, data = world.token_issued("sc-1")
    await world.expire(issued)
    await world.apply(handlers.on_token_issued, data)
    refused = await world.refused(issued.code, "LVS-0001")
    assert isinstance(refused, CodeRefused) and refused.reason == "expired"


async def test_endings_apply_to_active_tokens_only(world: World):
    await world.register("sc-1", "LVS-0001")
    expiring = await world.issue("sc-1")
    await world.expire(expiring)
    await world.revoke(expiring)  # too late: it already ended
    assert world.store.tokens[expiring.token_id].status == "expired"

    used = await world.issue("sc-1")
    await world.redeem(used.code, "LVS-0001")
    await world.revoke(used)
    await world.expire(used)
    assert world.store.tokens[used.token_id].status == "redeemed"

    revoked = await world.issue("sc-1")
    await world.revoke(revoked)
    await world.expire(revoked)
    assert world.store.tokens[revoked.token_id].status == "revoked"


async def test_a_code_on_two_tokens_finds_the_active_one_not_the_latest(world: World):
    """The same digest on two tokens (the same code drawn twice): the active one is used, even
    when an ended one was issued after it."""
    await world.register("sc-1", "LVS-0001")
    active, active_data = world.token_issued("sc-1")
    await world.apply(handlers.on_token_issued, active_data)
    world.store.advance(1)
    later, later_data = world.token_issued("sc-1")
    await world.apply(
        handlers.on_token_issued,
        later_data.model_copy(update={"code_digest": active_data.code_digest}),
    )
    await world.revoke(later)
    assert (await world.redeem(active.code, "LVS-0001")).scanner_id == "sc-1"
    assert world.store.tokens[active.token_id].status == "redeemed"


async def test_the_serial_number_view_follows_the_directory(world: World):
    await world.register("sc-1", "LVS-0001")
    await world.register("sc-1", "LVS-0001-B")  # the directory corrected the serial number
    first = await world.issue("sc-1")
    refused = await world.refused(first.code, "LVS-0001")
    assert isinstance(refused, CodeRefused) and refused.reason == "serial_mismatch"
    assert (await world.redeem(first.code, "LVS-0001-B")).scanner_id == "sc-1"


async def test_a_removed_scanner_stays_removed_and_its_codes_are_refused(world: World):
    await world.remove("sc-2")  # removed before (as far as we can tell) it was registered
    await world.register("sc-2", "LVS-0002")
    assert world.store.scanners["sc-2"].removed is True
    second = await world.issue("sc-2")
    refused = await world.refused(second.code, "LVS-0002")
    assert isinstance(refused, CodeRefused) and refused.reason == "serial_mismatch"

    await world.register("sc-3", "LVS-0003")
    third = await world.issue("sc-3")
    await world.remove("sc-3")
    refused = await world.refused(third.code, "LVS-0003")
    assert isinstance(refused, CodeRefused) and refused.reason == "serial_mismatch"


async def test_housekeeping_forgets_idle_throttles_once_their_locks_have_passed(world: World):
    world.config = handlers.Config(
        pepper=world.config.pepper,
        throttle=domain.ThrottlePolicy(serial_failures=2, serial_lock=timedelta(days=2)),
    )
    await world.refused("YD20-66YF-H255", "LOCKED")
    await world.refused("YD20-66YF-H255", "LOCKED")  # locked for two days
    await world.refused("YD20-66YF-H255", "IDLE", "198.51.100.1")
    world.store.advance(3600)
    await world.refused("YD20-66YF-H255", "RECENT", "198.51.100.2")
    retention = 3000.0

    await handlers.forget_stale_throttles(world.uow(), retention)
    serial = domain.serial_key
    assert set(world.store.serials) == {serial("LOCKED"), serial("RECENT")}
    assert set(world.store.addresses) == {"198.51.100.2"}  # CLIENT_IP's and .1 idle too long

    world.store.advance(2 * 86400)
    await handlers.forget_stale_throttles(world.uow(), retention)
    assert world.store.serials == {} and world.store.addresses == {}
