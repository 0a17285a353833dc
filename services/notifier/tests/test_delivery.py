"""The email goes out once, with the code, whatever is redelivered; transient failures are
retried and permanent ones are not. Real PostgreSQL, a real broker and a real SMTP server."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from notifier.app import build
from scanner_auth_shared.events import new_event
from scanner_auth_shared.infra import MailSink, free_port

from .conftest import World, until

pytestmark = pytest.mark.integration


async def _true(value: bool) -> bool:
    return value


def _mails_to(world: World, address: str) -> int:
    return len(world.sink.to(address))


async def test_the_email_arrives_once_to_the_recipient_with_the_code_in_both_parts(
    world: World,
) -> None:
    runtime = build(world.settings())
    async with runtime.running():
        sender = runtime.background["sender"].__self__  # type: ignore[attr-defined]
        await until(lambda: _true(sender.listening), what="the sender listening for NOTIFY")
        request, code = world.request(
            recipient="ada@example.test", scanner_name="Loader <bay> 3", serial_number="LVS-0042"
        )
        await world.publish(request)
        sent = await world.outcome("NotificationSent", request.notification_id)

        mails = world.sink.to("ada@example.test")
        assert len(mails) == 1
        mail = mails[0]
        assert mail.rcpt_tos == ["ada@example.test"]
        message = mail.message
        message_id = f"<{request.notification_id}@scanner-auth.myscanner>"
        assert message["Message-ID"] == message_id
        assert sent.data["smtp_message_id"] == message_id
        assert sent.subject == "scanner-1"
        assert message["From"] == "MyScanner <no-reply@myscanner.com>"
        assert code not in str(message["Subject"])
        assert "LVS-0042" in str(message["Subject"])

        parts = mail.parts()
        text, html = parts["text/plain"], parts["text/html"]
        for body in (text, html):
            assert code in body
            assert "LVS-0042" in body
            assert "Authorise with MyScanner" in body
            assert "UTC" in body
            assert "from now" in body
        assert "Loader <bay> 3" in text
        assert "Loader &lt;bay&gt; 3" in html and "<bay>" not in html  # autoescaped

        row = await world.notification(request.notification_id)
        assert row is not None
        assert row["status"] == "sent" and row["attempts"] == 1
        assert row["sealed_code"] is None  # nothing left to open once it is done

        # Nothing more is sent, however long we wait.
        await asyncio.sleep(1.0)
        assert _mails_to(world, "ada@example.test") == 1
        assert [e.type for e in await world.outcomes(request.notification_id)] == [
            "NotificationSent"
        ]

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=runtime.app, client=("203.0.113.7", 5000)),
            base_url="http://test",
        ) as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            metrics = (await client.get("/metrics")).text
            assert 'scanner_auth_notifier_emails_total{outcome="sent"}' in metrics
            assert "scanner_auth_notifier_send_seconds_bucket" in metrics

    for variant in (code, code.replace("-", "")):
        assert variant not in await world.topics_text()


async def test_the_same_request_delivered_twice_sends_one_email(world: World) -> None:
    runtime = build(world.settings())
    async with runtime.running():
        request, _ = world.request(recipient="bob@example.test")
        event = new_event(request, source="scanner-auth/token-issuer")
        # The same event twice (a redelivery), and the same request in a new envelope.
        copy = new_event(request, source="scanner-auth/token-issuer")
        await world.publish(event, event, copy)
        await world.outcome("NotificationSent", request.notification_id)
        # A later request on the same partition: once it is out, the copies were consumed.
        sentinel, _ = world.request(recipient="sentinel@example.test")
        await world.publish(sentinel)
        await world.outcome("NotificationSent", sentinel.notification_id)
        await until(lambda: _processed(world, copy.id), what="the copy consumed")
        await asyncio.sleep(0.5)
    assert _mails_to(world, "bob@example.test") == 1
    assert len(await world.outcomes(request.notification_id)) == 1


async def _processed(world: World, event_id: str) -> bool:
    rows = await world.sql("SELECT 1 FROM processed_events WHERE event_id = $1", event_id)
    return bool(rows)


async def test_a_redelivery_after_a_crash_sends_nothing_more(world: World) -> None:
    request, _ = world.request(recipient="carol@example.test")
    first = build(world.settings())
    async with first.running():
        events = await world.publish(request)
        await world.outcome("NotificationSent", request.notification_id)
    # The process is gone; its offsets may or may not have been committed. A new process (a
    # new consumer group, to force the redelivery of everything) gets the same request again.
    second = build(world.settings())
    second.broker.subscribers[0].group_id = "scanner-auth.notifier.email-requests.after-crash"
    async with second.running():
        again = new_event(request, source="scanner-auth/token-issuer")
        await world.publish(events[0], again)
        sentinel, _ = world.request(recipient="sentinel@example.test")
        await world.publish(sentinel)
        await world.outcome("NotificationSent", sentinel.notification_id)
        await until(lambda: _processed(world, again.id), what="the redelivery consumed")
        await asyncio.sleep(0.5)
    assert _mails_to(world, "carol@example.test") == 1
    assert len(await world.outcomes(request.notification_id)) == 1


async def test_two_replicas_on_one_database_send_each_email_once(world: World) -> None:
    requests = [
        world.request(recipient=f"r{i}@example.test", scanner_id=f"scanner-{i}")[0]
        for i in range(12)
    ]
    one = build(world.settings(sender_concurrency=3))
    two = build(world.settings(sender_concurrency=3))
    async with one.running(), two.running():
        await world.publish(*requests)
        # Both replicas consume the same group; both senders poll the same table.
        await until(lambda: _all_sent(world, requests), timeout=40, what="every email sent")
        await asyncio.sleep(1.0)
    for i in range(12):
        assert _mails_to(world, f"r{i}@example.test") == 1


async def _all_sent(world: World, requests: list[Any]) -> bool:
    rows = await world.sql("SELECT count(*) AS n FROM notifications WHERE status = 'sent'")
    return int(rows[0]["n"]) == len(requests)


async def test_a_transient_refusal_is_retried_after_a_backoff(world: World) -> None:
    world.sink.fail_next.append("451 4.3.0 Try again later")
    runtime = build(world.settings())
    async with runtime.running():
        request, code = world.request(recipient="dan@example.test")
        await world.publish(request)
        await world.outcome("NotificationSent", request.notification_id)
        row = await world.notification(request.notification_id)
        assert row is not None
        assert row["status"] == "sent" and row["attempts"] == 2
        assert "451" in row["last_error"]
        assert row["sent_at"] >= row["requested_at"] + timedelta(seconds=0.1)  # it waited
        await asyncio.sleep(0.5)
    mails = world.sink.to("dan@example.test")
    assert len(mails) == 1 and code in mails[0].parts()["text/plain"]
    assert [e.type for e in await world.outcomes(request.notification_id)] == ["NotificationSent"]


async def test_a_permanent_refusal_is_not_retried(world: World) -> None:
    world.sink.fail_next.append("550 5.1.1 No such user")
    runtime = build(world.settings())
    async with runtime.running():
        request, _ = world.request(recipient="nobody@example.test")
        await world.publish(request)
        failed = await world.outcome("NotificationFailed", request.notification_id)
        assert failed.data["permanent"] is True
        assert failed.data["attempts"] == 1
        assert "550" in failed.data["error"]
        # A retry would now be accepted (the sink answers 250 again): there is none.
        await asyncio.sleep(1.5)
        row = await world.notification(request.notification_id)
        assert row is not None and row["status"] == "failed" and row["attempts"] == 1
        assert row["sealed_code"] is None
    assert world.sink.mails == []
    assert len(await world.outcomes(request.notification_id)) == 1


async def test_an_smtp_outage_delays_the_email_and_it_is_delivered_once(world: World) -> None:
    port = world.sink.port
    world.sink.stop()  # nothing listens on the relay's port now
    runtime = build(world.settings())
    async with runtime.running():
        request, code = world.request(recipient="eve@example.test")
        await world.publish(request)

        async def retried_twice() -> bool:
            row = await world.notification(request.notification_id)
            return row is not None and row["attempts"] >= 2 and row["status"] == "pending"

        await until(retried_twice, what="two failed attempts")
        row = await world.notification(request.notification_id)
        assert row is not None and "mail relay" in row["last_error"]

        back = MailSink(port=port).start()  # the relay is back
        try:
            await world.outcome("NotificationSent", request.notification_id, timeout=20)
            await asyncio.sleep(0.5)
            mails = back.to("eve@example.test")
            assert len(mails) == 1 and code in mails[0].parts()["text/html"]
        finally:
            back.stop()
    assert [e.type for e in await world.outcomes(request.notification_id)] == ["NotificationSent"]


class _DropsTheFirstReply:
    """An SMTP server that keeps the first message, then drops the connection instead of
    answering 250."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.drop = 1

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content or envelope.content)
        if self.drop:
            self.drop -= 1
            server.transport.abort()
        return "250 OK"


