"""What the redeemer reads from the environment (upper-case variable names)."""

from __future__ import annotations

from pydantic import Field, field_validator

from scanner_auth_shared.http import parse_networks
from scanner_auth_shared.settings import DatabaseSettings, Pepper


class Settings(DatabaseSettings):
    http_port: int = 8002

    # Secret: refused when missing, short or a published default.
    token_pepper: Pepper = Field(description="HMAC key of code_digest, at least 32 bytes")

    trusted_proxies: str = Field(
        "", description="comma-separated addresses or CIDRs whose X-Forwarded-For is believed"
    )
    credential_rotation_grace_seconds: int = Field(
        3600, ge=0, description="how long a rotated-out credential keeps working"
    )
    rotation_limit_per_hour: int = Field(
        6,
        ge=1,
        description="rotations a scanner may make within any hour; more are refused (429)",
    )
    serial_lockout_failures: int = Field(
        5, ge=1, description="consecutive failed attempts that lock a serial number"
    )
    serial_lockout_seconds: int = Field(900, ge=1, description="how long a serial stays locked")
    address_lockout_failures: int = Field(
        30,
        ge=1,
        description="failed attempts from one client address, within the window, that lock it",
    )
    address_window_seconds: int = Field(
        3600, ge=1, description="the address window, and how long a locked address stays locked"
    )
    # Throttle rows without activity for this long are forgotten (a serial's consecutive count
    # starts again from zero). Locked rows are kept until their lock has passed.
    throttle_retention_seconds: int = Field(86_400, ge=60)
    throttle_cleanup_interval_seconds: float = Field(600.0, gt=0)
    # Refusals while locked out are reported together, one event per key per period.
    rejection_report_seconds: float = Field(60.0, gt=0)
    max_request_body_bytes: int = Field(4096, ge=256)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        try:
            parse_networks(value)
        except ValueError:
            raise ValueError("must be comma-separated IP addresses or CIDRs") from None
        return value
