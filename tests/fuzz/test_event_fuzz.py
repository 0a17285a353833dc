"""Random and malformed payloads on every topic a service consumes, the real services reading
them: no consumer crashes or stalls; every record ends up applied, dead-lettered (to
`<topic>.dlq`, by that consumer, with its original offset) or ignored (an event type the consumer
does not read), never lost; every valid event of a type a consumer reads is applied; and the
services stay ready.

Each Hypothesis example is one batch of records on the three consumed topics (random bytes,
random JSON, envelopes with random data, valid events with one field broken, valid events); the
test then waits until every record is accounted for by every consumer of its topic.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from fault_kit import Rig
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    EVENT_TYPES,
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    CloudEvent,
    PoisonMessage,
    dlq_topic,
)
from scanner_auth_shared.testing.kafka import default_source
from scanner_auth_shared.testing.signing import signer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES = int(os.environ.get("FUZZ_EVENT_BATCHES", "5"))

# consumer -> (service, topic, the event types it reads)
CONSUMERS: dict[str, tuple[str, str, set[str]]] = {
    "token-issuer.directory": (
        "token-issuer",
        DIRECTORY_TOPIC,
        {
            "ScannerRegistered",
            "ScannerRemoved",
            "UserUpserted",
            "ScannerAccessGranted",
            "ScannerAccessRevoked",
        },
    ),
    "token-issuer.authorisations": (
        "token-issuer",
        PUBLIC_TOPIC,
        {"ScannerAuthorised", "CredentialRotated"},
    ),
    "redeemer.authorisation": (
        "redeemer",
        PUBLIC_TOPIC,
        {"TokenIssued", "TokenRevoked", "TokenExpired", "ScannerDeauthorised"},
    ),
    "redeemer.directory": ("redeemer", DIRECTORY_TOPIC, {"ScannerRegistered", "ScannerRemoved"}),
    "scan-ingest.gate": (
        "scan-ingest",
        PUBLIC_TOPIC,
        {"ScannerAuthorised", "CredentialRotated", "CredentialsRevoked"},
    ),
    "notifier.email-requests": ("notifier", NOTIFICATIONS_TOPIC, {"TokenEmailRequested"}),
    "notifier.token-states": (
        "notifier",
        PUBLIC_TOPIC,
        {"TokenIssued", "TokenRevoked", "TokenExpired", "ScannerAuthorised"},
    ),
}
TOPICS = (DIRECTORY_TOPIC, PUBLIC_TOPIC, NOTIFICATIONS_TOPIC)
CONSUMED = {t: set().union(*(c[2] for c in CONSUMERS.values() if c[1] == t)) for t in TOPICS}

# ------------------------------------------------------------------------------ strategies

# Any text PostgreSQL can store: every code point but NUL and the surrogates.
TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
SAFE_TEXT = st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"])


def ids(max_size: int = 60) -> st.SearchStrategy[str]:
    return st.text(SAFE_TEXT, min_size=1, max_size=max_size).map(lambda s: f"fz-{s}")


def moments() -> st.SearchStrategy[str]:
    zones = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=11))])
    return st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
    ).map(lambda d: d.isoformat())


HEX64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
LIMITED = {  # fields with a length limit in the contract's schemas
    "serial_number": 64,
    "email": 320,
    "display_name": 200,
    "name": 200,
    "model": 50,
}


def text_field(name: str) -> st.SearchStrategy[str]:
    if name.endswith("_id") or name in (
        "issued_by",
        "revoked_by",
        "deauthorised_by",
        "requested_by",
    ):
        return ids()
    limit = LIMITED.get(name, 120)
    minimum = 3 if name == "email" else 1 if name == "serial_number" else 0
    return st.text(TEXT, min_size=minimum, max_size=limit)


def valid_data(type_: str) -> st.SearchStrategy[dict[str, Any]]:
    """Data that fits the contract's schema of `type_`, field by field."""
    model = EVENT_TYPES[type_]
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        annotation = str(info.annotation).lower()
        if name.endswith("_digest"):
            fields[name] = HEX64
        elif "datetime" in annotation:
            fields[name] = moments()
        elif name == "reason" and "literal" in annotation:
            fields[name] = st.sampled_from(["superseded", "revoked"])
        elif name == "permanent":
            fields[name] = st.booleans()
        elif name == "credential_id" and "none" in annotation:
            fields[name] = st.none() | ids()
        elif name == "credential_ids":
            fields[name] = st.lists(ids(), max_size=5)
        else:
            fields[name] = text_field(name)
    return st.fixed_dictionaries(fields)


INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what JSON encoders carry
JSON = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | st.text(TEXT),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(TEXT), inner, max_size=4),
    max_leaves=12,
)


def source_of(type_: str) -> str:
    """The source its producer writes (consumers refuse a signed event from another source)."""
    model = EVENT_TYPES.get(type_)
    return "myscanner/fuzz" if model is None else default_source(model)  # type: ignore[arg-type]


def envelope(type_: str, data: Any, *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "type": type_,
        "source": source_of(type_),
        "time": datetime.now(UTC).isoformat(),
        "subject": "fz-subject",
        "datacontenttype": "application/json",
        "data": data,
    }


@st.composite
def broken(draw: st.DrawFn, type_: str) -> dict[str, Any]:
    """A valid event of `type_` with one thing wrong in it."""
    data = draw(valid_data(type_))
    event = envelope(type_, data)
    how = draw(st.sampled_from(["drop field", "wrong type", "too long", "bad envelope"]))
    field_name = draw(st.sampled_from(sorted(data)))
    if how == "drop field":
        data.pop(field_name)
    elif how == "wrong type":
        data[field_name] = draw(INTS | st.lists(INTS, max_size=2) | st.booleans())
    elif how == "too long":
        data[field_name] = "x" * 70_000 if field_name not in LIMITED else "x" * 400
    else:
        event[draw(st.sampled_from(["specversion", "type", "source", "id", "time"]))] = draw(
            st.none() | INTS | st.just("") | st.just("not-a-time")
        )
    return event


@dataclass(frozen=True)
class Item:
    kind: str  # garbage | json | random-data | broken | valid
    value: bytes | None
    event_type: str | None = None
    event_id: str | None = None


def items_for(topic: str) -> st.SearchStrategy[Item]:
    consumed = sorted(CONSUMED[topic])
    others = sorted(set(EVENT_TYPES) - CONSUMED[topic])
    garbage = st.binary(max_size=64).map(lambda b: Item("garbage", b))
    tombstone = st.just(Item("garbage", None))
    json_value = JSON.map(lambda v: Item("json", orjson.dumps(v)))
    random_data = st.builds(
        lambda t, d: envelope(t, d),
        st.sampled_from(consumed + others[:2]),
        st.dictionaries(st.text(TEXT, max_size=20), JSON, max_size=5),
    ).map(lambda e: Item("random-data", orjson.dumps(e), e["type"], e["id"]))
    broken_event = (
        st.sampled_from(consumed)
        .flatmap(broken)
        .map(
            lambda e: Item(
                "broken",
                orjson.dumps(e),
                e.get("type"),
                e.get("id") if isinstance(e.get("id"), str) else None,
            )
        )
    )
    valid = (
        st.sampled_from(consumed + others)
        .flatmap(lambda t: valid_data(t).map(lambda d: envelope(t, d)))
        .map(lambda e: Item("valid", orjson.dumps(e), e["type"], e["id"]))
    )
    return st.one_of(garbage, tombstone, json_value, random_data, broken_event, valid, valid)


def valid_item(type_: str) -> st.SearchStrategy[Item]:
    return (
        valid_data(type_)
        .map(lambda d: envelope(type_, d))
        .map(lambda e: Item("valid", orjson.dumps(e), e["type"], e["id"]))
    )


def batch_for(topic: str) -> st.SearchStrategy[list[Item]]:
    """Random records, and a valid event of every type read from `topic`, in any order."""
    every_type = st.tuples(*(valid_item(t) for t in sorted(CONSUMED[topic])))
    return (
        st.tuples(st.lists(items_for(topic), min_size=4, max_size=10), every_type)
        .map(lambda parts: [*parts[0], *parts[1]])
        .flatmap(st.permutations)
    )


BATCH = st.fixed_dictionaries({t: batch_for(t) for t in TOPICS})

# ------------------------------------------------------------------------------ the test


@dataclass
class Sent:
    topic: str
    partition: int
    offset: int
    item: Item


async def publish(rig: Rig, batch: dict[str, list[Item]]) -> list[Sent]:
    producer = AIOKafkaProducer(
        bootstrap_servers=rig.bootstrap,
        acks="all",
        enable_idempotence=False,
        max_request_size=4_000_000,
    )
    await producer.start()
    sent = []
    try:
        for topic, items in batch.items():
            for item in items:
                meta = await producer.send_and_wait(
                    topic, item.value, key=KEY, headers=signed_as_producer(topic, item)
                )
                sent.append(Sent(topic, meta.partition, meta.offset, item))
    finally:
        await producer.stop()
    return sent


