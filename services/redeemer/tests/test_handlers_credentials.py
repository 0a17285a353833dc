"""Credentials after redemption, on the memory fakes: rotation only from the current
credential, its grace period, replacement by a new redemption, revocation by a
deauthorisation."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import pytest

from redeemer.domain import CannotRotate, NotAuthenticated
from redeemer.handlers import Config
from scanner_auth_shared.crypto import CREDENTIAL_PREFIX
from scanner_auth_shared.events import CredentialRotated

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


async def test_a_deauthorisation_revokes_every_credential_issued_up_to_it(world: World):
    first = await world.authorised()
    rotated = await world.rotate(first.credential)  # both live: one in grace, one current
    other = await world.authorised("sc-2", "LVS-0002")
    world.store.advance(1)

    await world.deauthorise("sc-1")
    assert await world.standing(first.credential) == "ended"
    assert await world.standing(rotated.credential) == "ended"
    with pytest.raises(CannotRotate):
        await world.rotate(rotated.credential)
    assert await world.standing(other.credential) == "current"  # another scanner's

    # A credential issued after it is untouched by it, even when it comes again, or late.
    world.store.advance(1)
    later = await world.authorised()
    await world.deauthorise("sc-1", at=world.store.clock - timedelta(seconds=30))
    assert await world.standing(later.credential) == "current"
    assert {c.status for c in world.store.credentials.values()} == {"revoked", "active"}


async def test_a_deauthorisation_naming_a_credential_revokes_it_whatever_the_clocks(
    world: World,
):
    first = await world.authorised()
    # The token-issuer's clock is behind ours, but it names the credential: revoked anyway.
    await world.deauthorise(
        "sc-1", at=world.store.clock - timedelta(minutes=5), credential_id=first.credential_id
    )
    assert await world.standing(first.credential) == "ended"
    assert world.store.credentials[first.credential_id].status == "revoked"


async def test_the_latest_deauthorisation_is_remembered_whatever_the_order(world: World):
    late = world.store.clock + timedelta(minutes=2)
    await world.deauthorise("sc-1", at=late)
    await world.deauthorise("sc-1", at=world.store.clock)  # an older one, arriving after
    assert world.store.deauthorised_at["sc-1"] == late
    assert (await world.authorised()).authorised_at > late
