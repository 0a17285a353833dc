"""Event signatures (`scanner_auth_shared.signing`): what a signature binds, and what a consumer
refuses; then a forged event offered to a real consumer (in memory, TestKafkaBroker)."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker

from scanner_auth_shared.consumer import Consumer, subscribe
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CloudEvent,
    ScannerAuthorised,
    ScannerRegistered,
    dlq_topic,
    new_event,
    utcnow,
)
from scanner_auth_shared.settings import ConfigurationError, ServiceSettings
from scanner_auth_shared.signing import (
    SIGNATURE_HEADER,
    EventSigner,
    TrustPolicy,
    Unverified,
    new_private_key_text,
    policy_for,
    signer_for,
)
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

pytestmark = pytest.mark.unit

REDEEMER = EventSigner.from_text("redeemer", new_private_key_text())
ISSUER = EventSigner.from_text("token-issuer", new_private_key_text())
IMPOSTOR = EventSigner.from_text("redeemer", new_private_key_text())  # not trusted
TRUST = TrustPolicy.from_text(f"redeemer={REDEEMER.public_key},token-issuer={ISSUER.public_key}")


def _authorised(source: str = "scanner-auth/redeemer") -> CloudEvent:
    data = ScannerAuthorised(
        scanner_id="sc-1",
        org_id="o",
        token_id="t",
        serial_number="LVS-1",
        credential_id="c",
        credential_digest="ab" * 32,
        authorised_at=utcnow(),
    )
    return new_event(data, source=source)


def _verify(
    signer: EventSigner | None,
    *,
    topic: str = PUBLIC_TOPIC,
    key: bytes = b"sc-1",
    value: bytes | None = None,
    signed_topic: str | None = None,
    signed_key: bytes | None = None,
    signed_value: bytes | None = None,
    source: str = "scanner-auth/redeemer",
    producer: str = "redeemer",
) -> None:
    value = value if value is not None else _authorised(source).to_bytes()
    headers = []
    if signer is not None:
        headers.append(
            signer.header(signed_topic or topic, signed_key or key, signed_value or value)
        )
    TRUST.verify(
        producer=producer, source=source, topic=topic, key=key, value=value, headers=headers
    )


def test_the_producers_signature_verifies() -> None:
    _verify(REDEEMER)


@pytest.mark.parametrize(
    ("case", "kwargs", "reason"),
    [
        ("unsigned", {"signer": None}, "unsigned"),
        ("an untrusted key of the right service", {"signer": IMPOSTOR}, "not trusted"),
        ("another service's key", {"signer": ISSUER}, "not by redeemer"),
        (
            "moved to another topic",
            {"signer": REDEEMER, "signed_topic": "other.topic"},
            "does not match",
        ),
        (
            "moved to another key",
            {"signer": REDEEMER, "signed_key": b"sc-victim"},
            "does not match",
        ),
        ("the envelope changed", {"signer": REDEEMER, "signed_value": b"{}"}, "does not match"),
        (
            "a source that is not the producer",
            {"signer": REDEEMER, "source": "scanner-auth/token-issuer"},
            "the source",
        ),
    ],
)
def test_what_a_consumer_refuses(case: str, kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unverified, match=reason):
        _verify(**kwargs)


def test_a_garbled_signature_header_is_refused_not_a_crash() -> None:
    value = _authorised().to_bytes()
    for garbage in (b"", b"redeemer:abc", b"\xff\xfe", f"{REDEEMER.key_id}.!!!".encode()):
        with pytest.raises(Unverified):
            TRUST.verify(
                producer="redeemer",
                source="scanner-auth/redeemer",
                topic=PUBLIC_TOPIC,
                key=b"k",
                value=value,
                headers=[(SIGNATURE_HEADER, garbage)],
            )


def test_a_producer_without_a_trusted_key_is_not_checked() -> None:
    TRUST.verify(
        producer="directory",
        source="myscanner/directory",
        topic="t",
        key=None,
        value=b"{}",
        headers=[],
    )


def test_two_trusted_keys_of_one_service_rotate() -> None:
    new = EventSigner.from_text("redeemer", new_private_key_text())
    both = TrustPolicy.from_text(f"redeemer={REDEEMER.public_key},redeemer={new.public_key}")
    value = _authorised().to_bytes()
    for signer in (REDEEMER, new):
        both.verify(
            producer="redeemer",
            source="scanner-auth/redeemer",
            topic=PUBLIC_TOPIC,
            key=b"k",
            value=value,
            headers=[signer.header(PUBLIC_TOPIC, b"k", value)],
        )


def test_required_signatures_need_keys_at_start() -> None:
    settings = ServiceSettings(kafka_bootstrap_servers="k:9092", event_signatures_required=True)
    with pytest.raises(ConfigurationError, match="EVENT_SIGNING_KEY"):
        signer_for(settings, "redeemer")
    with pytest.raises(ConfigurationError, match="EVENT_TRUSTED_KEYS has no key for redeemer"):
        policy_for(settings, ["redeemer", "directory"])
    fine = ServiceSettings(
        kafka_bootstrap_servers="k:9092",
        event_signatures_required=True,
        event_trusted_keys=f"redeemer={REDEEMER.public_key}",
    )
    assert policy_for(fine, ["redeemer", "directory"]).checks("redeemer")


def test_bad_key_settings_are_refused_without_repeating_them() -> None:
    from scanner_auth_shared.settings import load_settings

    with pytest.raises(ConfigurationError) as refused:
        load_settings(
            ServiceSettings,
            kafka_bootstrap_servers="k:9092",
            event_signing_key="bm90LWEta2V5LWF0LWFsbC0xMjM0NTY=",
        )
    assert "EVENT_SIGNING_KEY" in str(refused.value)
    assert "bm90LWEta2V5" not in str(refused.value)
    with pytest.raises(ConfigurationError, match="EVENT_TRUSTED_KEYS"):
        load_settings(
            ServiceSettings, kafka_bootstrap_servers="k:9092", event_trusted_keys="redeemer"
        )


# ------------------------------------------------------------------------------ a consumer


async def test_a_forged_scanner_authorised_is_dead_lettered_and_has_no_effect() -> None:
    settings = ServiceSettings(
        kafka_bootstrap_servers="k:9092", event_trusted_keys=f"redeemer={REDEEMER.public_key}"
    )
    broker = KafkaBroker("k:9092")
    store = MemoryStore()
    applied: list[str] = []
    dead: list[dict[str, Any]] = []

    async def on_authorised(uow: Any, event: CloudEvent, data: ScannerAuthorised) -> None:
        applied.append(event.id)

    async def on_registered(uow: Any, event: CloudEvent, data: ScannerRegistered) -> None:
        applied.append(event.id)

    subscribe(
        broker,
        settings,
        Consumer(
            name="test.gate",
            topic=PUBLIC_TOPIC,
            handlers={ScannerAuthorised: on_authorised, ScannerRegistered: on_registered},
            description="t",
        ),
        lambda: MemoryUnitOfWork(store, source="scanner-auth/test"),
    )

    @broker.subscriber(dlq_topic(PUBLIC_TOPIC))
    async def parked(body: Any, msg: KafkaMessage) -> None:
        dead.append(dict(msg.headers))

    genuine, forged, by_issuer = _authorised(), _authorised(), _authorised()
    directory = new_event(
        ScannerRegistered(scanner_id="sc", org_id="o", serial_number="s"),
        source="myscanner/directory",
    )
    async with TestKafkaBroker(broker) as test:
        for event, signer in ((genuine, REDEEMER), (forged, IMPOSTOR), (by_issuer, ISSUER)):
            value = event.to_bytes()
            _, signature = signer.header(PUBLIC_TOPIC, b"sc-1", value)
            await test.publish(
                value, PUBLIC_TOPIC, key=b"sc-1", headers={SIGNATURE_HEADER: signature.decode()}
            )
        await test.publish(_authorised().to_bytes(), PUBLIC_TOPIC, key=b"sc-1")  # unsigned
        await test.publish(directory.to_bytes(), PUBLIC_TOPIC, key=b"sc")  # no directory key
    assert applied == [genuine.id, directory.id]
    assert [h["x-dlq-reason"] for h in dead] == ["unverified"] * 3
    assert "not trusted" in dead[0]["x-dlq-error"]
    assert "not by redeemer" in dead[1]["x-dlq-error"]
    assert "unsigned" in dead[2]["x-dlq-error"]
