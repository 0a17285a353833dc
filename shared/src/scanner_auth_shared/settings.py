"""Configuration from the environment. Each service declares what it needs by subclassing.

A secret that is missing, too short or a published default stops start-up with a message that
names the variable and never repeats the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that appear in documentation, examples and tutorials: never acceptable as secrets.
# The README's and deploy/'s example values are listed here too, so that copying them fails.
_PUBLISHED_DEFAULTS = {
    "changethis",
    "change-me",
    "changeme",
    "secret",
    "password",
    "example",
    "please-change-me-to-a-long-random-secret-value",
    "REPLACE_ME",
    "replace-me",
    "dev",
    "test",
    # base64 of 32 zero bytes, and of 32 "a" bytes: the usual placeholder keys
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=",
}
_PUBLISHED_DIGESTS = {hashlib.sha256(v.encode()).hexdigest() for v in _PUBLISHED_DEFAULTS}


class ConfigurationError(Exception):
    """The environment does not configure this service well enough to start."""


def _not_published(value: str) -> None:
    lowered = value.strip().lower()
    if hashlib.sha256(value.strip().encode()).hexdigest() in _PUBLISHED_DIGESTS or any(
        lowered == d.lower() for d in _PUBLISHED_DEFAULTS
    ):
        raise ValueError("is a published default value; generate a random one")
    if len(set(value)) < 8:
        raise ValueError("has too little variety to be a random secret")


def _pepper(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if len(raw.encode()) < 32:
        raise ValueError("must be at least 32 bytes")
    _not_published(raw)
    return value


def _aes_key(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    _not_published(raw)
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        try:
            key = base64.urlsafe_b64decode(raw.strip())
        except (binascii.Error, ValueError):
            raise ValueError("must be 32 bytes encoded in base64") from None
    if len(key) != 32:
        raise ValueError("must be 32 bytes encoded in base64")
    if len(set(key)) < 8:
        raise ValueError("has too little variety to be a random key")
    return value


Pepper = Annotated[SecretStr, AfterValidator(_pepper)]
"""A secret of at least 32 bytes that is not a published default."""

AesKey = Annotated[SecretStr, AfterValidator(_aes_key)]
"""32 random bytes, base64."""


def aes_key_bytes(value: SecretStr) -> bytes:
    raw = value.get_secret_value().strip()
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return base64.urlsafe_b64decode(raw)


class ServiceSettings(BaseSettings):
    """What every service reads. Variables are upper case, e.g. KAFKA_BOOTSTRAP_SERVERS."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    # Required, like DATABASE_URL: a default address would only find something by accident
    # (and a service that starts against the wrong broker is worse than one that refuses).
    kafka_bootstrap_servers: str = Field(description="host:port[,host:port]")
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    migrate_on_start: bool = True
    log_level: str = "INFO"
    # Consumers join their group in about half the session timeout; dev and tests lower it.
    kafka_session_timeout_ms: int = Field(10_000, ge=1_000)
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    kafka_client_id: str = "scanner-auth"
    # Managed Kafka usually wants TLS and SASL; the embedded broker wants neither.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle; default: the system's")
    # The idempotent producer (messaging.start_broker): `auto` uses it whenever the cluster
    # hands out producer ids (every Kafka does), `required` refuses to produce without it,
    # `off` never uses it (the dev stack's in-memory broker has none).
    kafka_idempotence: Literal["auto", "required", "off"] = "auto"
    # How long a consumer retries a message that fails for a reason other than its content
    # (a database outage, say) before it stops retrying in place and parks it in the DLQ.
    # Infrastructure errors are retried without limit: an outage must not empty the topic.
    consumer_max_attempts: int = Field(5, ge=1)
    # Event signatures (scanner_auth_shared.signing): the service's own Ed25519 key (base64 of
    # its 32-byte seed), the public keys it trusts per producer (`service=key,…`), and whether
    # both are required (the production overlay: then a service refuses to start without).
    event_signing_key: SecretStr | None = None
    event_trusted_keys: str = ""
    event_signatures_required: bool = False
    # Events a consumer takes from Kafka at once and applies in one transaction, with one
    # offset commit (scanner_auth_shared.consumer).
    consumer_batch_size: int = Field(500, ge=1, le=10_000)
    outbox_poll_interval_seconds: float = Field(1.0, gt=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)

    @field_validator("event_signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        from .signing import parse_private_key

        if value is None or not value.get_secret_value().strip():
            return None
        _not_published(value.get_secret_value())
        parse_private_key(value.get_secret_value())  # ValueError: never repeats the value
        return value

    @field_validator("event_trusted_keys")
    @classmethod
    def _trusted_keys(cls, value: str) -> str:
        from .signing import parse_trusted_keys

        parse_trusted_keys(value)
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is required but empty")
        return value


class DatabaseSettings(ServiceSettings):
    # No default: a service without its database refuses to start, naming the variable.
    database_url: str = Field(description="postgresql+asyncpg://user[:password]@host:port/database")
    database_pool_size: int = Field(10, ge=1)
    # How long a consumer remembers an event it applied (the processed-event table): longer
    # than the retention of every topic it consumes, so that no redelivery can outlive the
    # memory of it (outbox.purge_processed_events). 35 days: the public topic keeps 30.
    processed_event_retention_days: float = Field(35.0, ge=1)
    # Prepared statements kept per connection; 0 behind a transaction-mode PgBouncer.
    database_statement_cache_size: int = Field(256, ge=0)

    @field_validator("database_url")
    @classmethod
    def _url_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is required but empty")
        return value


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Settings from the environment, or ConfigurationError naming each bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            variable = "_".join(str(part) for part in err["loc"]).upper() or "<settings>"
            if err["type"] == "missing":
                problems.append(f"{variable} is required but not set")
            else:
                message = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{variable} {message}")
        raise ConfigurationError("; ".join(problems)) from None