KEY = b"fz-subject"


def signed_as_producer(topic: str, item: Item) -> list[tuple[str, bytes]]:
    """The signature its producer would add, on every record that names an event type (valid or
    not): consumers verify before they parse, so unsigned records would never reach parsing."""
    model = EVENT_TYPES.get(item.event_type or "")
    if model is None or item.value is None:
        return []
    return [signer(model.producer).header(topic, KEY, item.value)]


def _envelope_type(value: bytes | None) -> str | None:
    """The event type, when `value` is a CloudEvent envelope; None otherwise."""
    try:
        return CloudEvent.from_bytes(value or b"").type
    except PoisonMessage:
        return None


async def account(rig: Rig, sent: list[Sent]) -> dict[str, dict[str, list[Sent]]]:
    """consumer -> outcome (applied / dead-lettered / ignored / unaccounted) -> records."""
    parked: set[tuple[str, str, int, int]] = set()
    for topic in TOPICS:
        for record in await rig.records(dlq_topic(topic)):
            h = {k: v.decode() for k, v in record.headers}
            parked.add(
                (
                    h.get("x-dlq-consumer", ""),
                    h.get("x-dlq-original-topic", ""),
                    int(h.get("x-dlq-original-partition") or -1),
                    int(h.get("x-dlq-original-offset") or -1),
                )
            )
    out: dict[str, dict[str, list[Sent]]] = {}
    for consumer, (service, topic, types) in CONSUMERS.items():
        mine = [s for s in sent if s.topic == topic]
        event_ids = [s.item.event_id for s in mine if s.item.event_id]
        applied = {
            r["event_id"]
            for r in await rig.fetch(
                service,
                "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
                consumer,
                event_ids,
            )
        }
        outcomes: dict[str, list[Sent]] = {
            "applied": [],
            "dead-lettered": [],
            "ignored": [],
            "unaccounted": [],
        }
        for s in mine:
            if (consumer, topic, s.partition, s.offset) in parked:
                outcomes["dead-lettered"].append(s)
            elif s.item.event_id in applied:
                outcomes["applied"].append(s)
            elif _envelope_type(s.item.value) not in (None, *types):
                outcomes["ignored"].append(s)  # an event, of a type this consumer does not read
            else:
                outcomes["unaccounted"].append(s)
        out[consumer] = outcomes
    return out


TOTALS: dict[str, int] = {}


@given(batch=BATCH)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    phases=[Phase.explicit, Phase.generate],  # each example is slow: no shrinking
    suppress_health_check=list(HealthCheck),
)
def test_random_and_malformed_events_are_applied_dead_lettered_or_ignored(
    rig: Rig, batch: dict[str, list[Item]]
) -> None:
    async def run() -> None:
        sent = await publish(rig, batch)
        deadline = time.monotonic() + 90
        while True:
            outcomes = await account(rig, sent)
            left = sum(len(o["unaccounted"]) for o in outcomes.values())
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        lost = {
            c: [
                (s.topic, s.offset, s.item.kind, (s.item.value or b"")[:120])
                for s in o["unaccounted"]
            ]
            for c, o in outcomes.items()
            if o["unaccounted"]
        }
        refused_valid = {
            c: [
                (s.item.event_type, (s.item.value or b"")[:300])
                for s in o["dead-lettered"]
                if s.item.kind == "valid"
            ]
            for c, o in outcomes.items()
        }
        refused_valid = {c: v for c, v in refused_valid.items() if v}
        for c, o in outcomes.items():
            for outcome, records in o.items():
                TOTALS[f"{c} {outcome}"] = TOTALS.get(f"{c} {outcome}", 0) + len(records)
        TOTALS["records"] = TOTALS.get("records", 0) + len(sent)
        assert not lost, f"records never applied nor dead-lettered: {lost}"
        assert not refused_valid, f"valid events dead-lettered: {refused_valid}"
        await rig.all_ready(timeout=30)

    asyncio.run(run())


def test_event_fuzz_report() -> None:
    """Prints what the fuzzing above did (run after it, in file order)."""
    if not TOTALS:
        pytest.skip("the event fuzz did not run")
    print(f"event fuzz: {EXAMPLES} batches, {TOTALS.pop('records')} records")
    for key, n in sorted(TOTALS.items()):
        print(f"  {key}: {n}")
    idle = [c for c in CONSUMERS if not TOTALS.get(f"{c} applied")]
    assert not idle, f"consumers that applied nothing over the whole fuzz: {idle}"
