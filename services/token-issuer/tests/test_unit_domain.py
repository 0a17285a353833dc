"""Pure decisions: the access policy, a token's status at read time, and the code's format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from scanner_auth_shared import crypto
from scanner_auth_shared.auth import Principal
from token_issuer import domain
from token_issuer.domain import Access, Person

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def who(org: str = "org-a", *roles: str, user: str = "u1", email: str | None = None) -> Principal:
    return Principal(user_id=user, org_id=org, roles=frozenset(roles), email=email)


# ------------------------------------------------------------------------------------ access

MANAGE = Access(can_view=True, can_manage=True)
VIEW = Access(can_view=True, can_manage=False)
NONE = Access(can_view=False, can_manage=False)


@pytest.mark.parametrize(
    ("principal", "has_grant", "expected"),
    [
        (who("org-a", "admin"), False, MANAGE),  # admin of the scanner's organisation
        (who("org-a", "admin"), True, MANAGE),
        (who("loadscan", "support"), False, MANAGE),  # support: every organisation
        (who("org-b", "support"), False, MANAGE),
        (who("org-a"), True, VIEW),  # granted user of the same organisation
        (who("org-a"), False, NONE),  # same organisation, no grant
        (who("org-b", "admin"), False, NONE),  # admin of another organisation
        (who("org-b", "admin"), True, NONE),  # ... even with a (cross-org) grant
        (who("org-b"), True, NONE),  # a cross-organisation grant is ignored
        (who("org-a", "viewer", "auditor"), False, NONE),  # unknown roles give nothing
    ],
)
def test_access_policy(principal: Principal, has_grant: bool, expected: Access) -> None:
    assert domain.access_to(principal, "org-a", has_grant=has_grant) == expected


def test_what_cannot_be_viewed_is_not_found_and_view_only_is_forbidden_to_manage() -> None:
    with pytest.raises(domain.ScannerNotFound):
        domain.require(NONE, manage=False)
    with pytest.raises(domain.ScannerNotFound):  # never 403 for what one cannot see
        domain.require(NONE, manage=True)
    with pytest.raises(domain.ManageForbidden):
        domain.require(VIEW, manage=True)
    domain.require(VIEW, manage=False)
    domain.require(MANAGE, manage=True)


ADMIN_SEEN = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # when `person(admin=True)` last signed in
SINCE = ADMIN_SEEN - timedelta(hours=1)  # admins seen since then count


def person(
    user: str = "u2",
    org: str | None = "org-a",
    *,
    grant: bool = False,
    admin: bool = False,
    email: str | None = "u2@example.test",
    admin_seen_at: datetime = ADMIN_SEEN,
) -> Person:
    return Person(
        user_id=user,
        org_id=org,
        display_name="",
        email=email,
        has_grant=grant,
        admin_seen_at=admin_seen_at if admin else None,
    )


def test_who_else_can_view_a_scanner() -> None:
    assert domain.person_can_view(person(grant=True), "org-a", SINCE)
    assert domain.person_can_view(person(admin=True), "org-a", SINCE)
    assert not domain.person_can_view(person(), "org-a", SINCE)
    assert not domain.person_can_view(person(org="org-b", grant=True), "org-a", SINCE)
    assert not domain.person_can_view(person(org="org-b", admin=True), "org-a", SINCE)
    assert not domain.person_can_view(person(org=None, grant=True), "org-a", SINCE)


def test_an_admin_flag_seen_in_a_jwt_expires() -> None:
    # Seen as admin exactly at the limit: still counts; a moment before it: no longer.
    assert domain.person_can_view(person(admin=True, admin_seen_at=SINCE), "org-a", SINCE)
    stale = person(admin=True, admin_seen_at=SINCE - timedelta(microseconds=1))
    assert not domain.person_can_view(stale, "org-a", SINCE)
    assert domain.viewers([stale], "org-a", SINCE) == []
    with pytest.raises(domain.RecipientRefused):
        domain.choose_recipient_email(who("org-a", "admin", user="me"), "u2", stale, "org-a", SINCE)
    # A grant from the directory does not expire.
    assert domain.person_can_view(
        person(grant=True, admin=True, admin_seen_at=SINCE - timedelta(days=30)), "org-a", SINCE
    )


def test_recipient_email() -> None:
    caller = who("org-a", user="me", email="me@jwt.example")
    # oneself: the directory's address, else the JWT's
    assert domain.choose_recipient_email(caller, "me", None, "org-a", SINCE) == "me@jwt.example"
    assert (
        domain.choose_recipient_email(
            caller, "me", person("me", email="me@dir.example"), "org-a", SINCE
        )
        == "me@dir.example"
    )
    no_mail = who("org-a", user="me")
    with pytest.raises(domain.RecipientRefused):
        domain.choose_recipient_email(no_mail, "me", None, "org-a", SINCE)
    # someone else: known and able to view
    assert domain.choose_recipient_email(caller, "u2", person(grant=True), "org-a", SINCE) == (
        "u2@example.test"
    )
    with pytest.raises(domain.RecipientRefused):
        domain.choose_recipient_email(caller, "u2", None, "org-a", SINCE)
    with pytest.raises(domain.RecipientRefused):
        domain.choose_recipient_email(caller, "u2", person(), "org-a", SINCE)
    with pytest.raises(domain.RecipientRefused):
        domain.choose_recipient_email(caller, "u2", person(org="org-b", grant=True), "org-a", SINCE)
    with pytest.raises(domain.RecipientRefused):
        domain.choose_recipient_email(caller, "u2", person(grant=True, email=None), "org-a", SINCE)


# ------------------------------------------------------------------------------------ tokens


def test_an_active_token_past_its_expiry_reads_expired() -> None:
    expires = T0 + timedelta(days=3)
    assert domain.token_status("active", expires, T0) == "active"
    assert domain.token_status("active", expires, expires - timedelta(microseconds=1)) == "active"
    assert domain.token_status("active", expires, expires) == "expired"
    assert domain.token_status("active", expires, expires + timedelta(days=9)) == "expired"
    for stored in ("redeemed", "revoked", "expired"):
        assert domain.token_status(stored, expires, T0) == stored
        assert domain.token_status(stored, expires, expires + timedelta(days=1)) == stored
    with pytest.raises(ValueError, match="unknown"):
        domain.token_status("lost", expires, T0)


def test_ttl_and_ending_an_active_token() -> None:
    assert domain.expiry_for(T0, 259200) == T0 + timedelta(days=3)
    assert domain.retirement_for(T0 + timedelta(seconds=1), T0) == "revoked"
    assert domain.retirement_for(T0, T0) == "expired"  # superseding a dead code expires it


def test_redemption_and_authorisation_ordering() -> None:
    expires = T0 + timedelta(hours=1)
    assert domain.redemption_applies("active", expires, T0)
    assert domain.redemption_applies("expired", expires, expires)  # swept before we heard
    assert not domain.redemption_applies("expired", expires, expires + timedelta(seconds=1))
    assert not domain.redemption_applies("revoked", expires, T0)
    assert not domain.redemption_applies("redeemed", expires, T0)

    later = T0 + timedelta(minutes=5)
    assert domain.authorisation_applies(T0, current_authorised_at=None, deauthorised_at=None)
    # fail closed: an authorisation at or before a deauthorisation is stale
    assert not domain.authorisation_applies(T0, current_authorised_at=None, deauthorised_at=T0)
    assert not domain.authorisation_applies(T0, current_authorised_at=None, deauthorised_at=later)
    assert domain.authorisation_applies(later, current_authorised_at=None, deauthorised_at=T0)
    # an older authorisation does not replace a newer one
    assert not domain.authorisation_applies(T0, current_authorised_at=later, deauthorised_at=None)
    assert domain.authorisation_applies(later, current_authorised_at=T0, deauthorised_at=None)


# ------------------------------------------------------------------------------------ code


def test_generated_codes_are_well_formed_with_a_matching_check_symbol() -> None:
    shape = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
    seen = set()
    for _ in range(500):
        code = crypto.generate_code()
        assert shape.match(code)
        flat = code.replace("-", "")
        assert crypto.luhn32_check_symbol(flat[:11]) == flat[11]
        assert crypto.normalise_code(code.lower().replace("-", " ")) == flat
        seen.add(code)
    assert len(seen) == 500


def test_the_contract_example_and_a_typo() -> None:
    assert crypto.normalise_code("YD20-66YF-H255") == "YD2066YFH255"
    assert crypto.normalise_code("yd2o 66yf h255") == "YD2066YFH255"  # O reads as 0
    with pytest.raises(crypto.CodeTypo):
        crypto.normalise_code("YD20-66YF-H256")
