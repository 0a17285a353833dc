"""What scan-ingest reads from the environment (upper-case variable names)."""

from __future__ import annotations

from pydantic import Field

from scanner_auth_shared.settings import DatabaseSettings


class Settings(DatabaseSettings):
    http_port: int = 8003
    ingest_max_body_bytes: int = Field(
        1_048_576, ge=2, description="INGEST_MAX_BODY_BYTES: largest accepted upload body."
    )
    trusted_proxies: str = Field(
        "", description="TRUSTED_PROXIES: addresses or CIDRs whose X-Forwarded-For is believed."
    )
    publish_timeout_seconds: float = Field(
        5.0, gt=0, description="How long an upload waits for Kafka's acknowledgement before 503."
    )
    gate_resync_seconds: float = Field(
        3600.0,
        gt=0,
        description="Every replica reloads the whole gate this often: a safety net only, as "
        "every change reaches a connected reader by NOTIFY (README, 'Why the resync is not "
        "incremental').",
    )
    gate_keepalive_seconds: float = Field(
        5.0, gt=0, description="How often an idle gate listener checks its connection."
    )
    publish_retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After of the 503 answered while Kafka cannot take an upload."
    )
    gate_rotated_retention_seconds: float = Field(
        0.0,
        ge=0,
        description="A rotated-out credential is forgotten this long after its grace ended "
        "(then 401, not 403).",
    )
    gate_ended_retention_seconds: float = Field(
        30 * 86_400.0,
        ge=0,
        description="A replaced or revoked credential is forgotten this long after it ended "
        "(it answers 403 until then, 401 after).",
    )
    gate_purge_interval_seconds: float = Field(
        300.0, gt=0, description="How often ended credentials are purged from the gate's table."
    )
