"""Which credentials work, from the facts announced about a scanner; the ScanIngested bytes."""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from scan_ingest.domain import (
    INVALID_SCAN_ID,
    SOURCE,
    Admission,
    CredentialFact,
    CredentialRefused,
    CredentialReplaced,
    CredentialRevoked,
    CredentialState,
    GracePeriodEnded,
    InvalidScanId,
    NotAnObject,
    NotJson,
    ScannerFacts,
    Standing,
    admits,
    changed_standings,
    derive_standings,
    refusal_for,
    scan_id_for,
    scan_id_of,
    scan_ingested_bytes,
)
from scanner_auth_shared.events import CloudEvent, ScanIngested, new_event, parse_data, rfc3339

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACTIVE, ROTATING = CredentialState.ACTIVE, CredentialState.ROTATING
REPLACED, REVOKED = CredentialState.REPLACED, CredentialState.REVOKED


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def authorised(name: str, seconds: float) -> CredentialFact:
    return CredentialFact(
        digest=name.encode().ljust(32, b"."), credential_id=name, issued_at=at(seconds)
    )


def rotated(name: str, seconds: float, previous: str, grace: float) -> CredentialFact:
    return CredentialFact(
        digest=name.encode().ljust(32, b"."),
        credential_id=name,
        issued_at=at(seconds),
        previous_credential_id=previous,
        previous_valid_until=at(seconds + grace),
    )


def states(
    facts: list[CredentialFact], revoked: frozenset[str] = frozenset()
) -> dict[str, Standing]:
    derived = derive_standings(facts, revoked)
    by_digest = {f.digest: f.credential_id for f in facts}
    return {by_digest[d]: s for d, s in derived.items()}


def test_a_new_authorisation_is_active_and_replaces_every_earlier_credential() -> None:
    assert states([authorised("a", 0)]) == {"a": Standing(ACTIVE)}
    result = states([authorised("a", 0), rotated("b", 5, "a", 60), authorised("c", 10)])
    assert result == {"a": Standing(REPLACED), "b": Standing(REPLACED), "c": Standing(ACTIVE)}


def test_a_rotation_keeps_the_previous_credential_until_its_deadline() -> None:
    result = states([authorised("a", 0), rotated("b", 10, "a", 3600)])
    assert result == {"a": Standing(ROTATING, at(3610)), "b": Standing(ACTIVE)}
    chain = states([authorised("a", 0), rotated("b", 10, "a", 60), rotated("c", 20, "b", 60)])
    assert chain == {
        "a": Standing(ROTATING, at(70)),
        "b": Standing(ROTATING, at(80)),
        "c": Standing(ACTIVE),
    }
    # Announced twice with different deadlines (should not happen): the earlier one holds.
    twice = states([authorised("a", 0), rotated("b", 10, "a", 60), rotated("c", 11, "a", 30)])
    assert twice["a"] == Standing(ROTATING, at(41))


def test_a_revocation_closes_exactly_the_ids_it_names_whatever_their_issue_time() -> None:
    """Issue 18: by identity, not by clock. A credential issued (by its stamp) far in the future
    is revoked like any other; one not named is untouched."""
    facts = [authorised("a", 0), rotated("b", 10, "a", 60), authorised("f", 10**6)]
    assert states(facts[:2], frozenset({"a", "b"})) == {
        "a": Standing(REVOKED),
        "b": Standing(REVOKED),
    }
    assert states(facts, frozenset({"f"}))["f"] == Standing(REVOKED)
    assert states(facts[:2], frozenset({"z"})) == {
        "a": Standing(ROTATING, at(70)),
        "b": Standing(ACTIVE),
    }
    assert states([*facts[:2], authorised("c", 30)], frozenset({"a", "b"}))["c"] == Standing(ACTIVE)


