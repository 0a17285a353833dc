"""The service refuses to start without good secrets and a way to verify JWTs."""

from __future__ import annotations

import base64
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scanner_auth_shared.settings import ConfigurationError, load_settings
from token_issuer.settings import Settings

pytestmark = pytest.mark.unit

VARIABLES = (
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "AUTH_JWKS_URL",
    "AUTH_PUBLIC_KEY_PEM",
    "AUTH_ISSUER",
    "AUTH_AUDIENCE",
    "TOKEN_PEPPER",
    "SEALING_KEY",
    "CODE_ENCRYPTION_KEY",
    "TOKEN_TTL_SECONDS",
    "HTTP_PORT",
)


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def good_env() -> dict[str, str]:
    return {
        "DATABASE_URL": "postgresql+asyncpg://ti@db:5432/token_issuer",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "AUTH_PUBLIC_KEY_PEM": pem(ec.generate_private_key(ec.SECP256R1())),
        "AUTH_ISSUER": "https://id.example/",
        "AUTH_AUDIENCE": "scanner-auth",
        "TOKEN_PEPPER": secrets.token_urlsafe(48),
        "SEALING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CODE_ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in good_env().items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_a_complete_environment_loads_with_the_contract_defaults(env: pytest.MonkeyPatch) -> None:
    settings = load_settings(Settings)
    assert settings.http_port == 8001
    assert settings.token_ttl_seconds == 259200
    env.setenv("TOKEN_TTL_SECONDS", "60")
    assert load_settings(Settings).token_ttl_seconds == 60


@pytest.mark.parametrize("variable", ["TOKEN_PEPPER", "SEALING_KEY", "CODE_ENCRYPTION_KEY"])
def test_a_missing_secret_is_refused_by_name(env: pytest.MonkeyPatch, variable: str) -> None:
    env.delenv(variable)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings(Settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOKEN_PEPPER", "too-short-to-be-a-pepper"),
        ("TOKEN_PEPPER", "please-change-me-to-a-long-random-secret-value"),  # published default
        ("TOKEN_PEPPER", "a" * 40),  # no variety
        ("SEALING_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),  # 32 zero bytes
        ("SEALING_KEY", base64.b64encode(b"0123456789abcdef").decode()),  # 16 bytes
        ("CODE_ENCRYPTION_KEY", "changeme"),
        ("CODE_ENCRYPTION_KEY", "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="),
    ],
)
def test_a_weak_or_default_secret_is_refused_by_name_without_echoing_it(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as caught:
        load_settings(Settings)
    assert value not in str(caught.value)


def test_a_key_that_is_not_base64_is_refused(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("CODE_ENCRYPTION_KEY", "not base64 !!")
    with pytest.raises(ConfigurationError, match="CODE_ENCRYPTION_KEY"):
        load_settings(Settings)


def test_jwt_verification_must_be_configured(env: pytest.MonkeyPatch) -> None:
    env.delenv("AUTH_PUBLIC_KEY_PEM")
    with pytest.raises(ConfigurationError, match="AUTH_PUBLIC_KEY_PEM or AUTH_JWKS_URL"):
        load_settings(Settings)
    env.setenv("AUTH_JWKS_URL", "https://id.example/.well-known/jwks.json")
    assert load_settings(Settings).auth_jwks_url is not None
    for variable in ("AUTH_ISSUER", "AUTH_AUDIENCE"):
        with env.context() as patch:
            patch.delenv(variable)
            with pytest.raises(ConfigurationError, match=variable):
                load_settings(Settings)


def test_an_unusable_public_key_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv(
        "AUTH_PUBLIC_KEY_PEM", "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----"
    )
    with pytest.raises(ConfigurationError, match="AUTH_PUBLIC_KEY_PEM"):
        load_settings(Settings)
    env.setenv("AUTH_PUBLIC_KEY_PEM", pem(rsa.generate_private_key(65537, 1024)))  # too short
    with pytest.raises(ConfigurationError, match="AUTH_PUBLIC_KEY_PEM"):
        load_settings(Settings)


def test_a_skewed_test_clock_is_refused_where_production_runs(env: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from scanner_auth_shared.events import utcnow
    from token_issuer.app import clock

    env.setenv("TEST_CLOCK_OFFSET_SECONDS", "-10")
    settings = load_settings(Settings)
    assert settings.test_clock_offset_seconds == -10
    skewed = clock(settings.test_clock_offset_seconds)()
    assert abs(skewed - (utcnow() - timedelta(seconds=10))) < timedelta(seconds=1)
    assert clock(0.0) is utcnow
    env.setenv("KAFKA_IDEMPOTENCE", "required")  # what the production overlay sets
    with pytest.raises(ConfigurationError, match="TEST_CLOCK_OFFSET_SECONDS is for tests only"):
        load_settings(Settings)
    env.setenv("TEST_CLOCK_OFFSET_SECONDS", "0")
    assert load_settings(Settings).test_clock_offset_seconds == 0


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://id.example/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks.json", True),  # a sidecar on loopback
        ("http://localhost/jwks.json", True),
        ("http://id.example/.well-known/jwks.json", False),  # keys replaceable on the way
        ("ftp://id.example/jwks.json", False),
        ("https:///jwks.json", False),
    ],
)
def test_the_jwks_url_must_be_https_unless_on_loopback(
    env: pytest.MonkeyPatch, url: str, accepted: bool
) -> None:
    env.delenv("AUTH_PUBLIC_KEY_PEM")
    env.setenv("AUTH_JWKS_URL", url)
    if accepted:
        assert load_settings(Settings).auth_jwks_url == url
    else:
        with pytest.raises(ConfigurationError, match="AUTH_JWKS_URL") as caught:
            load_settings(Settings)
        assert "https" in str(caught.value)


def test_the_limits_have_safe_defaults_and_refuse_nonsense(env: pytest.MonkeyPatch) -> None:
    settings = load_settings(Settings)
    assert (
        settings.email_limit_per_code_per_hour,
        settings.email_limit_per_recipient_per_hour,
        settings.max_request_body_bytes,
        settings.admin_flag_ttl_hours,
        settings.support_org_id,
    ) == (5, 10, 16384, 24.0, "org-loadscan")
    for variable, value in (
        ("EMAIL_LIMIT_PER_CODE_PER_HOUR", "0"),
        ("EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR", "-1"),
        ("MAX_REQUEST_BODY_BYTES", "10"),
        ("ADMIN_FLAG_TTL_HOURS", "0"),
        ("SUPPORT_ORG_ID", ""),
    ):
        with env.context() as patch:
            patch.setenv(variable, value)
            with pytest.raises(ConfigurationError, match=variable):
                load_settings(Settings)
