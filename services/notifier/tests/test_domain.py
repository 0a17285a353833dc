"""Pure decisions: backoff, expiry, what counts as active, how the email reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifier import domain
from notifier.adapters.email import CodeEmail, EmailRenderer, InvalidRecipient

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_backoff_doubles_from_the_base_and_is_capped() -> None:
    delays = [domain.backoff_seconds(n, base=2, maximum=300, jitter=1.0) for n in range(1, 11)]
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert domain.backoff_seconds(1, base=2, maximum=300, jitter=0.5) == 1.0
    assert domain.backoff_seconds(1, base=2, maximum=300, jitter=1.5) == 3.0
    assert domain.backoff_seconds(10_000, base=2, maximum=300, jitter=1.0) == 300


def test_no_retry_is_scheduled_past_the_codes_expiry() -> None:
    soon = NOW + timedelta(seconds=5)
    assert (
        domain.retry_delay(attempts=1, now=NOW, expires_at=soon, base=2, maximum=300, jitter=1.0)
        == 2
    )
    assert (
        domain.retry_delay(attempts=3, now=NOW, expires_at=soon, base=2, maximum=300, jitter=1.0)
        is None
    )


@pytest.mark.parametrize(
    ("state", "expires_in", "active"),
    [
        (None, 60, True),  # TokenIssued not seen yet: presumed active until its expiry
        ("active", 60, True),
        ("active", -1, False),
        ("revoked", 60, False),
        ("expired", 60, False),
        ("redeemed", 60, False),
    ],
)
def test_which_codes_may_be_emailed(state: str | None, expires_in: int, active: bool) -> None:
    expires = NOW + timedelta(seconds=expires_in)
    assert domain.code_is_active(state, expires, NOW) is active


def test_the_message_id_is_derived_from_the_notification_id() -> None:
    assert domain.message_id("3f1c-42") == "<3f1c-42@scanner-auth.myscanner>"
    assert domain.message_id("a b>c") == "<a-b-c@scanner-auth.myscanner>"


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=30), "less than a minute"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(minutes=14, seconds=59), "14 minutes"),
        (timedelta(hours=3, minutes=20), "3 hours 20 minutes"),
        (timedelta(hours=1), "1 hour"),
        (timedelta(days=2, hours=23, minutes=59), "2 days 23 hours"),
        (timedelta(days=1), "1 day"),
    ],
)
def test_how_long_is_left_reads_naturally(delta: timedelta, text: str) -> None:
    assert domain.describe_remaining(delta) == text


def test_error_texts_are_one_bounded_line_without_secrets() -> None:
    text = domain.safe_error("550 5.1.1\r\n no such user YD20-66YF-H255 " + "x" * 1000)
    assert "\n" not in text and len(text) <= 500
    assert "YD20-66YF-H255" not in text


def _mail(**overrides: object) -> CodeEmail:
    values: dict[str, object] = {
        "notification_id": "n-1",
        "recipient_email": "ada@example.test",
        "scanner_name": "Loader <b>bay</b> 3",
        "serial_number": "LVS-0042",
        "code": "YD20-66YF-H255",
        "expires_at": NOW + timedelta(days=2, hours=5),
    }
    values.update(overrides)
    return CodeEmail(**values)  # type: ignore[arg-type]


def test_the_email_has_the_code_the_scanner_the_expiry_and_the_instructions() -> None:
    message = EmailRenderer("MyScanner <no-reply@myscanner.com>").compose(_mail(), NOW)
    assert message["Message-ID"] == "<n-1@scanner-auth.myscanner>"
    assert message["To"] == "ada@example.test"
    assert "YD20" not in message["Subject"] and "LVS-0042" in message["Subject"]
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for body in (text, html):
        assert "YD20-66YF-H255" in body
        assert "LVS-0042" in body
        assert "Monday 03 March 2025 at 17:00 UTC" in body
        assert "2 days 5 hours from now" in body
        assert "Settings" in body and "Authorise with MyScanner" in body
        assert "spaces and dashes do not matter" in body
    assert "YD20 66YF H255" in text
    assert "Loader <b>bay</b> 3" in text
    assert "Loader &lt;b&gt;bay&lt;/b&gt; 3" in html and "<b>bay</b>" not in html
    assert "font-size:36px" in html  # the code, large


def test_a_header_injection_in_the_scanner_name_stays_in_the_subject() -> None:
    message = EmailRenderer("MyScanner <no-reply@myscanner.com>").compose(
        _mail(scanner_name="Bay\r\nBcc: evil@example.test"), NOW
    )
    assert message["Bcc"] is None
    assert "Bay Bcc: evil@example.test" in message["Subject"]


def test_an_unusable_recipient_address_is_refused() -> None:
    with pytest.raises(InvalidRecipient):
        EmailRenderer("MyScanner <no-reply@myscanner.com>").compose(
            _mail(recipient_email="not an address"), NOW
        )


def test_the_code_is_shown_grouped_however_it_was_sealed() -> None:
    assert domain.display_code("yd2066yfh255") == "YD20-66YF-H255"
    assert domain.display_code("YD20-66YF-H255") == "YD20-66YF-H255"
    message = EmailRenderer("MyScanner <no-reply@myscanner.com>").compose(
        _mail(code="yd20 66yf h255"), NOW
    )
    assert "YD20-66YF-H255" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_code_email_never_shows_its_code_in_a_repr() -> None:
    assert "YD20" not in repr(_mail())
