"""Prometheus metrics every service exposes at /metrics. Defined once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "scanner_auth_http_requests_total", "HTTP requests answered", ["service", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "scanner_auth_http_request_seconds",
    "Time to answer an HTTP request",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENTS_CONSUMED = Counter(
    "scanner_auth_events_consumed_total",
    "Messages a consumer finished with, by outcome (applied, duplicate, ignored, dead_lettered)",
    ["consumer", "outcome"],
)
CONSUMER_RETRIES = Counter(
    "scanner_auth_consumer_retries_total", "Attempts a consumer made again", ["consumer"]
)
OUTBOX_PUBLISHED = Counter(
    "scanner_auth_outbox_published_total", "Outbox events acknowledged by Kafka", ["service"]
)
OUTBOX_PENDING = Gauge(
    "scanner_auth_outbox_pending",
    "Outbox rows seen waiting at the relay's last pass (capped at a batch)",
    ["service"],
)

KAFKA_IDEMPOTENT = Gauge(
    "scanner_auth_kafka_idempotent_producer",
    "1 when the service's Kafka producer is idempotent, 0 when the cluster refused producer ids",
)
EVENTS_UNVERIFIED = Counter(
    "scanner_auth_events_unverified_total",
    "Events refused because their signature did not prove their producer",
    ["consumer"],
)
PROCESSED_EVENTS_PURGED = Counter(
    "scanner_auth_processed_events_purged_total",
    "Processed-event rows forgotten after PROCESSED_EVENT_RETENTION_DAYS",
)
PRODUCER_RENEWED = Counter(
    "scanner_auth_kafka_producer_renewed_total",
    "Kafka producers replaced because their sender had stopped for good",
)
