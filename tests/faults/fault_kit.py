"""What the fault, fuzz and security suites need around a running `Stack` (all four services as
processes on embedded PostgreSQL, Tansu and an SMTP sink): its databases, its topics, its
processes, and the directory entries each test makes for itself.

Every test makes its own scanners and users (unique ids), so that tests sharing one stack never
count each other's events, mails or rows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scanner_auth.devstack import SERVICE_ORDER, Stack, System
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    CloudEvent,
    EventData,
    PoisonMessage,
    ScannerAccessGranted,
    ScannerRegistered,
    UserUpserted,
)
from scanner_auth_shared.testing.identity import TestIdentity
from scanner_auth_shared.testing.kafka import publish_events, read_topic, topic_partitions

ORG = "org-quarry"  # the demo organisation: its admin (u-alice) manages every scanner in it
DATABASES = {name: name.replace("-", "_") for name in SERVICE_ORDER}

# Quick group joins, quick retries, small batches of work: a fault test waits for less.
FAST_ENV: dict[str, dict[str, str]] = {
    "token-issuer": {"OUTBOX_POLL_INTERVAL_SECONDS": "0.5", "EXPIRY_SWEEP_INTERVAL_SECONDS": "0.5"},
    "redeemer": {"OUTBOX_POLL_INTERVAL_SECONDS": "0.5"},
    "scan-ingest": {"PUBLISH_TIMEOUT_SECONDS": "5"},
    "notifier": {
        "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
        "RETRY_BASE_SECONDS": "0.5",
        "RETRY_MAX_SECONDS": "2",
        "SENDER_POLL_SECONDS": "0.5",
    },
}


def merged_env(*envs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for env in envs:
        for service, values in env.items():
            out.setdefault(service, {}).update(values)
    return out


ROTATION_GRACE_SECONDS = 3
MAX_BODY_BYTES = 8192

# The one stack of the fault, fuzz and security suites.
SUITE_ENV = merged_env(
    FAST_ENV,
    # Two attempts before a failing message is dead-lettered: poison costs less waiting.
    {name: {"CONSUMER_MAX_ATTEMPTS": "2"} for name in FAST_ENV},
    {
        "token-issuer": {"EXPIRY_SWEEP_INTERVAL_SECONDS": "0.2"},
        # A short grace period: the state machine sees rotated credentials stop working.
        "redeemer": {"CREDENTIAL_ROTATION_GRACE_SECONDS": str(ROTATION_GRACE_SECONDS)},
        # A small limit: the fuzzer reaches 413 with small bodies.
        "scan-ingest": {"INGEST_MAX_BODY_BYTES": str(MAX_BODY_BYTES)},
    },
)
_SHARED: list[Rig] = []


@pytest.fixture(scope="session")
def rig(private_tmp: Any) -> Iterator[Rig]:
    """The stack, started once per session however many of the three suites run: the first
    suite's fixture starts it, and stops it when the session ends."""
    if _SHARED:
        yield _SHARED[0]
        return
    stack = start_stack(private_tmp("stack"), SUITE_ENV)
    _SHARED.append(Rig(stack))
    try:
        yield _SHARED[0]
    finally:
        _SHARED.clear()
        stack.stop()


@pytest.fixture(autouse=True)
async def healed(rig: Rig) -> AsyncIterator[None]:
    """Every test starts, and leaves, with every part running and every service ready."""
    await rig.heal()
    yield
    await rig.heal()


