"""The second line against forged events, on the real broker with the four services running: a
principal that may write a topic (the ACLs, first line, are `test_kafka_acls.py`'s) still cannot
make a consumer act on an event its producer did not sign.

Each attack is published as a record the broker accepts (this stack's broker has no ACLs: the
case of a misconfigured or shared principal), in three forms: unsigned, signed with a key nobody
trusts, and signed with another service's real key. Every consumer of its type dead-letters each
one with reason `unverified` and it has no effect; a genuine event published after the forgeries,
on the same partition, is applied, which proves the forgeries were read before it and not merely
not yet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from fault_kit import ORG, Rig, eventually, uid

from scanner_auth_shared.crypto import credential_digest, generate_credential
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    CloudEvent,
    EventData,
    ScannerAuthorised,
    TokenIssued,
    dlq_topic,
    new_event,
)
from scanner_auth_shared.signing import EventSigner, new_private_key_text
from scanner_auth_shared.testing.kafka import default_source, read_topic
from scanner_auth_shared.testing.signing import signer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

Headers = list[tuple[str, bytes]]


def forgeries(producer: str, other: str) -> dict[str, Any]:
    """How a forger signs an event of `producer`'s: not at all, with a key of their own under
    `producer`'s name, or with the real key of `other` (a service trusted for its own events)."""
    stranger = EventSigner.from_text(producer, new_private_key_text())
    return {
        "unsigned": lambda topic, key, value: [],
        "untrusted key": lambda topic, key, value: [stranger.header(topic, key, value)],
        f"{other}'s real key": lambda topic, key, value: [signer(other).header(topic, key, value)],
    }


Place = tuple[int, int]


