"""Credentials after redemption, on the memory fakes: rotation only from the current
credential, its grace period, replacement by a new redemption, revocation by a
deauthorisation (by this service's order, whatever the token-issuer's clock says), the rotation
limit."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from redeemer import domain
from redeemer.domain import CannotRotate, NotAuthenticated, RotationLimited
from redeemer.handlers import Config
from scanner_auth_shared.crypto import CREDENTIAL_PREFIX
from scanner_auth_shared.events import CredentialRotated, CredentialsRevoked

from .conftest import ORG, PEPPER, World

pytestmark = pytest.mark.unit


@pytest.fixture
async def world() -> World:
    world = World(Config(pepper=PEPPER, rotation_grace=timedelta(seconds=60)))
    await world.register("sc-1", "LVS-0001")
    await world.register("sc-2", "LVS-0002")
    return world


async def test_rotation_gives_a_new_credential_and_the_old_one_works_through_its_grace(
    world: World,
):
    first = await world.authorised()
    world.store.advance(5)
    rotated = await world.rotate(first.credential)

    assert rotated.credential != first.credential
    assert rotated.credential.startswith(CREDENTIAL_PREFIX)
    assert rotated.previous_valid_until == world.store.clock + timedelta(seconds=60)
    assert await world.standing(rotated.credential) == "current"
    assert await world.standing(first.credential) == "grace"
    new = world.store.credentials[rotated.credential_id]
    assert new.previous_credential_id == first.credential_id
    assert new.issued_at == world.store.clock
    [event] = world.store.events(CredentialRotated)
    assert event.subject == "sc-1" and world.store.published[-1].key == "sc-1"
    assert CredentialRotated.model_validate(event.data) == CredentialRotated(
        scanner_id="sc-1",
        org_id=ORG,
        credential_id=rotated.credential_id,
        credential_digest=hashlib.sha256(rotated.credential.encode()).hexdigest(),
        previous_credential_id=first.credential_id,
        previous_valid_until=rotated.previous_valid_until,
        rotated_at=world.store.clock,
    )

    world.store.advance(59.999)
    assert await world.standing(first.credential) == "grace"
    world.store.advance(0.001)
    assert await world.standing(first.credential) == "ended"
    assert await world.standing(rotated.credential) == "current"
    # The new one rotates in turn.
    third = await world.rotate(rotated.credential)
    assert await world.standing(third.credential) == "current"
    assert await world.standing(rotated.credential) == "grace"


async def test_only_the_current_credential_rotates(world: World):
    first = await world.authorised()
    await world.rotate(first.credential)
    events = len(world.store.events())
    with pytest.raises(CannotRotate):  # in its grace period
        await world.rotate(first.credential)
    world.store.advance(61)
    with pytest.raises(CannotRotate):  # past it
        await world.rotate(first.credential)
    assert len(world.store.events()) == events
    assert len(world.store.credentials) == 2


async def test_rotation_refuses_what_it_did_not_issue(world: World):
    unknown = f"{CREDENTIAL_PREFIX}{secrets.token_urlsafe(32)}"
    for presented in (None, "", "not-a-credential", unknown):
        with pytest.raises(NotAuthenticated) as caught:
            await world.rotate(presented)
        assert caught.value.headers == {"WWW-Authenticate": "Bearer"}
        assert await world.standing(presented or "") == "unknown"
    assert world.store.events() == []


async def test_a_new_redemption_replaces_every_earlier_credential(world: World):
    first = await world.authorised()
    rotated = await world.rotate(first.credential)  # first in grace, rotated current
    third = await world.authorised()
    assert await world.standing(first.credential) == "ended"
    assert await world.standing(rotated.credential) == "ended"
    assert await world.standing(third.credential) == "current"
    with pytest.raises(CannotRotate):
        await world.rotate(rotated.credential)
    await world.rotate(third.credential)
    statuses = sorted(c.status for c in world.store.credentials.values())
    assert statuses == ["active", "replaced", "replaced", "rotating"]


async def test_a_deauthorisation_revokes_every_live_credential_and_names_them(world: World):
    first = await world.authorised()
    rotated = await world.rotate(first.credential)  # both live: one in grace, one current
    other = await world.authorised("sc-2", "LVS-0002")
    world.store.advance(1)

    deauthorised = await world.deauthorise("sc-1")
    assert await world.standing(first.credential) == "ended"
    assert await world.standing(rotated.credential) == "ended"
    with pytest.raises(CannotRotate):
        await world.rotate(rotated.credential)
    assert await world.standing(other.credential) == "current"  # another scanner's
    [event] = world.store.events(CredentialsRevoked)
    assert event.subject == "sc-1" and world.store.published[-1].key == "sc-1"
    assert event.source == "scanner-auth/redeemer"
    assert CredentialsRevoked.model_validate(event.data) == CredentialsRevoked(
        scanner_id="sc-1",
        org_id=ORG,
        credential_ids=sorted([first.credential_id, rotated.credential_id]),
        reason="deauthorised",
        revoked_at=world.store.clock,
        cause_event_id=deauthorised.id,
    )

    # A credential issued after it is untouched by it; a second deauthorisation revokes it.
    world.store.advance(1)
    later = await world.authorised()
    assert await world.standing(later.credential) == "current"
    await world.deauthorise("sc-1")
    assert await world.standing(later.credential) == "ended"
    assert world.store.data(CredentialsRevoked)[-1].credential_ids == [later.credential_id]
    assert {c.status for c in world.store.credentials.values()} == {"revoked", "active"}


@pytest.mark.parametrize("skew", [-10.0, -300.0, 10.0, 300.0])
async def test_a_deauthorisation_revokes_whatever_the_token_issuers_clock_says(
    world: World, skew: float
):
    """Issue 18: the token-issuer's clock running behind (a redemption just before the
    deauthorisation looks issued after it) or ahead changes nothing: order decides."""
    first = await world.authorised()
    world.store.advance(0.5)
    await world.deauthorise("sc-1", at=world.store.clock + timedelta(seconds=skew))
    assert await world.standing(first.credential) == "ended"
    assert world.store.data(CredentialsRevoked)[-1].credential_ids == [first.credential_id]
    # And a credential issued afterwards is born alive, stamped by our own clock.
    world.store.advance(0.5)
    second = await world.authorised()
    assert second.authorised_at == world.store.clock
    assert await world.standing(second.credential) == "current"


async def test_a_deauthorisation_of_a_scanner_without_live_credentials_still_says_so(
    world: World,
):
    await world.deauthorise("sc-1")
    [data] = world.store.data(CredentialsRevoked)
    assert data.credential_ids == [] and data.scanner_id == "sc-1"


async def test_rotations_are_limited_per_scanner_per_hour(world: World):
    world.config = Config(
        pepper=PEPPER, rotation_grace=timedelta(seconds=60), rotation_limit_per_hour=3
    )
    current = (await world.authorised()).credential
    for _ in range(3):
        world.store.advance(60)
        current = (await world.rotate(current)).credential
    world.store.advance(60)
    events = len(world.store.events())
    with pytest.raises(RotationLimited) as refused:
        await world.rotate(current)
    # The first of the three rotations (3 minutes ago) leaves the hour in 57 minutes.
    assert refused.value.retry_after == 57 * 60
    assert refused.value.headers == {"Retry-After": str(57 * 60)}
    assert len(world.store.events()) == events  # nothing emitted, nothing changed
    assert await world.standing(current) == "current"

    world.store.advance(57 * 60 - 1)
    with pytest.raises(RotationLimited) as again:
        await world.rotate(current)
    assert again.value.retry_after == 1
    world.store.advance(1)
    current = (await world.rotate(current)).credential  # one left the window
    assert await world.standing(current) == "current"
    # Another scanner has its own count.
    other = (await world.authorised("sc-2", "LVS-0002")).credential
    await world.rotate(other)


def test_rotation_retry_after_is_a_sliding_window():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    minutes = [now - timedelta(minutes=m) for m in (70, 50, 30, 10)]
    assert domain.rotation_retry_after(minutes, now, 4) is None  # 70 min ago is outside
    assert domain.rotation_retry_after(minutes, now, 3) == 10 * 60  # the 50-minute-old one
    assert domain.rotation_retry_after(minutes, now, 1) == 50 * 60
    assert domain.rotation_retry_after([], now, 1) is None
    assert domain.rotation_retry_after([now - timedelta(minutes=60)], now, 1) is None
