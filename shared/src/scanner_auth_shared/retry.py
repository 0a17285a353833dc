"""Retrying, once for every service: tenacity, configured the way this system retries.

- `through_outages(...)`: retry what fails because the database or Kafka is unavailable, forever
  by default (an outage must delay work, never drop it), with capped, jittered exponential
  backoff; any other exception is raised at once.
- `keep_running(name, run)`: a background loop that must never stay dead: restarted after any
  failure, with the same backoff, until cancelled.
- `every(seconds, work)`: periodic work (sweepers, housekeeping), each round's failure logged
  and the next round run on time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from .outages import is_infrastructure_error

log = logging.getLogger("scanner_auth.retry")
T = TypeVar("T")


def _logger(what: str, level: int = logging.WARNING) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.log(
            level,
            "%s failed; retrying",
            what,
            extra={
                "attempt": state.attempt_number,
                "error": type(error).__name__ if error is not None else None,
                "retry_in_seconds": round(state.upcoming_sleep, 3),
            },
        )

    return before_sleep


def through_outages(
    what: str,
    *,
    initial: float = 0.2,
    maximum: float = 10.0,
    attempts: int | None = None,
) -> AsyncRetrying:
    """`async for attempt in through_outages("…"): with attempt: …` retries infrastructure
    errors (outages.is_infrastructure_error) with backoff from `initial` to `maximum` seconds,
    forever unless `attempts` is given; other errors are raised at once."""
    return AsyncRetrying(
        retry=retry_if_exception(is_infrastructure_error),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial),
        stop=stop_after_attempt(attempts) if attempts is not None else stop_never,
        before_sleep=_logger(what),
        reraise=True,
    )


async def keep_running(
    what: str, run: Callable[[], Awaitable[None]], *, initial: float = 0.2, maximum: float = 10.0
) -> None:
    """Run `run` until it returns; after any failure log it and start it again (backoff)."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda exc: not isinstance(exc, asyncio.CancelledError)),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial),
        stop=stop_never,
        before_sleep=_logger(what, logging.ERROR),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            await run()


async def every(seconds: float, what: str, work: Callable[[], Awaitable[Any]]) -> None:
    """Run `work` every `seconds`, forever; a failed round is logged, the next one runs."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.log(
                logging.WARNING if is_infrastructure_error(exc) else logging.ERROR,
                "%s failed; trying again in %ss",
                what,
                seconds,
                exc_info=not is_infrastructure_error(exc),
                extra={"error": type(exc).__name__},
            )
        await asyncio.sleep(seconds)