async def send(rig: Rig, topic: str, key: bytes, value: bytes, headers: Headers) -> Place:
    """The partition and offset the broker gave the record (an offset alone names a record
    only within its partition)."""
    producer = AIOKafkaProducer(bootstrap_servers=rig.bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()
    return int(meta.partition), int(meta.offset)


async def publish_forged(
    rig: Rig, forge: Callable[[str], EventData], producer: str, other: str
) -> dict[str, Place]:
    """Each form of the forgery `forge(form)`, published: form -> where it landed."""
    out = {}
    for form, sign in forgeries(producer, other).items():
        data = forge(form)
        event = new_event(data, source=default_source(data))
        key, value = event.subject.encode(), event.to_bytes()  # type: ignore[union-attr]
        out[form] = await send(rig, data.topic, key, value, sign(data.topic, key, value))
    return out


async def publish_genuine(rig: Rig, data: EventData) -> CloudEvent:
    event = new_event(data, source=default_source(data))
    key, value = event.subject.encode(), event.to_bytes()  # type: ignore[union-attr]
    await send(rig, data.topic, key, value, [signer(data.producer).header(data.topic, key, value)])
    return event


async def dead_lettered_as_unverified(
    rig: Rig, topic: str, consumer: str, places: list[Place]
) -> None:
    """Wait until `consumer` has parked the records at `places` of `topic`, each `unverified`.
    Other suites on this stack park records of their own from the same topic, at the same
    offsets of other partitions."""

    async def parked() -> bool:
        found = {}
        for record in await read_topic(rig.bootstrap, dlq_topic(topic), timeout=15):
            h = {k: v.decode() for k, v in record.headers}
            if h.get("x-dlq-consumer") == consumer and h.get("x-dlq-original-topic") == topic:
                place = int(h["x-dlq-original-partition"]), int(h["x-dlq-original-offset"])
                found[place] = h["x-dlq-reason"]
        wanted = {p: found.get(p) for p in places}
        if any(reason is None for reason in wanted.values()):
            return False
        assert set(wanted.values()) == {"unverified"}, wanted
        return True

    await eventually(parked, 60, f"{consumer} dead-lettered the forgeries as unverified")


async def test_a_forged_scanner_authorised_opens_no_gate(rig: Rig) -> None:
    """Issue 18.1: anyone who may produce to the public topic picks a credential, publishes its
    digest for any scanner (authorised in the future, so that no later deauthorisation would
    close it) and uploads with it."""
    [victim] = await rig.scanners(1, "forge-auth")

    def authorised(credential: str, at: datetime) -> ScannerAuthorised:
        return ScannerAuthorised(
            scanner_id=victim.scanner_id,
            org_id=ORG,
            token_id=uid("tok"),
            serial_number=victim.serial_number,
            credential_id=uid("cred"),
            credential_digest=credential_digest(credential),
            authorised_at=at,
        )

    forged_credentials: dict[str, str] = {}

    def forge(form: str) -> EventData:
        credential = forged_credentials.setdefault(form, generate_credential())
        return authorised(credential, datetime.now(UTC) + timedelta(days=1))

    places = list((await publish_forged(rig, forge, "redeemer", "token-issuer")).values())
    genuine_credential = generate_credential()
    genuine = authorised(genuine_credential, datetime.now(UTC))
    await publish_genuine(rig, genuine)

    async def gate_open() -> bool:
        return (await rig.upload(genuine_credential, {"scan": "genuine"})).status_code == 202

    await eventually(gate_open, 60, "the gate opened for the genuine credential")
    for consumer in ("scan-ingest.gate", "token-issuer.authorisations"):
        await dead_lettered_as_unverified(rig, PUBLIC_TOPIC, consumer, places)
    for form, credential in forged_credentials.items():
        answer = await rig.upload(credential, {"scan": form})
        assert answer.status_code == 401, (form, answer.status_code, answer.text)
    shown = await rig.fetchval(
        "token-issuer",
        "SELECT credential_id FROM scanners WHERE scanner_id = $1",
        victim.scanner_id,
    )
    assert shown == genuine.credential_id, "the token-issuer shows a forged authorisation"


async def test_a_forged_token_issued_moves_no_code_onto_another_scanner(rig: Rig) -> None:
    """Issue 18.2: the attacker holds a real code of their own scanner and publishes its digest
    as a code of the victim's scanner; redeeming it there would give them a credential for the
    victim."""
    own, victim = await rig.scanners(2, "forge-token")
    mine = await rig.generate(own.scanner_id)
    await rig.redeemer_knows_tokens([mine["token_id"]])
    [genuine] = [
        e
        for e in await rig.events(PUBLIC_TOPIC, "TokenIssued")
        if (e.data or {}).get("token_id") == mine["token_id"]
    ]
    moved = TokenIssued.model_validate(
        {**(genuine.data or {}), "scanner_id": victim.scanner_id, "token_id": uid("tok")}
    )
    published = await publish_forged(rig, lambda _: moved, "token-issuer", "redeemer")
    # The redeemer reads the public topic in partitions keyed by scanner: the forgeries went to
    # the victim's; a genuine code for the victim, after them, says when they have been read.
    victims_code = await rig.generate(victim.scanner_id)
    await rig.redeemer_knows_tokens([victims_code["token_id"]])
    await dead_lettered_as_unverified(
        rig, PUBLIC_TOPIC, "redeemer.authorisation", list(published.values())
    )
    rows = await rig.fetchval(
        "redeemer",
        "SELECT count(*) FROM tokens WHERE token_id = ANY($1)",
        [moved.token_id],
    )
    assert rows == 0, "the redeemer stored the forged token"
    answer = await rig.redeem(mine["code"], victim.serial_number)
    assert answer.status_code != 201, answer.text
    # The code itself is good, on the scanner it was made for.
    assert (await rig.redeem(mine["code"], own.serial_number)).status_code == 201


async def test_a_replayed_token_email_request_mails_nobody_else(rig: Rig) -> None:
    """Issue 18.3: a genuine email request, replayed with a new id, a new notification id and
    the attacker's address, would mail them the code and the serial number; replayed as it was,
    it would mail the code twice."""
    [scanner] = await rig.scanners(1, "forge-mail")
    await rig.generate(scanner.scanner_id)
    notification_id = await rig.email(scanner)
    mail = rig.stack.mail
    assert mail is not None

    async def mailed() -> bool:
        return bool(mail.to(scanner.viewer_email))

    await eventually(mailed, 60, "the genuine email")
    [record] = [
        r
        for r in await read_topic(rig.bootstrap, NOTIFICATIONS_TOPIC, timeout=15)
        # Other suites on this stack leave tombstones (no value) on the topic.
        if r.value and notification_id.encode() in r.value and b'"TokenEmailRequested"' in r.value
    ]
    genuine = CloudEvent.from_bytes(record.value)
    signature = list(record.headers)
    attacker = f"{uid('mallory')}@attacker.example"
    changed = {
        **(genuine.data or {}),
        "notification_id": uid("ntf"),
        "recipient_email": attacker,
    }
    replayed = genuine.model_copy(update={"id": uid("evt"), "data": changed}).to_bytes()
    places = [
        await send(rig, NOTIFICATIONS_TOPIC, record.key, replayed, signature),  # old signature
        await send(rig, NOTIFICATIONS_TOPIC, record.key, replayed, []),
    ]
    for form, sign in forgeries("token-issuer", "redeemer").items():
        if form != "unsigned":
            headers = sign(NOTIFICATIONS_TOPIC, record.key, replayed)
            places.append(await send(rig, NOTIFICATIONS_TOPIC, record.key, replayed, headers))
    _, as_it_was = await send(rig, NOTIFICATIONS_TOPIC, record.key, record.value, signature)
    await dead_lettered_as_unverified(rig, NOTIFICATIONS_TOPIC, "notifier.email-requests", places)

    async def read_past_the_replay() -> bool:
        committed = await rig.committed_offsets(
            "scanner-auth.notifier.email-requests", NOTIFICATIONS_TOPIC
        )
        return committed.get(record.partition, -1) > as_it_was

    await eventually(read_past_the_replay, 60, "the notifier read the exact replay")
    assert mail.to(attacker) == []
    assert len(mail.to(scanner.viewer_email)) == 1, "the exact replay was mailed again"
