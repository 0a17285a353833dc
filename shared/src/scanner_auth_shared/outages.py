"""Which failures are outages (the database or Kafka unreachable for a while) rather than bugs.

An outage is retried (consumers, relays, senders) or answered 503 with `Retry-After` (HTTP); any
other failure is a bug or bad input. The classification looks at the whole chain of causes, so
that an outage wrapped by a library (SQLAlchemy around asyncpg, an ExceptionGroup from a task
group, faststream around aiokafka) is still an outage.

The classes below are the ones a cut or refused connection really raises: each was caused on
purpose against a real PostgreSQL and a real Kafka (`shared/tests/test_outages.py`), and each has
a unit test.
"""

from __future__ import annotations

import asyncio
import errno
import socket

# SQLSTATE classes and codes after which the same request can succeed later:
# 08 connection exception; 53 insufficient resources (too many connections, out of memory or
# disk); 57P01-57P05 operator intervention (shutdown, crash, cannot connect now, idle session
# timeout); 58 system error (I/O); 25006 read-only transaction (a failover to a standby);
# 40001 / 40P01 serialization failure / deadlock (retry the transaction); 55P03 lock not
# available; 57014 query cancelled (statement timeout).
_RETRYABLE_SQLSTATE_CLASSES = ("08", "53", "58")
_RETRYABLE_SQLSTATES = frozenset(
    {"57P01", "57P02", "57P03", "57P04", "57P05", "25006", "40001", "40P01", "55P03", "57014"}
)

# asyncpg's client-side connection errors (no SQLSTATE of their own).
_CONNECTION_ERRORS = frozenset(
    {
        "ConnectionDoesNotExistError",  # the connection was closed mid-query (server gone)
        "ConnectionFailureError",
        "ConnectionRejectionError",
        "ClientCannotConnectError",
        "InternalClientError",
        "TooManyConnectionsError",
        "CannotConnectNowError",
        "AdminShutdownError",
        "CrashShutdownError",
        "ReadOnlySQLTransactionError",
        "PoolConnectionLimitError",
    }
)
# asyncpg's InterfaceError is also how it reports a misuse (a bug: "another operation is in
# progress"); only these mean the connection or pool is gone.
_CLOSED = ("connection is closed", "connection was closed", "pool is closing", "pool is closed")


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when retrying later may succeed: the database or Kafka was unavailable. Follows
    explicit causes (`raise … from`, how libraries wrap a driver's error); an exception group
    is an outage when every member is one (one bug among them makes it a bug)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 50:
        if isinstance(current, BaseExceptionGroup):
            return bool(current.exceptions) and all(
                is_infrastructure_error(e) for e in current.exceptions
            )
        if _is_outage(current):
            return True
        current = current.__cause__
        seen += 1
    return False


# errno values of a network path that failed (an OSError that is not about files).
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EADDRNOTAVAIL,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
    }
)


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and (
        sqlstate in _RETRYABLE_SQLSTATES or sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES
    ):
        return True
    module = type(exc).__module__
    name = type(exc).__name__
    if module.startswith("asyncpg"):
        if name in _CONNECTION_ERRORS:
            return True
        if name == "InterfaceError" and any(text in str(exc) for text in _CLOSED):
            return True
    if module.startswith("sqlalchemy"):
        # OperationalError / InterfaceError wrap a driver's connection failure (the cause is
        # looked at too); an invalidated connection is one the pool had to throw away.
        if name in {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"}:
            return True
        if getattr(exc, "connection_invalidated", False):
            return True
    if module.startswith("aiokafka"):
        # aiokafka marks the errors worth retrying (connection, timeout, no leader, not enough
        # replicas, coordinator moving...).
        return bool(getattr(exc, "retriable", False)) or name in {
            "KafkaConnectionError",
            "KafkaTimeoutError",
            "NodeNotReadyError",
            "RequestTimedOutError",
            "NotEnoughReplicasError",
            "NotEnoughReplicasAfterAppendError",
            # The idempotent producer lost its sequence (a batch failed while its partition had
            # no leader): retried once the producer is renewed (messaging.renew_producer).
            "OutOfOrderSequenceNumber",
            "UnknownProducerId",
        }
    return False
