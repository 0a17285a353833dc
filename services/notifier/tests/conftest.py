"""What the notifier's tests share: requests sealed the way the token-issuer seals them and
token events; for unit tests a rig of the in-memory fakes (adapters/memory.py) around the real
use cases; for integration tests a world of real PostgreSQL, a real broker and a real SMTP
sink; `until`, the one way to wait; and a watch on the logs (no code in any of them)."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from notifier import handlers
from notifier.adapters.email import EmailRenderer
from notifier.adapters.memory import (
    MemoryMailer,
    MemoryNotifierUnitOfWork,
    MemoryReadBarrier,
    NotificationRecord,
    NotifierStore,
)
from notifier.consumers import CONSUMERS
from notifier.domain import Backoff, Claimed
from notifier.handlers import Delivery, DeliveryPolicy
from notifier.settings import Settings
from scanner_auth_shared.crypto import SecretBox, generate_code, sealed_code_context
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    CloudEvent,
    EventData,
    NotificationFailed,
    NotificationSent,
    ScannerAuthorised,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    new_event,
)
from scanner_auth_shared.infra import MailSink
from scanner_auth_shared.settings import aes_key_bytes
from scanner_auth_shared.testing.kafka import publish_events, read_topic, wait_for_events
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS


def _now() -> datetime:
    return datetime.now(UTC)


def sealed_request(
    sealing_key: str,
    codes: list[str],
    *,
    recipient: str = "ada@example.test",
    token_id: str | None = None,
    scanner_id: str = "scanner-1",
    notification_id: str | None = None,
    expires_at: datetime | None = None,
    scanner_name: str = "Loader bay 3",
    serial_number: str = "LVS-0042",
    code: str | None = None,
) -> tuple[TokenEmailRequested, str]:
    """A TokenEmailRequested as the token-issuer publishes it, and its code in clear (added to
    `codes`, which the logs are checked against)."""
    token_id = token_id or f"tok-{uuid.uuid4().hex[:12]}"
    code = code or generate_code()
    codes.append(code)
    box = SecretBox(aes_key_bytes(SecretStr(sealing_key)))
    data = TokenEmailRequested(
        notification_id=notification_id or str(uuid.uuid4()),
        token_id=token_id,
        scanner_id=scanner_id,
        org_id="org-1",
        recipient_user_id=f"user-{recipient.split('@')[0]}",
        recipient_email=recipient,
        requested_by="user-admin",
        expires_at=expires_at or _now() + timedelta(days=3),
        scanner_name=scanner_name,
        serial_number=serial_number,
        sealed_code=box.seal(code, sealed_code_context(token_id)),
    )
    return data, code


def issued(token_id: str, scanner_id: str = "scanner-1") -> TokenIssued:
    return TokenIssued(
        token_id=token_id,
        scanner_id=scanner_id,
        org_id="org-1",
        issued_by="user-admin",
        issued_at=_now(),
        expires_at=_now() + timedelta(days=3),
        code_digest="0" * 64,
    )


def ended(how: str, token_id: str, scanner_id: str = "scanner-1") -> EventData:
    """The event that ends a token: `revoked`, `expired` or `redeemed`."""
    if how == "revoked":
        return TokenRevoked(
            token_id=token_id,
            scanner_id=scanner_id,
            org_id="org-1",
            revoked_by="user-admin",
            reason="revoked",
            revoked_at=_now(),
        )
    if how == "expired":
        return TokenExpired(
            token_id=token_id, scanner_id=scanner_id, org_id="org-1", expired_at=_now()
        )
    assert how == "redeemed"
    return ScannerAuthorised(
        scanner_id=scanner_id,
        org_id="org-1",
        token_id=token_id,
        serial_number="LVS-0042",
        credential_id="cred-1",
        credential_digest="1" * 64,
        authorised_at=_now(),
    )


def _topic_of(event: CloudEvent) -> str:
    return NOTIFICATIONS_TOPIC if event.type == "TokenEmailRequested" else PUBLIC_TOPIC


@dataclass
class World:
    database_url: str
    bootstrap: str
    sink: MailSink
    sealing_key: str
    codes: list[str] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "kafka_bootstrap_servers": self.bootstrap,
            "sealing_key": self.sealing_key,
            "smtp_host": "127.0.0.1",
            "smtp_port": self.sink.port,
            "smtp_tls": "none",
            "smtp_timeout_seconds": 5.0,
            "smtp_helo_hostname": "notifier.test",
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1.0,
            "sender_poll_seconds": 0.25,
            **FAST_CONSUMERS,
        }
        values.update(overrides)
        return Settings(**values)

    def request(
        self, *, expires_in: timedelta = timedelta(days=3), **options: Any
    ) -> tuple[TokenEmailRequested, str]:
        """A TokenEmailRequested as the token-issuer publishes it, and its code in clear."""
        return sealed_request(
            self.sealing_key, self.codes, expires_at=_now() + expires_in, **options
        )

    async def publish(self, *items: EventData | CloudEvent) -> list[CloudEvent]:
        events = [
            i if isinstance(i, CloudEvent) else new_event(i, source="scanner-auth/token-issuer")
            for i in items
        ]
        # In order; each run of events for one topic through one producer.
        for topic, run in itertools.groupby(events, key=_topic_of):
            await publish_events(self.bootstrap, topic, *run)
        return events

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def notification(self, notification_id: str) -> dict[str, Any] | None:
        try:
            rows = await self.sql(
                "SELECT * FROM notifications WHERE notification_id = $1", notification_id
            )
        except asyncpg.UndefinedTableError:
            return None
        return dict(rows[0]) if rows else None

    async def token_state(self, token_id: str) -> str | None:
        try:
            rows = await self.sql("SELECT state FROM token_states WHERE token_id = $1", token_id)
        except asyncpg.UndefinedTableError:
            return None
        return str(rows[0]["state"]) if rows else None

    async def outcome(self, type_: str, notification_id: str, timeout: float = 20.0) -> CloudEvent:
        found = await wait_for_events(
            self.bootstrap,
            NOTIFICATIONS_TOPIC,
            type_,
            timeout=timeout,
            match=lambda e: e.data.get("notification_id") == notification_id,
        )
        return found[0]

    async def outcomes(self, notification_id: str) -> list[CloudEvent]:
        """Every NotificationSent / NotificationFailed of this notification now on the topic."""
        found = []
        for record in await read_topic(self.bootstrap, NOTIFICATIONS_TOPIC):
            event = CloudEvent.from_bytes(record.value)
            if (
                event.type in {"NotificationSent", "NotificationFailed"}
                and event.data.get("notification_id") == notification_id
            ):
                found.append(event)
        return found

    async def topics_text(self) -> str:
        records = [
            *await read_topic(self.bootstrap, NOTIFICATIONS_TOPIC),
            *await read_topic(self.bootstrap, PUBLIC_TOPIC),
        ]
        return "\n".join(r.value.decode(errors="replace") for r in records)


# ------------------------------------------------------------------------------ unit rig


class Clock:
    """The time the fakes and the use cases see; it moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Rig:
    """The real use cases (handlers.py) on the in-memory fakes: the store, a relay that answers
    as scripted, a read barrier whose consumer is as far as the test says, a clock."""

    store: NotifierStore
    clock: Clock
    mailer: MemoryMailer
    barrier: MemoryReadBarrier
    delivery: Delivery
    sealing_key: str
    codes: list[str]
    backlog: list[EventData] = field(default_factory=list)

    def uow(self) -> MemoryNotifierUnitOfWork:
        return MemoryNotifierUnitOfWork(self.store, clock=self.clock)

    def request(
        self, *, expires_in: timedelta = timedelta(days=3), **options: Any
    ) -> tuple[TokenEmailRequested, str]:
        return sealed_request(
            self.sealing_key, self.codes, expires_at=self.clock() + expires_in, **options
        )

    async def consume(self, *items: EventData | CloudEvent) -> None:
        """Events applied as the consumer runner applies them: each consumer's inbox claims the
        event ids, its handler applies each event, one commit."""
        for item in items:
            event = item if isinstance(item, CloudEvent) else new_event(item, source="test")
            for consumer in CONSUMERS:
                model = consumer.types.get(event.type)
                if model is None:
                    continue
                async with self.uow() as uow:
                    if await uow.inbox.claim(consumer.name, [event.id]):
                        data = model.model_validate(event.data)
                        await consumer.handlers[model](uow, event, data)
                    await uow.commit()

    def publish(self, *items: EventData) -> None:
        """Token events on the topic that the token-state consumer has not applied yet."""
        for data in items:
            self.barrier.publish(str(data.scanner_id))
            self.backlog.append(data)

    async def catch_up(self) -> None:
        """The token-state consumer applies what was published, then commits its offsets."""
        backlog, self.backlog = self.backlog, []
        await self.consume(*backlog)
        for data in backlog:
            self.barrier.apply(str(data.scanner_id))

    async def turn(self, limit: int = 10, lease_seconds: float = 60) -> list[Claimed]:
        """One pass of the sender, one delivery after the other: claim, wait for the turn,
        deliver."""
        claimed = await handlers.claim_due(self.delivery, limit, lease_seconds)
        for notification in claimed:
            if await handlers.wait_for_turn(self.delivery, notification):
                await handlers.deliver(self.delivery, notification)
        return claimed

    def row(self, notification_id: str) -> NotificationRecord:
        return self.store.notifications[notification_id]

    def failed(self) -> list[NotificationFailed]:
        return self.store.data(NotificationFailed)

    def sent(self) -> list[NotificationSent]:
        return self.store.data(NotificationSent)


