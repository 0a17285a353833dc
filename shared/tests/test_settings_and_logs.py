"""Secrets refused at start-up, and logs that cannot carry one."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets

import pytest
from pydantic import SecretStr

from scanner_auth_shared import crypto
from scanner_auth_shared.logs import JsonFormatter, redact
from scanner_auth_shared.settings import (
    AesKey,
    ConfigurationError,
    DatabaseSettings,
    Pepper,
    load_settings,
)

pytestmark = pytest.mark.unit


class Example(DatabaseSettings):
    token_pepper: Pepper
    sealing_key: AesKey


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_good_secrets_are_accepted(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://svc@db.invalid:5432/svc")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")
    monkeypatch.setenv("TOKEN_PEPPER", secrets.token_urlsafe(40))
    monkeypatch.setenv("SEALING_KEY", _key())
    settings = load_settings(Example)
    assert isinstance(settings.token_pepper, SecretStr)


@pytest.mark.parametrize(
    ("pepper", "key", "variable", "why"),
    [
        (None, "ok", "TOKEN_PEPPER", "required"),
        ("short-but-random-x1", "ok", "TOKEN_PEPPER", "at least 32 bytes"),
        (
            "please-change-me-to-a-long-random-secret-value",
            "ok",
            "TOKEN_PEPPER",
            "published default",
        ),
        ("a" * 40, "ok", "TOKEN_PEPPER", "variety"),
        ("ok", None, "SEALING_KEY", "required"),
        ("ok", base64.b64encode(secrets.token_bytes(16)).decode(), "SEALING_KEY", "32 bytes"),
        ("ok", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "SEALING_KEY", "published default"),
        ("ok", "not base64 at all!!", "SEALING_KEY", "32 bytes"),
    ],
)
def test_a_missing_short_or_default_secret_stops_start_up_naming_the_variable(
    monkeypatch, pepper, key, variable, why
):
    good_pepper, good_key = secrets.token_urlsafe(40), _key()
    for name, value, good in (
        ("TOKEN_PEPPER", pepper, good_pepper),
        ("SEALING_KEY", key, good_key),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, good if value == "ok" else value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(Example)
    message = str(caught.value)
    assert variable in message and why in message
    if pepper not in (None, "ok"):
        assert pepper not in message  # the value is never repeated
    if key not in (None, "ok"):
        assert key not in message


def test_redaction_of_everything_secret_shaped():
    code = crypto.generate_code()
    credential = crypto.generate_credential()
    line = (
        f"code {code} flat {code.replace('-', '')} cred {credential} "
        "auth Bearer abc.def.ghi jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.sig"
    )
    cleaned = redact(line)
    for secret in (code, code.replace("-", ""), credential, "abc.def.ghi", "eyJhbGciOiJFUzI1NiJ9"):
        assert secret not in cleaned
    assert (
        redact("scanner sc-a1-12ab token 3f0c2a9e-1b2c-4d5e-8f90-123456789abc")
        == "scanner sc-a1-12ab token 3f0c2a9e-1b2c-4d5e-8f90-123456789abc"
    )


def test_json_logs_redact_messages_extras_and_tracebacks():
    code = crypto.generate_code()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("typed %s", code, extra={"typed": code})
        try:
            raise ValueError(f"bad {code}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert code not in out
    first = json.loads(out.splitlines()[0])
    assert (
        first["service"] == "test"
        and first["level"] == "warning"
        and first["typed"] == "[redacted]"
    )


def test_kafka_security_from_the_environment():
    from faststream.security import SASLScram512

    from scanner_auth_shared.messaging import kafka_security
    from scanner_auth_shared.settings import ServiceSettings

    BROKER = "broker.invalid:9092"  # never reached

    assert kafka_security(ServiceSettings(kafka_bootstrap_servers=BROKER)) is None
    with pytest.raises(ConfigurationError, match="KAFKA_SASL_USERNAME"):
        kafka_security(
            ServiceSettings(kafka_bootstrap_servers=BROKER, kafka_security_protocol="SASL_SSL")
        )
    sasl = kafka_security(
        ServiceSettings(
            kafka_bootstrap_servers=BROKER,
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="svc",
            kafka_sasl_password="pw-from-a-secret",
        )
    )
    assert isinstance(sasl, SASLScram512) and sasl.use_ssl
    tls = kafka_security(
        ServiceSettings(kafka_bootstrap_servers=BROKER, kafka_security_protocol="SSL")
    )
    assert tls is not None and tls.use_ssl and tls.ssl_context is not None
