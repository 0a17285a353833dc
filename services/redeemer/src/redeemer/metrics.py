"""The redeemer's own Prometheus metrics (served at /metrics with the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter

REDEMPTIONS = Counter(
    "scanner_auth_redeemer_redemptions_total",
    "Redemption attempts by outcome: authorised, a rejection reason (invalid_code, expired, "
    "already_used, revoked, serial_mismatch, rate_limited), typo or malformed",
    ["outcome"],
)
LOCKOUTS = Counter(
    "scanner_auth_redeemer_lockouts_total",
    "Locks imposed by the brute-force throttle, by scope (serial or address)",
    ["scope"],
)
ROTATIONS = Counter(
    "scanner_auth_redeemer_rotations_total",
    "Credential rotation requests by outcome (rotated, unauthenticated, forbidden, rate_limited)",
    ["outcome"],
)
CREDENTIALS_REVOKED = Counter(
    "scanner_auth_redeemer_credentials_revoked_total",
    "Credentials revoked by ScannerDeauthorised",
)
