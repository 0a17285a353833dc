"""What the notifier reads from the environment (upper-case variables, e.g. SMTP_HOST)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from scanner_auth_shared.settings import AesKey, DatabaseSettings


class Settings(DatabaseSettings):
    http_port: int = 8004

    # 32 bytes, base64: opens the `sealed_code` of TokenEmailRequested (shared with the issuer).
    sealing_key: AesKey

    # The SMTP relay.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = Field(None, validate_default=True)
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_from: str = "MyScanner <no-reply@myscanner.com>"
    smtp_timeout_seconds: float = Field(10.0, gt=0)
    # A CA bundle (PEM file) to verify the relay's certificate with, instead of the system's.
    smtp_ca_file: str | None = None
    # The name given in EHLO; by default this host's fully qualified name.
    smtp_helo_hostname: str | None = None

    # Delivery: retries of transient failures, concurrency, and the lease of a send.
    retry_base_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    sender_concurrency: int = Field(8, ge=1, le=256)
    sender_poll_seconds: float = Field(1.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)

    # The read barrier: a claimed email waits (at most this long, and at most a quarter of the
    # lease) until the token-state consumer has applied every token event of its scanner
    # published before the claim; failing that it is given back, due again after
    # BARRIER_RELEASE_SECONDS, and not counted as an attempt. BARRIER_POLL_SECONDS: how often
    # the consumer group's committed offsets are read while emails wait.
    barrier_timeout_seconds: float = Field(10.0, gt=0)
    barrier_release_seconds: float = Field(1.0, ge=0)
    barrier_poll_seconds: float = Field(0.05, gt=0)

    @field_validator("smtp_password")
    @classmethod
    def _password_with_username(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        username = info.data.get("smtp_username")
        if username and (value is None or not value.get_secret_value()):
            raise ValueError("is required when SMTP_USERNAME is set")
        return value

    @field_validator("smtp_username")
    @classmethod
    def _blank_username_is_none(cls, value: str | None) -> str | None:
        return value or None
