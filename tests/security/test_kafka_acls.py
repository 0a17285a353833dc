"""Who may write which topic is enforced by the broker (issue #18).

A real Apache Kafka (KRaft, from Maven Central's jars) with a SASL_SSL client listener (TLS with a
CA made for the test, SCRAM-SHA-512) and the StandardAuthorizer, no ACL meaning no access. Its
users and ACLs are the deployment's own: the Strimzi KafkaUsers of deploy/k8s/users (one per
service, the directory's, an example reader of the public topic), read and applied by
`scanner_auth_shared.testing.acls` as Strimzi's User Operator applies them; plus a "stranger",
a principal with a password and no ACL. Records are read back as the super user (the broker's
plaintext loopback listener, the operator's).

- Forgeries: the reader and the stranger producing a forged ScannerAuthorised and TokenIssued to
  the public topic, and replaying a genuine TokenEmailRequested to the notifications topic, are
  refused by the broker, and nothing lands on the topic.
- Every principal against every topic (describe, write, read) and every consumer group (join and
  commit): the broker's answer is what its KafkaUser grants, and tests/deploy/test_manifests.py
  checks that each service's KafkaUser grants exactly what its code uses. Named cases of the
  issue are asserted on their own.
- The whole system with its ACLs: the four services as `scanner-auth serve` processes, each with
  its own principal over SASL_SSL, the directory publishing as the directory, one journey
  (code issued, emailed, redeemed, a scan accepted), and a poisoned record on each consumed topic
  dead-lettered by every consumer (their DLQ writes).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from prometheus_client.parser import text_string_to_metric_families

from scanner_auth.devstack import Stack, System
from scanner_auth.services import SERVICES
from scanner_auth_shared.events import (
    ALL_TOPICS,
    DIRECTORY_TOPIC,
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    SCANS_TOPIC,
    CloudEvent,
    ScannerAuthorised,
    TokenEmailRequested,
    TokenIssued,
    dlq_topic,
    new_event,
    utcnow,
)
from scanner_auth_shared.infra import EmbeddedPostgres
from scanner_auth_shared.testing.acls import (
    SecuredKafka,
    allows,
    kafka_users,
    secured_topics,
    service_user,
    start_secured_kafka,
)
from scanner_auth_shared.testing.kafka import publish_events, read_topic, wait_for_events
from scanner_auth_shared.testing.signing import signer
from scanner_auth_shared.testing.waiting import wait_until

USERS = kafka_users()
SERVICE_USERS = {service: service_user(USERS, service).name for service in sorted(SERVICES)}
DIRECTORY = "myscanner-directory"
READER = "myscanner-example-reader"
STRANGER = "stranger"  # a password, no ACL
PRINCIPALS = [*SERVICE_USERS.values(), DIRECTORY, READER, STRANGER]
TOPICS = [t.name for t in secured_topics()]
# Every literal group of every KafkaUser, one inside the reader's prefix and one of no one.
GROUPS = sorted(
    {r.name for u in USERS.values() for r in u.rules if r.resource_type == "group"}
    - {r.name for u in USERS.values() for r in u.rules if r.pattern == "prefix"}
    | {"myscanner.example-reader.probe", "scanner-auth.nobody"}
)
SEED = b"acl-probe: not an event"  # on partition 0 of every topic of the matrix broker
SCANNER = "sc-forged-1"


def principal(name: str) -> str:
    return f"User:{name}"


def granted(name: str, resource_type: str, resource: str, operation: str) -> bool:
    """What the deployment's KafkaUsers let `name` do (Kafka's rules, offline)."""
    return allows(USERS.values(), principal(name), resource_type, resource, operation)


@pytest.fixture(autouse=True)
def healed() -> None:
    """This module runs on brokers and processes of its own, not on the stack the rest of the
    security suite shares (tests/faults' rig, whose autouse `healed` this replaces here)."""


@pytest.fixture(scope="module")
def secured(private_tmp: Any) -> Iterator[SecuredKafka]:
    """The secured broker with the deployment's ACLs, a record on partition 0 of every topic."""
    kafka = start_secured_kafka(private_tmp("kafka-acls"), strangers=[STRANGER])
    try:
        asyncio.run(_seed(kafka))
        yield kafka
    finally:
        kafka.stop()


async def _seed(kafka: SecuredKafka) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.admin_bootstrap, acks="all")
    await producer.start()
    try:
        for topic in TOPICS:
            await producer.send_and_wait(topic, SEED, partition=0)
    finally:
        await producer.stop()