@pytest.fixture
def rig(codes: list[str], test_secrets: Any) -> Rig:
    clock = Clock()
    store = NotifierStore()
    mailer = MemoryMailer()
    barrier = MemoryReadBarrier()
    delivery = Delivery(
        unit_of_work=lambda: MemoryNotifierUnitOfWork(store, clock=clock),
        mailer=mailer,
        composer=EmailRenderer("MyScanner <no-reply@myscanner.com>"),
        box=SecretBox(aes_key_bytes(SecretStr(test_secrets.sealing_key))),
        barrier=barrier,
        policy=DeliveryPolicy(
            backoff=Backoff(base=2.0, maximum=300.0),
            send_deadline_seconds=1.0,
            barrier_timeout_seconds=0.05,
            release_seconds=1.0,
        ),
        clock=clock,
        jitter=lambda: 1.0,
    )
    return Rig(store, clock, mailer, barrier, delivery, test_secrets.sealing_key, codes)


async def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """`check()`'s first truthy result (awaited when it is a coroutine) within `timeout`
    seconds, else AssertionError naming `what` and the last result."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def code_variants(code: str) -> list[str]:
    flat = code.replace("-", "")
    return [code, flat, flat.lower(), " ".join([flat[:4], flat[4:8], flat[8:]])]


@pytest.fixture
def codes() -> list[str]:
    """Every code a test puts in a request (checked against the logs afterwards)."""
    return []


@pytest.fixture
def world(
    database_url: str, kafka: Any, mail_sink: MailSink, test_secrets: Any, codes: list[str]
) -> World:
    return World(database_url, kafka.bootstrap, mail_sink, test_secrets.sealing_key, codes)


@pytest.fixture(autouse=True)
def _no_code_in_logs(
    codes: list[str], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[None]:
    """Every test runs with all logging at DEBUG; afterwards no log record, nor anything the
    process wrote to stdout or stderr, contains a code the test emailed."""
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capfd.readouterr()
    # The SMTP sink (aiosmtpd, logger `mail.log`) is the recipient's side, not ours: at DEBUG it
    # logs every line of the mail it receives, the code included, as any mail server would.
    records = [
        r
        for r in (*caplog.get_records("setup"), *caplog.get_records("call"))
        if not r.name.startswith("mail.log")
    ]
    texts = [out, err]
    for record in records:
        texts.append(record.getMessage())
        texts.append(str(record.__dict__))
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    everything = "\n".join(texts)
    assert codes == [] or records, "nothing was logged: the check proves nothing"
    for code in codes:
        for variant in code_variants(code):
            assert variant not in everything, "a code appeared in the logs"
