"""A poison message on every topic each service consumes: it reaches `<topic>.dlq` once per
consumer that could not process it (original bytes, headers saying who, why and where from),
and the events after it are processed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fault_kit import Rig, eventually, new_scanners, uid

from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    dlq_topic,
)
from scanner_auth_shared.testing.kafka import publish_raw

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CONSUMERS = {
    DIRECTORY_TOPIC: {"token-issuer.directory", "redeemer.directory"},
    PUBLIC_TOPIC: {
        "token-issuer.authorisations",
        "redeemer.authorisation",
        "scan-ingest.gate",
        "notifier.token-states",
    },
    NOTIFICATIONS_TOPIC: {"notifier.email-requests"},
}


def envelope(type_: str, subject: str, data: dict[str, Any]) -> bytes:
    """A well-formed CloudEvent whose data does not fit its type's schema."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": uid("poison"),
            "type": type_,
            "source": "scanner-auth/fault-test",
            "time": "2025-01-01T00:00:00Z",
            "subject": subject,
            "datacontenttype": "application/json",
            "data": data,
        }
    )


async def test_poison_on_every_consumed_topic_is_dead_lettered_and_the_rest_goes_on(
    rig: Rig,
) -> None:
    to_authorise, to_email = new_scanners(2, "sc-poison")
    key = to_authorise.scanner_id
    garbage = {topic: f"\x00not an event on {topic} {uid('g')}".encode() for topic in CONSUMERS}
    # Each consumer meets a type it consumes with data that does not fit the type.
    misshapen = {
        DIRECTORY_TOPIC: [envelope("ScannerRegistered", key, {"scanner_id": key})],
        PUBLIC_TOPIC: [
            envelope("ScannerAuthorised", key, {"scanner_id": key, "credential_digest": 7}),
            envelope("TokenIssued", key, {"token_id": None, "scanner_id": key}),
        ],
        NOTIFICATIONS_TOPIC: [envelope("TokenEmailRequested", key, {"notification_id": "n"})],
    }
    expected: dict[str, set[tuple[str, bytes]]] = {}
    for topic, consumers in CONSUMERS.items():
        await publish_raw(rig.bootstrap, topic, key, garbage[topic])
        expected[topic] = {(c, garbage[topic]) for c in consumers}
        for poison in misshapen[topic]:
            await publish_raw(rig.bootstrap, topic, key, poison)
            type_ = orjson.loads(poison)["type"]
            takers = {
                "ScannerRegistered": consumers,
                "ScannerAuthorised": {
                    "token-issuer.authorisations",
                    "scan-ingest.gate",
                    "notifier.token-states",
                },
                "TokenIssued": {"redeemer.authorisation", "notifier.token-states"},
                "TokenEmailRequested": consumers,
            }[type_]
            expected[topic] |= {(c, poison) for c in takers}

    # The events after the poison are processed, by every consumer of every topic.
    await rig.register([to_authorise, to_email])  # directory: token-issuer and redeemer
    token = await rig.generate(to_authorise.scanner_id)
    other = await rig.generate(to_email.scanner_id)
    await rig.redeemer_knows_tokens([token["token_id"], other["token_id"]])
    r = await rig.redeem(token["code"], to_authorise.serial_number)  # redeemer applied TokenIssued
    assert r.status_code == 201, r.text
    credential = r.json()["credential"]

    async def gate_open() -> bool:  # scan-ingest applied ScannerAuthorised
        return (await rig.upload(credential, {"after": "poison"})).status_code == 202

    async def issuer_knows() -> bool:  # token-issuer applied ScannerAuthorised
        async with rig.admin() as admin:
            r = await admin.get(f"/v1/scanners/{to_authorise.scanner_id}/authorisation")
        return bool(r.status_code == 200 and r.json()["status"] == "authorised")

    async def notifier_knows() -> bool:  # notifier applied ScannerAuthorised
        return bool(
            await rig.fetchval(
                "notifier",
                "SELECT state = 'redeemed' FROM token_states WHERE token_id = $1",
                token["token_id"],
            )
        )

    await eventually(gate_open, 30, "the gate applied the authorisation after the poison")
    await eventually(issuer_knows, 30, "the token-issuer applied it after the poison")
    await eventually(notifier_knows, 30, "the notifier applied it after the poison")

    async def notifier_follows_other() -> bool:
        return bool(
            await rig.fetchval(
                "notifier",
                "SELECT count(*) FROM token_states WHERE token_id = $1",
                other["token_id"],
            )
        )

    await eventually(notifier_follows_other, 30, "the notifier follows the second token")
    await rig.email(to_email)  # notifications: the notifier records it and sends it

    async def mailed() -> bool:
        return bool(rig.stack.mail.to(to_email.viewer_email))  # type: ignore[union-attr]

    await eventually(mailed, 30, "the email requested after the poison")

    # Every poison is in its DLQ once per consumer that could not process it.
    found: dict[str, set[tuple[str, bytes]]] = {}
    problems = []
    for topic in CONSUMERS:

        async def parked(topic: str = topic) -> set[tuple[str, bytes]] | None:
            got = set()
            for record in await rig.records(dlq_topic(topic)):
                headers = {k: v.decode() for k, v in record.headers}
                if headers.get("x-dlq-original-topic") != topic:
                    problems.append(f"{topic}: wrong original topic {headers}")
                if not headers.get("x-dlq-reason") or not headers.get("x-dlq-failed-at"):
                    problems.append(f"{topic}: a DLQ record without its reason {headers}")
                got.add((headers.get("x-dlq-consumer", "?"), bytes(record.value)))
            ours = {p for p in got if p[1] in {g for _, g in expected[topic]}}
            return ours if ours >= expected[topic] else None

        try:
            found[topic] = await eventually(parked, 30, f"the poison in {dlq_topic(topic)}")
        except AssertionError:
            found[topic] = set()
    for topic in CONSUMERS:
        print(
            f"poison on {topic}: sent={len({p for _, p in expected[topic]})} "
            f"expected dead letters={len(expected[topic])} found={len(found[topic])} "
            f"consumers={sorted({c for c, _ in found[topic]})}"
        )
    assert not problems, problems
    for topic in CONSUMERS:
        assert found[topic] == expected[topic], topic
