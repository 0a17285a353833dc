"""Configuration from the environment: a missing or published SEALING_KEY stops start-up."""

from __future__ import annotations

import base64
import secrets

import pytest

from notifier.settings import Settings
from scanner_auth_shared.settings import ConfigurationError, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEALING_KEY", "SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_TLS", "HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    # Required by every service; placeholders (nothing connects here).
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://notifier@db.invalid:5432/notifier")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_a_missing_sealing_key_is_named() -> None:
    with pytest.raises(ConfigurationError, match="SEALING_KEY is required"):
        load_settings(Settings)


@pytest.mark.parametrize(
    "value",
    [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # a published placeholder
        "changeme",
        base64.b64encode(b"short").decode(),
    ],
)
def test_a_published_or_malformed_sealing_key_is_named_and_not_repeated(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SEALING_KEY", value)
    with pytest.raises(ConfigurationError, match="SEALING_KEY") as caught:
        load_settings(Settings)
    assert value not in str(caught.value)


def test_defaults_from_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALING_KEY", _key())
    settings = load_settings(Settings)
    assert settings.http_port == 8004
    assert settings.smtp_tls == "starttls"
    assert settings.smtp_port == 25
    assert settings.smtp_from == "MyScanner <no-reply@myscanner.com>"
    assert settings.smtp_username is None and settings.smtp_password is None


def test_smtp_tls_accepts_only_the_three_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALING_KEY", _key())
    monkeypatch.setenv("SMTP_TLS", "ssl")
    with pytest.raises(ConfigurationError, match="SMTP_TLS"):
        load_settings(Settings)


def test_a_username_without_a_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALING_KEY", _key())
    monkeypatch.setenv("SMTP_USERNAME", "notifier")
    with pytest.raises(ConfigurationError, match="SMTP_PASSWORD is required when SMTP_USERNAME"):
        load_settings(Settings)
    monkeypatch.setenv("SMTP_PASSWORD", "relay-password")
    settings = load_settings(Settings)
    assert settings.smtp_password is not None
    assert "relay-password" not in repr(settings)