async def test_a_connection_lost_after_the_message_is_not_resent(world: World) -> None:
    # The relay had the message when the connection died before its 250: it may deliver it,
    # so resending could make two. Never two: the email ends as NotificationFailed, outcome
    # unknown, and is not sent again.
    from aiosmtpd.controller import Controller

    handler = _DropsTheFirstReply()
    server = Controller(handler, hostname="127.0.0.1", port=free_port())
    server.start()
    try:
        runtime = build(world.settings(smtp_port=server.port))
        async with runtime.running():
            request, _ = world.request(recipient="fay@example.test")
            await world.publish(request)
            failed = await world.outcome("NotificationFailed", request.notification_id)
            assert failed.data["permanent"] is False and "outcome unknown" in failed.data["error"]
            await asyncio.sleep(2.0)  # longer than a retry would take
            row = await world.notification(request.notification_id)
            assert row is not None and row["attempts"] == 1 and row["status"] == "failed"
    finally:
        server.stop()
    assert len(handler.messages) == 1
    assert [e.type for e in await world.outcomes(request.notification_id)] == ["NotificationFailed"]


async def test_a_connection_lost_before_the_message_is_retried(world: World) -> None:
    # Dropped at DATA, before the relay had the message: safe to retry, one email.
    from aiosmtpd.controller import Controller

    class DropsAtData:
        def __init__(self) -> None:
            self.messages: list[bytes] = []
            self.dropped = False

        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            if not self.dropped:
                self.dropped = True
                server.transport.abort()
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append(envelope.original_content or envelope.content)
            return "250 OK"

    handler = DropsAtData()
    server = Controller(handler, hostname="127.0.0.1", port=free_port())
    server.start()
    try:
        runtime = build(world.settings(smtp_port=server.port))
        async with runtime.running():
            request, _ = world.request(recipient="gil@example.test")
            await world.publish(request)
            await world.outcome("NotificationSent", request.notification_id)
            row = await world.notification(request.notification_id)
            assert row is not None and row["attempts"] == 2
    finally:
        server.stop()
    assert len(handler.messages) == 1


async def test_retries_stop_at_the_codes_expiry(world: World) -> None:
    world.sink.fail_next.extend(["451 4.3.0 Try again later"] * 50)
    runtime = build(world.settings(retry_base_seconds=1.0, retry_max_seconds=1.0))
    async with runtime.running():
        request, _ = world.request(recipient="gus@example.test", expires_in=timedelta(seconds=4))
        await world.publish(request)
        failed = await world.outcome("NotificationFailed", request.notification_id, timeout=30)
        assert failed.data["permanent"] is False
        assert failed.data["attempts"] >= 1
        assert "expires" in failed.data["error"]
    assert world.sink.mails == []
