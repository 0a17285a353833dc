"""scan-ingest's own Prometheus metrics (served at /metrics with the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPLOADS = Counter(
    "scan_ingest_uploads_total",
    "Uploads answered, by outcome (accepted, unauthorised, forbidden, too_large, invalid, "
    "bad_request, unavailable)",
    ["outcome"],
)
ACCEPTED_BYTES = Counter(
    "scan_ingest_accepted_bytes_total", "Body bytes of the uploads acknowledged by Kafka"
)
GATE_CREDENTIALS = Gauge("scan_ingest_gate_credentials", "Credentials held in the gate's memory")
GATE_RELOAD = Histogram(
    "scan_ingest_gate_reload_seconds",
    "Time to reload the gate from its table (full: every row; scanners: after a notification)",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
GATE_LISTENER_CONNECTED = Gauge(
    "scan_ingest_gate_listener_connected", "1 while the gate listens for changes, else 0"
)
GATE_LAST_FULL_LOAD = Gauge(
    "scan_ingest_gate_last_full_load_timestamp_seconds", "When the gate last loaded every row"
)

# Children bound once: the upload path does not look labels up.
ACCEPTED = UPLOADS.labels("accepted")
UNAUTHORISED = UPLOADS.labels("unauthorised")
FORBIDDEN = UPLOADS.labels("forbidden")
TOO_LARGE = UPLOADS.labels("too_large")
INVALID = UPLOADS.labels("invalid")
BAD_REQUEST = UPLOADS.labels("bad_request")
UNAVAILABLE = UPLOADS.labels("unavailable")
FULL_RELOAD = GATE_RELOAD.labels("full")
SCANNER_RELOAD = GATE_RELOAD.labels("scanners")