def _producer(kafka: SecuredKafka, name: str, *, idempotent: bool = False, **options: Any) -> Any:
    """A producer as `name`; `idempotent` as the services' own (KAFKA_IDEMPOTENCE=auto)."""
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        acks="all",
        enable_idempotence=idempotent,
        request_timeout_ms=10_000,
        **kafka.security(name),
        **options,
    )


async def produce(
    kafka: SecuredKafka,
    name: str,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    idempotent: bool = False,
) -> None:
    producer = _producer(kafka, name, idempotent=idempotent)
    try:
        await producer.start()
        await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def on_topic(kafka: SecuredKafka, topic: str) -> list[Any]:
    """Every record of `topic`, read as the super user."""
    return await read_topic(kafka.admin_bootstrap, topic)


# ------------------------------------------------------------------------------ forgeries


def forged_scanner_authorised() -> CloudEvent:
    now = utcnow()
    data = ScannerAuthorised(
        scanner_id=SCANNER, org_id="org-quarry", token_id="tok-forged", serial_number="LVS-1",
        credential_id="cred-forged", credential_digest="ab" * 32, authorised_at=now,
    )  # fmt: skip
    return new_event(data, source="scanner-auth/redeemer")


def forged_token_issued() -> CloudEvent:
    now = utcnow()
    data = TokenIssued(
        token_id="tok-forged", scanner_id=SCANNER, org_id="org-quarry", issued_by="u-alice",
        issued_at=now, expires_at=now + timedelta(days=3), code_digest="cd" * 32,
    )  # fmt: skip
    return new_event(data, source="scanner-auth/token-issuer")


def token_email_requested() -> CloudEvent:
    now = utcnow()
    data = TokenEmailRequested(
        notification_id="n-replayed", token_id="tok-1", scanner_id=SCANNER, org_id="org-quarry",
        recipient_user_id="u-mallory", recipient_email="mallory@evil.example",
        requested_by="u-alice", expires_at=now + timedelta(days=3), scanner_name="Quarry 1",
        serial_number="LVS-1", sealed_code="c2VhbGVk",
    )  # fmt: skip
    return new_event(data, source="scanner-auth/token-issuer")


@pytest.mark.integration
@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
@pytest.mark.parametrize("attacker", [READER, STRANGER])
@pytest.mark.parametrize(
    ("forgery", "topic"),
    [
        (forged_scanner_authorised, PUBLIC_TOPIC),
        (forged_token_issued, PUBLIC_TOPIC),
    ],
    ids=["ScannerAuthorised", "TokenIssued"],
)
async def test_a_forged_event_from_another_principal_is_refused_by_the_broker(
    secured: SecuredKafka, forgery: Any, topic: str, attacker: str, idempotent: bool
) -> None:
    """Even signed with its producer's real key (a stolen signing key): the broker refuses the
    write, and the topic does not hold it. A plain producer is refused on the topic
    (TopicAuthorizationFailed); an idempotent one already when it asks for a producer id
    (ClusterAuthorizationFailed: the principal may write no topic at all)."""
    event = forgery()
    key, value = SCANNER.encode(), event.to_bytes()
    model_producer = "redeemer" if event.type == "ScannerAuthorised" else "token-issuer"
    headers = [signer(model_producer).header(topic, key, value)]
    refusal = ClusterAuthorizationFailedError if idempotent else TopicAuthorizationFailedError
    with pytest.raises(refusal):
        await produce(
            secured, attacker, topic, value, key=key, headers=headers, idempotent=idempotent
        )
    assert not [r for r in await on_topic(secured, topic) if r.value == value]


