"""The redeemer's configuration: a missing, short or published TOKEN_PEPPER stops it."""

from __future__ import annotations

import secrets

import pytest

from redeemer.settings import Settings
from scanner_auth_shared.settings import ConfigurationError, load_settings

pytestmark = pytest.mark.unit

GOOD = secrets.token_urlsafe(48)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TOKEN_PEPPER", "TRUSTED_PROXIES", "HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    # Required by every service; placeholders (nothing connects here).
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://redeemer@db.invalid:5432/redeemer")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")


@pytest.mark.parametrize(
    "pepper",
    [
        None,
        "too-short-1234567",
        "changethis",
        "please-change-me-to-a-long-random-secret-value",
        "a" * 40,
    ],
)
def test_a_bad_token_pepper_is_refused_by_name_without_its_value(monkeypatch, pepper):
    if pepper is not None:
        monkeypatch.setenv("TOKEN_PEPPER", pepper)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(Settings)
    assert "TOKEN_PEPPER" in str(caught.value)
    if pepper is not None:
        assert pepper not in str(caught.value)


def test_defaults_from_the_contract(monkeypatch):
    monkeypatch.setenv("TOKEN_PEPPER", GOOD)
    settings = load_settings(Settings)
    assert settings.http_port == 8002
    assert settings.trusted_proxies == ""
    assert (settings.serial_lockout_failures, settings.serial_lockout_seconds) == (5, 900)
    assert (settings.address_lockout_failures, settings.address_window_seconds) == (30, 3600)
    assert settings.credential_rotation_grace_seconds == 3600


def test_trusted_proxies_must_be_addresses_or_networks(monkeypatch):
    monkeypatch.setenv("TOKEN_PEPPER", GOOD)
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    assert load_settings(Settings).trusted_proxies == "10.0.0.0/8, 192.0.2.1"
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, the-load-balancer")
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        load_settings(Settings)