def start_stack(root: Path, extra_env: dict[str, dict[str, str]]) -> Stack:
    stack = Stack(root, extra_env=extra_env)
    try:
        stack.start_infrastructure()
        stack.start_services(timeout=180)
        stack.publish(*System(stack).demo.events())
    except BaseException:
        stack.stop()
        raise
    return stack


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.1
) -> Any:
    """The first truthy result of `check`, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except (httpx.HTTPError, OSError, asyncpg.PostgresError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        await asyncio.sleep(every)


@dataclass
class Scanner:
    scanner_id: str
    serial_number: str
    viewer_id: str  # a plain user granted this scanner: the recipient of its emails
    viewer_email: str


def new_scanners(n: int, label: str = "sc") -> list[Scanner]:
    made = []
    for _ in range(n):
        sid = uid(label)
        viewer = uid("u-viewer")
        made.append(Scanner(sid, f"SN-{sid[-8:].upper()}", viewer, f"{viewer}@quarry.example"))
    return made


@dataclass
class Rig:
    """A started stack, as the fault tests drive and inspect it."""

    stack: Stack
    system: System = field(init=False)

    def __post_init__(self) -> None:
        self.system = System(self.stack)

    # ------------------------------------------------------------------ places

    @property
    def bootstrap(self) -> str:
        assert self.stack.broker is not None
        return self.stack.broker.bootstrap

    def url(self, service: str) -> str:
        return self.stack.services[service].url

    def dsn(self, service: str) -> str:
        assert self.stack.postgres is not None
        return f"postgresql://postgres@127.0.0.1:{self.stack.postgres.port}/{DATABASES[service]}"

    # ------------------------------------------------------------------ databases

    @contextlib.asynccontextmanager
    async def connect(self, service: str) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.dsn(service), timeout=10)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def fetch(self, service: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connect(service) as conn:
            return list(await conn.fetch(sql, *args))

    async def fetchval(self, service: str, sql: str, *args: Any) -> Any:
        async with self.connect(service) as conn:
            return await conn.fetchval(sql, *args)

    # ------------------------------------------------------------------ HTTP

    def token_for(self, user_id: str) -> str:
        user = next(u for u in self.system.demo.users if u.user_id == user_id)
        return self.stack.identity.mint(user.user_id, user.org_id, list(user.roles), user.email)

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url("token-issuer"),
            timeout=30,
            headers={"Authorization": f"Bearer {self.token_for('u-alice')}"},
        )

    def device(self, service: str, credential: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return httpx.AsyncClient(base_url=self.url(service), timeout=30, headers=headers)

    async def generate(self, scanner_id: str) -> dict[str, Any]:
        async with self.admin() as admin:
            r = await admin.post(f"/v1/scanners/{scanner_id}/authorisation-token")
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def email(self, scanner: Scanner) -> str:
        async with self.admin() as admin:
            r = await admin.post(
                f"/v1/scanners/{scanner.scanner_id}/authorisation-token/email",
                json={"recipient_user_id": scanner.viewer_id},
            )
        assert r.status_code == 202, r.text
        return str(r.json()["notification_id"])

    async def redeem(
        self, code: str, serial: str, client_ip: str = "198.51.100.1"
    ) -> httpx.Response:
        async with self.device("redeemer") as device:
            return await device.post(
                "/v1/authorisations",
                json={"code": code, "serial_number": serial},
                headers={"X-Forwarded-For": client_ip},
            )

    async def upload(self, credential: str, document: dict[str, Any]) -> httpx.Response:
        async with self.device("scan-ingest", credential) as device:
            return await device.post("/v1/scans", json=document)

    # ------------------------------------------------------------------ the directory

    async def scanners(self, n: int, label: str = "sc") -> list[Scanner]:
        """`n` new scanners of the demo organisation, each with its own viewer, known to the
        token-issuer and the redeemer when this returns."""
        made = new_scanners(n, label)
        await self.register(made)
        return made

    async def register(self, scanners: list[Scanner]) -> None:
        events: list[EventData] = []
        for s in scanners:
            events += [
                UserUpserted(
                    user_id=s.viewer_id,
                    org_id=ORG,
                    email=s.viewer_email,
                    display_name=f"Viewer of {s.scanner_id}",
                ),
                ScannerRegistered(
                    scanner_id=s.scanner_id,
                    org_id=ORG,
                    serial_number=s.serial_number,
                    name=f"Scanner {s.scanner_id}",
                    model="LVS",
                ),
                ScannerAccessGranted(scanner_id=s.scanner_id, user_id=s.viewer_id),
            ]
        await publish_events(self.bootstrap, DIRECTORY_TOPIC, *events)
        await self.directory_applied(
            [s.scanner_id for s in scanners], [s.viewer_id for s in scanners]
        )

    async def directory_applied(self, scanner_ids: list[str], user_ids: list[str]) -> None:
        n = len(scanner_ids)

        async def issuer_knows() -> bool:
            scanners = await self.fetchval(
                "token-issuer",
                "SELECT count(*) FROM scanners WHERE scanner_id = ANY($1) AND registered",
                scanner_ids,
            )
            grants = await self.fetchval(
                "token-issuer",
                "SELECT count(*) FROM access_grants WHERE user_id = ANY($1)",
                user_ids,
            )
            users = await self.fetchval(
                "token-issuer", "SELECT count(*) FROM users WHERE user_id = ANY($1)", user_ids
            )
            return bool(scanners == n and grants == len(user_ids) and users == len(user_ids))

        async def redeemer_knows() -> bool:
            count = await self.fetchval(
                "redeemer",
                "SELECT count(*) FROM scanners WHERE scanner_id = ANY($1) "
                "AND serial_number IS NOT NULL",
                scanner_ids,
            )
            return bool(count == n)

        await eventually(issuer_knows, 60, "the token-issuer learned of the new scanners")
        await eventually(redeemer_knows, 60, "the redeemer learned of the new scanners")

    async def redeemer_knows_tokens(self, token_ids: list[str], timeout: float = 60) -> None:
        async def known() -> bool:
            count = await self.fetchval(
                "redeemer",
                "SELECT count(*) FROM tokens WHERE token_id = ANY($1) AND code_digest IS NOT NULL",
                token_ids,
            )
            return bool(count == len(set(token_ids)))

        await eventually(known, timeout, "the redeemer learned of the tokens")

    # ------------------------------------------------------------------ topics

    async def events(self, topic: str, type_: str | None = None) -> list[CloudEvent]:
        out = []
        for record in await read_topic(self.bootstrap, topic, timeout=15):
            try:
                event = CloudEvent.from_bytes(record.value)
            except PoisonMessage:
                continue
            if type_ is None or event.type == type_:
                out.append(event)
        return out

    async def records(self, topic: str) -> list[Any]:
        return list(await read_topic(self.bootstrap, topic, timeout=15))

    async def committed_offsets(self, group_id: str, topic: str) -> dict[int, int]:
        """The consumer group's committed offset per partition of `topic` (-1: none)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            out = {}
            for p in sorted(await topic_partitions(consumer, topic)):
                committed = await consumer.committed(TopicPartition(topic, p))
                out[p] = -1 if committed is None else int(committed)
            return out
        finally:
            await consumer.stop()

    async def outbox_empty(self, service: str, timeout: float = 60) -> None:
        async def empty() -> bool:
            return bool(await self.fetchval(service, "SELECT count(*) = 0 FROM outbox"))

        await eventually(empty, timeout, f"{service}'s outbox drained")

    # ------------------------------------------------------------------ processes

    def pid(self, service: str) -> int:
        proc = self.stack.services[service].proc
        assert proc is not None and proc.poll() is None, f"{service} is not running"
        return proc.pid

    def signal(self, service: str, sig: int) -> None:
        """`sig` to the service's process group (its own: start_new_session)."""
        os.killpg(self.pid(service), sig)

    def kill(self, service: str) -> None:
        svc = self.stack.services[service]
        code = svc.stop(sig=signal.SIGKILL, timeout=15)
        assert code == -signal.SIGKILL, f"{service} ended with {code}, not by SIGKILL"

    async def start(self, service: str, timeout: float = 120) -> None:
        svc = self.stack.services[service]
        assert svc.proc is None or svc.proc.poll() is not None, f"{service} is still running"
        svc.start()
        await self.ready(service, timeout)

    async def ready(self, service: str, timeout: float = 120) -> None:
        svc = self.stack.services[service]

        async def ready() -> bool:
            return await asyncio.to_thread(svc.ready)

        await eventually(ready, timeout, f"{service} ready", every=0.2)

    async def all_ready(self, timeout: float = 120) -> None:
        await asyncio.gather(*(self.ready(name, timeout) for name in self.stack.services))

    def postgres_running(self) -> bool:
        assert self.stack.postgres is not None
        try:
            self.stack.postgres.psql("SELECT 1")
        except Exception:
            return False
        return True

    async def heal(self) -> None:
        """Whatever a failed test left behind: a stopped broker or database, a dead or frozen
        service. Then every service ready again."""
        assert self.stack.broker is not None and self.stack.broker.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.stack.broker.resume()
        if not self.postgres_running():
            assert self.stack.postgres is not None
            self.stack.postgres.resume()
        for svc in self.stack.services.values():
            if svc.proc is not None and svc.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGCONT)
            else:
                svc.start()
        await self.all_ready()

    def logs(self) -> str:
        return self.system.logs()