def test_a_rotation_from_a_dead_credential_is_dead_too() -> None:
    """Rotating after a deauthorisation or a re-authorisation should be refused upstream; if it
    slipped through, the gate fails closed."""
    assert states([authorised("a", 0), rotated("b", 10, "a", 60)], frozenset({"a"}))["b"] == (
        Standing(REVOKED)
    )
    after_replacement = states([authorised("a", 0), authorised("c", 5), rotated("b", 10, "a", 60)])
    assert after_replacement == {
        "a": Standing(REPLACED),
        "c": Standing(ACTIVE),
        "b": Standing(REPLACED),
    }


def test_two_authorisations_in_the_same_instant_leave_exactly_one_active() -> None:
    result = states([authorised("x", 0), authorised("y", 0)])
    assert sorted(s.state for s in result.values()) == [ACTIVE, REPLACED]


@pytest.mark.parametrize("revoked", [frozenset(), frozenset({"a", "b"}), frozenset("abcde")])
def test_the_order_in_which_facts_arrive_does_not_matter(revoked: frozenset[str]) -> None:
    facts = [
        authorised("a", 0),
        rotated("b", 5, "a", 60),
        authorised("c", 10),
        rotated("d", 20, "c", 30),
        rotated("e", 30, "d", 30),
    ]
    expected = states(facts, revoked)
    for order in itertools.permutations(facts):
        assert states(list(order), revoked) == expected
    # Applying facts one by one, deriving each time (as the writer does), ends in the same place.
    for order in itertools.permutations(facts):
        seen: list[CredentialFact] = []
        for fact in order:
            seen.append(fact)
            result = states(seen, revoked)
        assert result == expected


def test_admits() -> None:
    assert admits(ACTIVE, math.inf, 100.0)
    assert admits(ROTATING, 100.0, 100.0)
    assert not admits(ROTATING, 100.0, 100.001)
    assert not admits(REPLACED, math.inf, 0.0)
    assert not admits(REVOKED, math.inf, 0.0)


def test_the_clients_scan_id_is_kept_and_a_missing_one_is_made_up() -> None:
    assert scan_id_for({"scan_id": "scan-0001"}) == "scan-0001"
    assert scan_id_for({"scan_id": "s"}) == "s"
    assert scan_id_for({"scan_id": "s" * 200}) == "s" * 200
    fresh = scan_id_for({"volume_m3": 1})
    assert uuid.UUID(fresh).version == 4
    assert fresh != scan_id_for({"volume_m3": 1})


@pytest.mark.parametrize("value", [None, 7, 7.5, True, "", "s" * 201, ["a"], {"id": "a"}])
def test_a_scan_id_that_is_not_a_string_of_1_to_200_characters_is_refused(value: object) -> None:
    # The OpenAPI document declares scan_id a string of 1 to 200 characters: present and
    # anything else is refused (422), never silently replaced by a fresh id.
    with pytest.raises(InvalidScanId) as refused:
        scan_id_for({"scan_id": value, "volume_m3": 1})
    assert str(refused.value) == INVALID_SCAN_ID
    assert INVALID_SCAN_ID == "scan_id must be a string of 1 to 200 characters"


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b"", NotJson),
        (b"not json", NotJson),
        (b'{"a": 1', NotJson),
        (b"\xef\xbb\xbf{}", NotJson),  # a BOM: not RFC 8259
        (b'{"a": NaN}', NotJson),
        (b'{"a": "\xff"}', NotJson),  # not UTF-8
        (b"[1, 2]", NotAnObject),
        (b'"text"', NotAnObject),
        (b"42", NotAnObject),
        (b"null", NotAnObject),
        (b'{"scan_id": 7}', InvalidScanId),
    ],
)
def test_a_body_that_is_not_a_json_object_with_a_usable_scan_id_is_refused(
    body: bytes, refusal: type[Exception]
) -> None:
    with pytest.raises(refusal):
        scan_id_of(body)


def test_the_scan_id_of_a_json_object_body() -> None:
    assert scan_id_of(b' {"scan_id": "s-1", "volume_m3": 7} ') == "s-1"
    assert uuid.UUID(scan_id_of(b"{}")).version == 4