@pytest.mark.integration
@pytest.mark.parametrize("attacker", [READER, STRANGER])
async def test_a_replayed_token_email_request_is_refused_by_the_broker(
    secured: SecuredKafka, attacker: str
) -> None:
    """A genuine TokenEmailRequested (written by the token-issuer's principal, signed with its
    key), its exact key, value and headers sent again by another principal: refused; the topic
    holds the one genuine record."""
    event = token_email_requested()
    await publish_events(
        secured.bootstrap,
        NOTIFICATIONS_TOPIC,
        event,
        **secured.security(SERVICE_USERS["token-issuer"]),
    )
    genuine = [
        r for r in await on_topic(secured, NOTIFICATIONS_TOPIC) if r.value == event.to_bytes()
    ]
    assert len(genuine) == 1
    record = genuine[0]
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(
            secured, attacker, NOTIFICATIONS_TOPIC, record.value, key=record.key,
            headers=list(record.headers),
        )  # fmt: skip
    again = [r for r in await on_topic(secured, NOTIFICATIONS_TOPIC) if r.value == record.value]
    assert len(again) == 1


@pytest.mark.integration
async def test_a_wrong_password_no_tls_or_an_unknown_ca_gets_no_connection(
    secured: SecuredKafka,
) -> None:
    """SASL with a wrong password fails authentication; a client without TLS, or one that does
    not trust the cluster's CA, never gets to speak Kafka."""
    name = SERVICE_USERS["notifier"]
    good = secured.security(name)
    without_tls = {k: v for k, v in good.items() if k != "ssl_context"}
    attempts: dict[str, dict[str, Any]] = {
        "wrong password": secured.security(name, password="not-the-password"),
        "no TLS": {**without_tls, "security_protocol": "SASL_PLAINTEXT"},
        "system CAs only": {**good, "ssl_context": ssl.create_default_context()},
    }
    for what, options in attempts.items():
        producer = AIOKafkaProducer(
            bootstrap_servers=secured.bootstrap, request_timeout_ms=5_000, **options
        )
        started = time.monotonic()
        with pytest.raises(KafkaError) as refused:
            await producer.start()
        await producer.stop()
        assert isinstance(refused.value, KafkaConnectionError), f"{what}: {refused.value!r}"
        assert time.monotonic() - started < 30, what


@pytest.mark.integration
async def test_without_tls_the_sasl_listener_enforces_the_same_acls(private_tmp: Any) -> None:
    """`ApacheKafka(scram_users=...)` without `tls` (SASL_PLAINTEXT, what `start_secured_kafka(
    tls=False)` gives): the same KafkaUsers, the same answers."""
    names = {SERVICE_USERS["notifier"], READER}
    plain = start_secured_kafka(
        private_tmp("kafka-plain"), users={n: USERS[n] for n in names}, tls=False
    )
    try:
        assert plain.broker.security_protocol == "SASL_PLAINTEXT" and plain.ssl_context() is None
        await produce(plain, SERVICE_USERS["notifier"], NOTIFICATIONS_TOPIC, SEED, idempotent=True)
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(plain, SERVICE_USERS["notifier"], PUBLIC_TOPIC, SEED, idempotent=True)
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(plain, READER, PUBLIC_TOPIC, SEED)
        with pytest.raises(ClusterAuthorizationFailedError):
            await produce(plain, STRANGER, PUBLIC_TOPIC, SEED, idempotent=True)
    finally:
        plain.stop()


# ------------------------------------------------------------------------------ the matrix