def count_by(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


# ---------------------------------------------------------------------------------- bad JWTs


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged_jwts(identity: TestIdentity, sub: str, org_id: str, roles: list[str]) -> dict[str, str]:
    """Bearer tokens the token-issuer must refuse (401), each by what is wrong with it. The
    claims are those of a real user who would otherwise be allowed."""
    claims: dict[str, Any] = {
        "sub": sub,
        "org_id": org_id,
        "roles": roles,
        "email": f"{sub}@example.test",
        "iss": identity.issuer,
        "aud": identity.audience,
        "exp": int(time.time()) + 1800,
    }
    good = identity.mint(sub, org_id, roles)
    header, payload, signature = good.split(".")
    escalated = dict(claims, roles=["support"], org_id="org-elsewhere")
    hs_header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    hs_payload = _b64(orjson.dumps(claims))
    hs_signature = hmac.new(
        identity.public_pem.encode(), f"{hs_header}.{hs_payload}".encode(), hashlib.sha256
    ).digest()
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    return {
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "alg none, signature kept": ".".join(
            [_b64(orjson.dumps({"alg": "none", "typ": "JWT"})), payload, signature]
        ),
        "wrong key": identity.mint(sub, org_id, roles, key=ec.generate_private_key(ec.SECP256R1())),
        "RS256 by an unknown key": identity.mint(
            sub, org_id, roles, key=rsa.generate_private_key(65537, 2048), alg="RS256"
        ),
        "HS256 with the public key as secret": f"{hs_header}.{hs_payload}.{_b64(hs_signature)}",
        "expired": identity.mint(sub, org_id, roles, lifetime=timedelta(minutes=-5)),
        "no exp": jwt.encode(no_exp, identity.key, algorithm="ES256"),
        "not yet valid": identity.mint(sub, org_id, roles, nbf=int(time.time()) + 3600),
        "wrong issuer": identity.mint(sub, org_id, roles, iss="https://evil.example/"),
        "wrong audience": identity.mint(sub, org_id, roles, aud="another-service"),
        "claims changed after signing": ".".join(
            [header, _b64(orjson.dumps(escalated)), signature]
        ),
        "signature cut": f"{header}.{payload}.",
        "garbage": "not.a.jwt",
    }
