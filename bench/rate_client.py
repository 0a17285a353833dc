"""An open-loop HTTP load generator at a fixed request rate (its own process).

Reads a JSON job on stdin: {"rate": 200, "warmup": 200, "patience": 10, "requests":
[{"method", "url", "headers", "json"}, ...]}. Request i is due at start + i / rate, whatever
happened to the previous ones (open loop: a slow answer does not slow the generator down, so
no coordinated omission); its latency is measured from when it was due, not from when it was
sent, so a late generator makes figures worse, never better. The first `warmup` requests are
sent at the same rate but left out of the figures. A request still unanswered `patience`
seconds after the last one was due counts as unanswered (status 0). Prints one JSON line: per
measured request its status, latency and answer body."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx


async def main() -> None:
    job = json.load(sys.stdin)
    rate = float(job["rate"])
    warmup = int(job.get("warmup", 0))
    items: list[dict[str, Any]] = job["requests"]
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    results: list[dict[str, Any] | None] = [None] * len(items)
    last_success = [0.0]
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(i: int, due: float, item: dict[str, Any]) -> None:
            try:
                r = await client.request(
                    item["method"], item["url"], headers=item.get("headers"), json=item.get("json")
                )
                status, body = r.status_code, r.text
            except httpx.HTTPError as exc:
                status, body = 0, type(exc).__name__
            answered = time.perf_counter()
            results[i] = {"status": status, "ms": (answered - due) * 1000, "body": body}
            if 200 <= status < 300:
                last_success[0] = max(last_success[0], answered)

        # Open the connections before the clock starts.
        await client.get(items[0]["url"].split("/v1/")[0] + "/healthz")
        tasks = []
        start = time.perf_counter() + 0.05
        for i, item in enumerate(items):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due, item)))
        dispatched = time.perf_counter() - start
        # A server that cannot keep up would make this wait without end: whatever has not been
        # answered `patience` seconds after the last request was due counts as unanswered.
        _, late = await asyncio.wait(tasks, timeout=float(job.get("patience", 10)))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        now = time.perf_counter()
        for i, item in enumerate(results):
            if item is None:
                results[i] = {"status": 0, "ms": (now - (start + i / rate)) * 1000, "body": ""}
    print(
        "BENCH_JSON "
        + json.dumps(
            {
                "achieved_rate": (len(items) - 1) / dispatched if dispatched > 0 else 0.0,
                # 2xx answers per second, from the first request's due time to the last 2xx.
                "served_rate": sum(1 for r in results if r and 200 <= r["status"] < 300)
                / max(1e-9, last_success[0] - start),
                "results": results[warmup:],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