async def can_describe_and_write(kafka: SecuredKafka, name: str) -> dict[str, tuple[bool, bool]]:
    """topic -> (listed in its metadata, a write accepted), for every topic, as `name`."""
    producer = _producer(kafka, name)
    await producer.start()
    try:
        listed = set((await producer.client.fetch_all_metadata()).topics())
        answers = {}
        for topic in TOPICS:
            try:
                await producer.send_and_wait(topic, SEED, partition=0)
                wrote = True
            except TopicAuthorizationFailedError:
                wrote = False
            answers[topic] = (topic in listed, wrote)
        return answers
    finally:
        await producer.stop()


async def can_read(kafka: SecuredKafka, name: str, topic: str) -> bool:
    """Whether `name` fetches the record on partition 0 of `topic`. Without Describe the topic
    is not in its metadata; with Describe but not Read the fetch is refused."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, **kafka.security(name)
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return False
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        try:
            batch = await consumer.getmany(tp, timeout_ms=15_000)
        except TopicAuthorizationFailedError:
            return False
        assert batch.get(tp), f"{name} may read {topic} but fetched nothing in 15 s"
        return True
    finally:
        await consumer.stop()


async def can_consume_as(kafka: SecuredKafka, name: str, group: str, topic: str) -> bool:
    """Whether `name` joins consumer group `group` on `topic`, gets a record and commits."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
        **kafka.security(name),
    )
    try:
        await consumer.start()
        record = await asyncio.wait_for(consumer.getone(), 30)
        await consumer.commit()
        tp = TopicPartition(record.topic, record.partition)
        assert await consumer.committed(tp) == record.offset + 1
        return True
    except (GroupAuthorizationFailedError, TopicAuthorizationFailedError):
        return False
    finally:
        await consumer.stop()


async def can_fetch_group_offsets(kafka: SecuredKafka, name: str, group: str) -> bool:
    """What KEDA does with the service's principal (and the notifier with its own groups):
    OffsetFetch of the group, ListOffsets of its topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, **kafka.security(name))
    await admin.start()
    try:
        await admin.list_consumer_group_offsets(group)
        return True
    except GroupAuthorizationFailedError:
        return False
    finally:
        await admin.close()


@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", PRINCIPALS)
async def test_the_broker_allows_each_principal_exactly_what_its_kafka_user_grants(
    secured: SecuredKafka, name: str
) -> None:
    """Every topic (in its metadata, written, read) and every consumer group (joined, offset
    committed, offsets fetched): the broker's answer equals its KafkaUser's grant (none for the
    stranger)."""
    wrong = []
    for topic, (listed, wrote) in (await can_describe_and_write(secured, name)).items():
        if listed != granted(name, "topic", topic, "Describe"):
            wrong.append(f"describe {topic}: broker says {listed}")
        if wrote != granted(name, "topic", topic, "Write"):
            wrong.append(f"write {topic}: broker says {wrote}")
    readable = []
    for topic in TOPICS:
        read = await can_read(secured, name, topic)
        readable += [topic] if read else []
        if read != granted(name, "topic", topic, "Read"):
            wrong.append(f"read {topic}: broker says {read}")
    topic = PUBLIC_TOPIC if PUBLIC_TOPIC in readable else (readable or [PUBLIC_TOPIC])[0]
    for group in GROUPS:
        joined = await can_consume_as(secured, name, group, topic)
        expected = granted(name, "group", group, "Read") and topic in readable
        if joined != expected:
            wrong.append(f"consume as {group} on {topic}: broker says {joined}")
        fetched = await can_fetch_group_offsets(secured, name, group)
        if fetched != granted(name, "group", group, "Describe"):
            wrong.append(f"fetch the offsets of {group}: broker says {fetched}")
    assert not wrong, f"{name}:\n" + "\n".join(wrong)


@pytest.mark.integration
async def test_the_issues_named_cases(secured: SecuredKafka) -> None:
    """The notifier may not produce to the public topic, the redeemer not to the directory
    topic, scan-ingest may not read the notifications topic, no service may consume as
    another's group; the reader reads the public topic and nothing else; the directory alone
    writes the directory topic. Each service writes the DLQ of every topic it consumes, with
    the producer its code uses (idempotent)."""
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(secured, SERVICE_USERS["notifier"], PUBLIC_TOPIC, SEED, idempotent=True)
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(secured, SERVICE_USERS["redeemer"], DIRECTORY_TOPIC, SEED, idempotent=True)
    assert not await can_read(secured, SERVICE_USERS["scan-ingest"], NOTIFICATIONS_TOPIC)
    assert not await can_read(secured, SERVICE_USERS["token-issuer"], NOTIFICATIONS_TOPIC)
    assert not await can_consume_as(
        secured, SERVICE_USERS["token-issuer"], "scanner-auth.notifier.token-states", PUBLIC_TOPIC
    )
    assert await can_read(secured, READER, PUBLIC_TOPIC)
    for topic in TOPICS:
        if topic != PUBLIC_TOPIC:
            assert not await can_read(secured, READER, topic), topic
    for name in PRINCIPALS:
        if name != DIRECTORY:
            with pytest.raises((TopicAuthorizationFailedError, ClusterAuthorizationFailedError)):
                await produce(secured, name, DIRECTORY_TOPIC, SEED, idempotent=True)
    await produce(secured, DIRECTORY, DIRECTORY_TOPIC, SEED, idempotent=True)
    for service, name in SERVICE_USERS.items():
        consumed = {
            r.name
            for r in USERS[name].rules
            if r.resource_type == "topic" and r.operation == "Read"
        }
        for topic in consumed:
            await produce(secured, name, dlq_topic(topic), SEED, idempotent=True)
        assert consumed, service


# ------------------------------------------------------------------------------ the system


def _consumed(url: str) -> dict[str, float]:
    """scanner_auth_events_consumed_total by consumer, every outcome, from /metrics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "scanner_auth_events_consumed_total":
                consumer = sample.labels.get("consumer", "")
                totals[consumer] = totals.get(consumer, 0) + sample.value
    return totals


