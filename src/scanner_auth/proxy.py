"""A Kubernetes Service on one machine, for a stack that runs several replicas of a service: a
round-robin TCP proxy in a thread of the calling process (dev stack and tests only).

Each new client connection goes to the next backend (a replica's port) in turn, among those in
rotation and ready; one that refuses the connection is skipped, the next one tried, as
kube-proxy with readiness does: a replica that is starting (not listening yet) or terminating
(uvicorn closes its listener at SIGTERM) gets no new connections. Readiness is probed as a
readinessProbe does (`GET /readyz` every `probe_interval` seconds, unready after
`failure_threshold` failures in a row, ready again after one success); when no backend in
rotation is ready, every backend in rotation is tried (as kube-proxy falls back to serving
terminating endpoints), so that the proxy refuses a connection only when no replica accepts it.

`drain(port)` takes a backend out of rotation (its pod is terminating: the endpoint removed
before SIGTERM arrives, what the Deployment's preStop sleep waits for); connections already
open stay up until either side closes them. Bytes are relayed as they come, in both directions;
a backend that dies (SIGKILL) resets the client's connection with it: the client sees a
connection cut before any answer, as it would in a cluster.

The proxy does not parse HTTP: a client that keeps a connection alive keeps its replica, as
through a Kubernetes Service. Clients that must spread per request open one connection per
request (httpx `Limits(max_keepalive_connections=0)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from scanner_auth_shared.infra import free_port


@dataclass
class Backend:
    port: int
    in_rotation: bool = True
    ready: bool = True  # added once ready (the stack waits for /readyz first)
    failures: int = 0  # readiness probe failures in a row
    connections: int = 0  # client connections sent here, ever
    active: int = 0  # of them, open now
    refused: int = 0  # connection attempts it refused (or timed out)


class RoundRobinProxy:
    """`RoundRobinProxy(name, ports).start()`: listens on `port` (a free one by default) until
    `stop()`; `url` is what clients call instead of any one replica."""

    def __init__(
        self,
        name: str,
        ports: Iterable[int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        probe_path: str = "/readyz",
        probe_interval: float = 1.0,
        probe_timeout: float = 3.0,
        failure_threshold: int = 2,
        connect_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.probe_path = probe_path
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.failure_threshold = failure_threshold
        self.connect_timeout = connect_timeout
        self._backends = [Backend(p) for p in ports]
        self._next = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self.unrouted = 0  # client connections closed because no backend accepted them

    def __repr__(self) -> str:
        return f"RoundRobinProxy({self.name}, :{self.port} -> {self.ports()})"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ backends (any thread)

    def ports(self) -> list[int]:
        """The backends in rotation."""
        with self._lock:
            return [b.port for b in self._backends if b.in_rotation]

    def add(self, port: int) -> None:
        """A new backend in rotation (a replica that has just turned ready)."""
        with self._lock:
            for b in self._backends:
                if b.port == port:
                    b.in_rotation, b.ready, b.failures = True, True, 0
                    return
            self._backends.append(Backend(port))

    def drain(self, port: int) -> None:
        """No new connections to `port` (its pod is terminating); open ones stay."""
        with self._lock:
            for b in self._backends:
                if b.port == port:
                    b.in_rotation = False

    def remove(self, port: int) -> None:
        """Forget `port` altogether (drained first, so no new connection goes there)."""
        with self._lock:
            self._backends = [b for b in self._backends if b.port != port]

    def backend(self, port: int) -> Backend:
        with self._lock:
            found = next(b for b in self._backends if b.port == port)
            return Backend(**vars(found))  # a copy: the counts at this moment

    def active(self, port: int) -> int:
        """Connections to `port` open now."""
        return self.backend(port).active

    def connections(self) -> dict[int, int]:
        """Client connections sent to each backend so far (forgotten backends excluded)."""
        with self._lock:
            return {b.port: b.connections for b in self._backends}

    def _candidates(self) -> list[Backend]:
        """This connection's order of backends to try: the ready ones in rotation, starting at
        the next in turn, then (the fallback) the unready ones in rotation."""
        with self._lock:
            rotation = [b for b in self._backends if b.in_rotation]
            if not rotation:
                return []
            start = self._next % len(rotation)
            self._next += 1
            ordered = rotation[start:] + rotation[:start]
        return [b for b in ordered if b.ready] + [b for b in ordered if not b.ready]

    # ------------------------------------------------------------------ life

    def start(self, timeout: float = 10) -> RoundRobinProxy:
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the {self.name} proxy did not start within {timeout}s")
        if self._failed is not None:
            raise RuntimeError(f"the {self.name} proxy could not start") from self._failed
        return self

    def stop(self, timeout: float = 10) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(), or lost at exit
            self._failed = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port, backlog=512)
        probing = asyncio.create_task(self._probe_forever())
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            probing.cancel()
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ one connection

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        chosen: Backend | None = None
        backend_r: asyncio.StreamReader | None = None
        backend_w: asyncio.StreamWriter | None = None
        for candidate in self._candidates():
            try:
                backend_r, backend_w = await asyncio.wait_for(
                    asyncio.open_connection(self.host, candidate.port), self.connect_timeout
                )
            except (OSError, TimeoutError):
                with self._lock:
                    candidate.refused += 1
                continue
            chosen = candidate
            break
        if chosen is None or backend_r is None or backend_w is None:
            with self._lock:
                self.unrouted += 1
            client_w.transport.abort()  # as a Service without endpoints: refused
            return
        with self._lock:
            chosen.connections += 1
            chosen.active += 1
        try:
            upstream = asyncio.create_task(_pump(client_r, backend_w))
            downstream = asyncio.create_task(_pump(backend_r, client_w))
            done, _ = await asyncio.wait(
                {upstream, downstream}, return_when=asyncio.FIRST_COMPLETED
            )
            if upstream in done and upstream.result():  # the client reset: so does the proxy
                backend_w.transport.abort()
            # The answer side decides: once the backend has closed (or reset) its side, the
            # client's connection ends the same way.
            if await downstream:  # reset by the backend (it died): reset the client too
                client_w.transport.abort()
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)
        finally:
            with self._lock:
                chosen.active -= 1
            for writer in (client_w, backend_w):
                with contextlib.suppress(Exception):
                    writer.close()

    # ------------------------------------------------------------------ readiness

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            with self._lock:
                rotation = [b for b in self._backends if b.in_rotation]
            results = await asyncio.gather(*(self._probe(b.port) for b in rotation))
            with self._lock:
                for backend, ok in zip(rotation, results, strict=True):
                    if ok:
                        backend.ready, backend.failures = True, 0
                    else:
                        backend.failures += 1
                        if backend.failures >= self.failure_threshold:
                            backend.ready = False

    async def _probe(self, port: int) -> bool:
        """Whether `GET <probe_path>` answers 200 within `probe_timeout` seconds."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.probe_timeout):
                reader, writer = await asyncio.open_connection(self.host, port)
                writer.write(
                    f"GET {self.probe_path} HTTP/1.1\r\nHost: {self.host}:{port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
            return status_line.split(b" ")[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            return False
        finally:
            if writer is not None:
                writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Copy `reader` to `writer` until end of stream, then pass the end on (half close).
    Whether the stream ended by a reset rather than an orderly close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return True
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    return False
