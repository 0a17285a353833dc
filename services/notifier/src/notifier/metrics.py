"""The notifier's own Prometheus metrics (served at /metrics with the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EMAILS = Counter(
    "scanner_auth_notifier_emails_total",
    "Notifications finished, by outcome (sent, failed, cancelled)",
    ["outcome"],
)
FAILURES = Counter(
    "scanner_auth_notifier_failures_total",
    "Notifications that ended failed, by kind (permanent, expired, unknown, seal)",
    ["kind"],
)
RETRIES = Counter(
    "scanner_auth_notifier_retries_total",
    "Transient delivery failures scheduled for another attempt",
)
SEND_SECONDS = Histogram(
    "scanner_auth_notifier_send_seconds",
    "Time of one SMTP delivery attempt, by result (delivered, transient, permanent)",
    ["result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
IN_FLIGHT = Gauge(
    "scanner_auth_notifier_sends_in_flight", "SMTP deliveries under way in this process"
)
REQUESTS = Counter(
    "scanner_auth_notifier_requests_total",
    "TokenEmailRequested events, by effect (recorded, duplicate)",
    ["effect"],
)
DEFERRED = Counter(
    "scanner_auth_notifier_deferred_total",
    "Claimed emails given back, not attempted: the token states had not caught up in time",
)
BARRIER_SECONDS = Histogram(
    "scanner_auth_notifier_barrier_seconds",
    "Time a claimed email waited for the token-state consumer (the read barrier), by result",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