def _dlq_consumers(kafka: SecuredKafka, topic: str) -> set[str]:
    records = asyncio.run(on_topic(kafka, dlq_topic(topic)))
    return {
        value.decode()
        for r in records
        for name, value in r.headers
        if name == "x-dlq-consumer" and r.value == SEED
    }


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_whole_system_works_with_its_acls_over_sasl_ssl(
    private_tmp: Any, mail_sink: Any
) -> None:
    """The four services as `scanner-auth serve` processes, each with its own principal and
    KafkaUser ACLs over SASL_SSL (KAFKA_SSL_CAFILE), as the prod overlay configures them: the
    directory (as the directory) → an admin's code → emailed → redeemed → a scan accepted. A
    poisoned record written by each consumed topic's legitimate producer is dead-lettered by
    every consumer of that topic (their DLQ writes). No service is refused anything but the
    creation of topics."""
    kafka = start_secured_kafka(private_tmp("kafka-system"), strangers=[])
    root = private_tmp("stack")
    postgres = EmbeddedPostgres(root / "postgres").start()
    stack = Stack(
        root,
        postgres=postgres,
        broker=kafka.broker,
        mail=mail_sink,
        extra_env={s: kafka.environment(name) for s, name in SERVICE_USERS.items()},
    )
    try:
        stack.start_services(timeout=180)
        system = System(stack)
        directory = kafka.security(DIRECTORY)
        asyncio.run(
            publish_events(kafka.bootstrap, DIRECTORY_TOPIC, *system.demo.events(), **directory)
        )
        scanner = system.demo.scanners[0]
        sid = scanner.scanner_id
        with system.as_user("ADMIN_JWT") as admin:
            wait_until(
                lambda: admin.get(f"/v1/scanners/{sid}/authorisation").status_code == 200,
                90,
                "the directory reached the token-issuer",
            )
        code = system.generate_token(sid)["code"]
        with system.as_user("ADMIN_JWT") as admin:
            r = admin.post(
                f"/v1/scanners/{sid}/authorisation-token/email",
                json={"recipient_user_id": "u-bob"},
            )
            assert r.status_code == 202, r.text
        mails = wait_until(lambda: mail_sink.to("bob@quarry.example"), 90, "the email")
        assert code in mails[0].parts()["text/plain"]

        redeemer = stack.services["redeemer"].url
        events = len(system.demo.events())
        wait_until(
            lambda: _consumed(redeemer).get("redeemer.directory", 0) >= events, 90,
            "the redeemer consumed the directory",
        )  # fmt: skip
        wait_until(
            lambda: _consumed(redeemer).get("redeemer.authorisation", 0) >= 1, 90,
            "the redeemer consumed TokenIssued",
        )  # fmt: skip
        r = system.redeem(code, scanner.serial_number)
        assert r.status_code == 201, r.text
        credential = r.json()["credential"]
        wait_until(lambda: system.upload_status(credential) == 202, 30, "the gate opened")
        with system.device("scan-ingest", credential) as device:
            r = device.post("/v1/scans", json={"scan_id": "scan-acl-1", "volume_m3": 2.0})
            assert r.status_code == 202, r.text
        asyncio.run(
            wait_for_events(
                kafka.admin_bootstrap, SCANS_TOPIC, "ScanIngested", timeout=30,
                match=lambda e: e.data.get("scan_id") == "scan-acl-1",
            )
        )  # fmt: skip
        asyncio.run(wait_for_events(kafka.admin_bootstrap, NOTIFICATIONS_TOPIC, "NotificationSent"))

        # Poison on each consumed topic, from the principal allowed to write it: every consumer
        # of the topic dead-letters it to <topic>.dlq, with its own principal.
        poison = {
            PUBLIC_TOPIC: SERVICE_USERS["redeemer"],
            NOTIFICATIONS_TOPIC: SERVICE_USERS["token-issuer"],
            DIRECTORY_TOPIC: DIRECTORY,
        }
        for topic, writer in poison.items():
            asyncio.run(produce(kafka, writer, topic, SEED, idempotent=True))
        consumers = {
            topic: {
                s for s, name in SERVICE_USERS.items()
                if granted(name, "topic", topic, "Read")
            }
            for topic in poison
        }  # fmt: skip
        for topic, readers in consumers.items():

            def dead_lettered(topic: str = topic, readers: set[str] = readers) -> bool:
                return len(_dlq_consumers(kafka, topic)) >= len(readers)

            wait_until(dead_lettered, 60, f"every consumer of {topic} dead-lettered the poison")
            names = _dlq_consumers(kafka, topic)
            # Consumers are named <service>.<concern> (x-dlq-consumer).
            assert {n.split(".", 1)[0] for n in names} == readers, (topic, names)

        # The one refusal expected: faststream's subscribers ask to create the topics they
        # subscribe to at start (CreateTopics), and no principal holds Create: the broker says
        # no (a warning per subscriber), so a service can never create a topic with the
        # broker's defaults. Anything else refused would be an ACL too tight.
        refusals = ("AuthorizationFailed", "not authorized", "SaslAuthenticationFailed")
        refused = [line for line in system.logs().splitlines() if any(r in line for r in refusals)]
        unexpected = [line for line in refused if "Failed to create topic" not in line]
        assert not unexpected, "refused by the broker:\n" + "\n".join(unexpected[:20])
    finally:
        for service in reversed(list(stack.services.values())):
            service.stop()
        postgres.stop()
        kafka.stop()


@pytest.mark.unit
def test_every_topic_is_probed() -> None:
    """The matrix covers every topic of the contract (the directory's too) and its DLQs."""
    assert set(ALL_TOPICS) <= set(TOPICS)
    assert {dlq_topic(t) for t in (PUBLIC_TOPIC, NOTIFICATIONS_TOPIC, DIRECTORY_TOPIC)} <= set(
        TOPICS
    )