def _admission(state: CredentialState) -> Admission:
    return Admission("sc-1", "org-1", "cred-1", state, admitted=False)


def test_each_dead_standing_has_its_own_refusal_and_message() -> None:
    cases = {
        REVOKED: (CredentialRevoked, "the scanner's authorisation was withdrawn"),
        REPLACED: (
            CredentialReplaced,
            "this credential was replaced: the scanner was authorised again",
        ),
        ROTATING: (GracePeriodEnded, "this credential was rotated and its grace period has ended"),
    }
    for state, (kind, message) in cases.items():
        refusal = refusal_for(_admission(state))
        assert type(refusal) is kind and isinstance(refusal, CredentialRefused)
        assert str(refusal) == message
        assert refusal.state == state and refusal.admission.credential_id == "cred-1"


def test_only_the_standings_that_differ_from_the_stored_ones_are_to_store() -> None:
    a, b = authorised("a", 0), rotated("b", 10, "a", 60)
    stored_before_rotation = {a.digest: Standing(ACTIVE)}
    changed = changed_standings(ScannerFacts([a, b], stored_before_rotation))
    assert changed == {a.digest: Standing(ROTATING, at(70)), b.digest: Standing(ACTIVE)}
    settled = {a.digest: Standing(ROTATING, at(70)), b.digest: Standing(ACTIVE)}
    assert changed_standings(ScannerFacts([a, b], settled)) == {}
    assert changed_standings(ScannerFacts([a, b], settled, frozenset({"a", "b"}))) == {
        a.digest: Standing(REVOKED),
        b.digest: Standing(REVOKED),
    }
    assert changed_standings(ScannerFacts([], {}, frozenset({"a"}))) == {}


def test_a_final_standing_is_never_undone_even_when_its_facts_are_gone() -> None:
    """The purge forgets old facts (a revocation, the authorisation that replaced a credential):
    what they made final stays so; only a more final standing may follow."""
    a, c = authorised("a", 0), authorised("c", 10)
    assert changed_standings(ScannerFacts([a], {a.digest: Standing(REVOKED)})) == {}
    assert changed_standings(ScannerFacts([a], {a.digest: Standing(REPLACED)})) == {}
    replaced_then_revoked = ScannerFacts([a, c], {a.digest: Standing(REPLACED)}, frozenset("a"))
    assert changed_standings(replaced_then_revoked) == {
        a.digest: Standing(REVOKED),
        c.digest: Standing(ACTIVE),
    }


def test_scan_ingested_bytes_is_the_contracts_event_with_the_body_as_sent() -> None:
    body = b' {"scan_id": "s-1", "volume_m3": 12.5, "points": [[1, 2], [3, 4]], "big": 1e300} '
    received_at = rfc3339(datetime(2026, 3, 1, 12, 0, 0, 1234, tzinfo=UTC))
    assert received_at == "2026-03-01T12:00:00.001234Z"
    raw = scan_ingested_bytes(
        scan_id="s-1",
        scanner_id="sc-1",
        org_id="org-1",
        credential_id="cred-1",
        received_at=received_at,
        body=body,
    )
    event = CloudEvent.from_bytes(raw)
    data = parse_data(event)
    expected = ScanIngested(
        scan_id="s-1",
        scanner_id="sc-1",
        org_id="org-1",
        credential_id="cred-1",
        received_at=received_at,
        size_bytes=len(body),
        scan=orjson.loads(body),
    )
    assert data == expected
    reference = new_event(expected, source=SOURCE)
    assert (event.type, event.source, event.subject, event.datacontenttype, event.specversion) == (
        reference.type,
        reference.source,
        reference.subject,
        reference.datacontenttype,
        "1.0",
    )
    assert event.time == datetime(2026, 3, 1, 12, 0, 0, 1234, tzinfo=UTC)
    assert set(orjson.loads(raw)) == set(orjson.loads(reference.to_bytes()))
    assert uuid.UUID(event.id)
