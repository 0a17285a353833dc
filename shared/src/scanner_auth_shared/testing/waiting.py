"""Waiting for something another process or task does: `wait_until` from a synchronous test,
`eventually` from an async one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """`check()`'s first truthy result within `timeout` seconds, else AssertionError naming
    `what` and the last result. An HTTP error counts as not yet (a service still starting)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


async def eventually(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 20.0,
    what: str = "the condition",
    *,
    every: float = 0.05,
    not_yet: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError, asyncpg.PostgresError),
) -> Any:
    """The first truthy result of `await check()` within `timeout` seconds, else AssertionError
    naming `what` and the last result. The one `eventually` of every test suite: it never
    returns a falsy result. An exception of `not_yet` (a service or a connection not there yet)
    counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except not_yet as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        await asyncio.sleep(every)
