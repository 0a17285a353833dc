"""What the notifier's integration tests share: a world of real PostgreSQL, a real broker and a
real SMTP sink, requests sealed the way the token-issuer seals them, and a watch on the logs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from notifier.settings import Settings
from scanner_auth_shared.crypto import SecretBox, generate_code, sealed_code_context
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    CloudEvent,
    EventData,
    TokenEmailRequested,
    new_event,
)
from scanner_auth_shared.infra import MailSink
from scanner_auth_shared.settings import aes_key_bytes
from scanner_auth_shared.testing.kafka import publish_events, read_topic, wait_for_events
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS


def _now() -> datetime:
    return datetime.now(UTC)


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
        self,
        *,
        recipient: str = "ada@example.test",
        token_id: str | None = None,
        scanner_id: str = "scanner-1",
        notification_id: str | None = None,
        expires_in: timedelta = timedelta(days=3),
        scanner_name: str = "Loader bay 3",
        serial_number: str = "LVS-0042",
        code: str | None = None,
    ) -> tuple[TokenEmailRequested, str]:
        """A TokenEmailRequested as the token-issuer publishes it, and its code in clear."""
        token_id = token_id or f"tok-{uuid.uuid4().hex[:12]}"
        code = code or generate_code()
        self.codes.append(code)
        box = SecretBox(aes_key_bytes(SecretStr(self.sealing_key)))
        data = TokenEmailRequested(
            notification_id=notification_id or str(uuid.uuid4()),
            token_id=token_id,
            scanner_id=scanner_id,
            org_id="org-1",
            recipient_user_id=f"user-{recipient.split('@')[0]}",
            recipient_email=recipient,
            requested_by="user-admin",
            expires_at=_now() + expires_in,
            scanner_name=scanner_name,
            serial_number=serial_number,
            sealed_code=box.seal(code, sealed_code_context(token_id)),
        )
        return data, code

    async def publish(self, *items: EventData | CloudEvent) -> list[CloudEvent]:
        events = [
            i if isinstance(i, CloudEvent) else new_event(i, source="scanner-auth/token-issuer")
            for i in items
        ]
        for event in events:
            topic = NOTIFICATIONS_TOPIC if event.type == "TokenEmailRequested" else PUBLIC_TOPIC
            await publish_events(self.bootstrap, topic, event)
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


async def until(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition"
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
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
