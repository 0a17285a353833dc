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
from urllib.parse import urlsplit

# HTTP/1.1 over asyncio streams, keep-alive connections reused from an idle stack. httpx was
# first used here: at 200 requests/s with a slow server its connection pool (scanned on every
# request, up to 500 connections) took a whole core, and the generator, not the server, set
# the pace (~150 sent/s, every latency inflated by the client's own queue).
PRE_OPENED = 32


class Http:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> tuple[int, str]:
        reused = bool(self.idle)
        conn = self.idle.pop() if reused else await self.open()
        try:
            status, body, keep = await self._exchange(conn, raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn[1].close()
            if not reused:
                raise
            # The server closed an idle keep-alive connection: once more on a fresh one.
            conn = await self.open()
            status, body, keep = await self._exchange(conn, raw)
        if keep:
            self.idle.append(conn)
        else:
            conn[1].close()
        return status, body

    @staticmethod
    async def _exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], raw: bytes
    ) -> tuple[int, str, bool]:
        reader, writer = conn
        writer.write(raw)
        status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
        length, chunked, keep = 0, False, True
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection" and value == b"close":
                keep = False
        if chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await reader.readexactly(length)
        return status, body.decode("utf-8", "replace"), keep


def encode(item: dict[str, Any]) -> tuple[str, int, bytes]:
    url = urlsplit(item["url"])
    body = json.dumps(item["json"]).encode() if item.get("json") is not None else b""
    head = [
        f"{item['method']} {url.path}{'?' + url.query if url.query else ''} HTTP/1.1",
        f"Host: {url.netloc}",
        f"Content-Length: {len(body)}",
    ]
    if item.get("json") is not None:
        head.append("Content-Type: application/json")
    head += [f"{k}: {v}" for k, v in (item.get("headers") or {}).items()]
    return (
        url.hostname or "127.0.0.1",
        url.port or 80,
        ("\r\n".join(head) + "\r\n\r\n").encode() + body,
    )


async def main() -> None:
    job = json.load(sys.stdin)
    rate = float(job["rate"])
    warmup = int(job.get("warmup", 0))
    items: list[dict[str, Any]] = job["requests"]
    encoded = [encode(item) for item in items]  # before the clock starts
    results: list[dict[str, Any] | None] = [None] * len(items)
    last_success = [0.0]
    clients: dict[tuple[str, int], Http] = {}
    for host, port, _ in encoded:
        clients.setdefault((host, port), Http(host, port))

    async def one(i: int, due: float, client: Http, raw: bytes) -> None:
        try:
            status, body = await client.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            status, body = 0, type(exc).__name__
        answered = time.perf_counter()
        results[i] = {"status": status, "ms": (answered - due) * 1000, "body": body}
        if 200 <= status < 300:
            last_success[0] = max(last_success[0], answered)

    # Open connections (and check the server answers) before the clock starts.
    for (host, port), client in clients.items():
        client.idle = list(await asyncio.gather(*(client.open() for _ in range(PRE_OPENED))))
        health = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        await client.request(health)
    tasks = []
    start = time.perf_counter() + 0.05
    for i, (host, port, raw) in enumerate(encoded):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due, clients[(host, port)], raw)))
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
    for client in clients.values():
        for _, writer in client.idle:
            writer.close()
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
