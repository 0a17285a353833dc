"""What the fault, fuzz and security suites need around a running `Stack` (all four services as
processes on embedded PostgreSQL, Apache Kafka and an SMTP sink): its databases, its topics,
its processes, and the directory entries each test makes for itself.

Three rigs: `rig`, the suites' shared stack on one Kafka node; `cluster_rig`, a stack of its
own on a controller and three brokers with the production topic settings (replication 3,
`min.insync.replicas` 2), for the broker-fault tests (`test_broker_failures.py`); and
`replicated_rig`, a stack of its own with two replicas of each service behind their fronts
(`Stack(replicas=2)`), for the rolling restarts (`test_rolling_restarts.py`).

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
from collections import Counter
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
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scanner_auth.devstack import (
    LOAD_QUOTAS,
    SERVICE_ORDER,
    ServiceProcess,
    Stack,
    System,
    merged_env,
)
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    SCANS_TOPIC,
    CloudEvent,
    EventData,
    PoisonMessage,
    ScannerAccessGranted,
    ScannerRegistered,
    UserUpserted,
)
from scanner_auth_shared.kafka_broker import ApacheKafka
from scanner_auth_shared.testing.identity import TestIdentity
from scanner_auth_shared.testing.kafka import publish_events, read_topic, topic_partitions
from scanner_auth_shared.testing.waiting import eventually

ORG = "org-quarry"  # the demo organisation: its admin (u-alice) manages every scanner in it
DATABASES = {name: name.replace("-", "_") for name in SERVICE_ORDER}
# The services' subscriptions, one consumer group each (services/*/consumers.py): token-issuer 2,
# redeemer 2, scan-ingest 1, notifier 2. The lag check wants to see them all.
CONSUMER_GROUPS = 7

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


# KAFKA_IDEMPOTENCE for the services of `cluster_rig` (the services' default: auto, which is
# idempotent on Kafka); `BROKER_FAULTS_IDEMPOTENCE=off` runs the broker-fault tests without it.
CLUSTER_IDEMPOTENCE = os.environ.get("BROKER_FAULTS_IDEMPOTENCE", "auto")


@pytest.fixture(scope="module")
def cluster_rig(private_tmp: Any) -> Iterator[Rig]:
    """A stack of its own on a controller and three brokers (the production topic settings),
    for one module of broker-fault tests; its own PostgreSQL, SMTP sink and services."""
    env = merged_env(SUITE_ENV, {n: {"KAFKA_IDEMPOTENCE": CLUSTER_IDEMPOTENCE} for n in FAST_ENV})
    stack = start_stack(private_tmp("cluster-stack"), env, kafka_brokers=3)
    try:
        yield Rig(stack)
    finally:
        stack.stop()


# The replicated rig: quick retries (FAST_ENV), and a short lease of a send, so that a send cut
# by SIGKILL ends (NotificationFailed, outcome unknown) within seconds rather than a minute; the
# lease is still longer than SMTP_TIMEOUT_SECONDS (10), as it must be.
REPLICATED_ENV = merged_env(FAST_ENV, LOAD_QUOTAS, {"notifier": {"LEASE_SECONDS": "15"}})


@pytest.fixture(scope="module")
def replicated_rig(private_tmp: Any) -> Iterator[Rig]:
    """A stack of its own with two replicas of each service (own processes and ports, one
    database per service, one consumer group per subscription), each service behind its
    round-robin front (`System.url`, `Rig.url`), on one Apache Kafka node."""
    stack = start_stack(private_tmp("replicated-stack"), REPLICATED_ENV, replicas=2)
    try:
        yield Rig(stack)
    finally:
        stack.stop()


def start_stack(
    root: Path,
    extra_env: dict[str, dict[str, str]],
    *,
    kafka_brokers: int = 1,
    replicas: int = 1,
) -> Stack:
    stack = Stack(root, extra_env=extra_env, kafka_brokers=kafka_brokers, replicas=replicas)
    try:
        stack.start_infrastructure()
        assert stack.broker is not None
        if isinstance(stack.broker, ApacheKafka):
            asyncio.run(producer_ids_granted(stack.broker.bootstrap))
        stack.start_services(timeout=180 * replicas)
        stack.publish(*System(stack).demo.events())
    except BaseException:
        stack.stop()
        raise
    return stack


async def producer_ids_granted(bootstrap: str, timeout: float = 60) -> None:
    """Until the cluster hands out producer ids (InitProducerId answers 0). A cluster that has
    just started answers COORDINATOR_LOAD_IN_PROGRESS (14) for a moment, and a service that
    asks then (KAFKA_IDEMPOTENCE=auto) takes it for a cluster without producer ids and produces
    without idempotence for the rest of its life (tests/faults/README.md, "Broker faults"):
    the services start once the answer is yes, as they would against a running cluster."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.transaction import InitProducerIdRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap.split(","))
    await client.bootstrap()
    try:
        deadline = time.monotonic() + timeout
        while True:
            request = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)
            response = await client.send(client.get_random_node(), request)
            if response.error_code == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no producer id within {timeout}s: {response.error_code}")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


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

    @property
    def kafka(self) -> ApacheKafka:
        assert isinstance(self.stack.broker, ApacheKafka), "this rig's broker is not Apache Kafka"
        return self.stack.broker

    def url(self, service: str) -> str:
        """Where clients call `service`: its front when it runs replicas, else its process."""
        return self.system.url(service)

    def processes(self) -> list[ServiceProcess]:
        """Every replica of every service serving now (one per service without replicas)."""
        return [p for pods in self.stack.pods.values() for p in pods] or list(
            self.stack.services.values()
        )

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

    # ------------------------------------------------------------------ the Kafka cluster

    @contextlib.asynccontextmanager
    async def kafka_admin(self) -> AsyncIterator[AIOKafkaAdminClient]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            yield admin
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        """Each partition of `topic` as the cluster describes it: partition, leader (-1: none),
        replicas, isr."""
        async with self.kafka_admin() as admin:
            (described,) = await admin.describe_topics([topic])
        assert described["error_code"] == 0, described
        return sorted(described["partitions"], key=lambda p: int(p["partition"]))

    async def leader_of(self, topic: str, partition: int) -> int:
        return int(
            next(p for p in await self.partitions(topic) if p["partition"] == partition)["leader"]
        )

    async def coordinator_of(self, group_id: str) -> int:
        """The group's coordinator broker, asked again while the cluster is moving it."""

        async def found() -> int:
            async with self.kafka_admin() as admin:
                return int(await admin.find_coordinator(group_id))

        return int(await eventually(kafka_tolerant(found), 60, f"the coordinator of {group_id}"))

    async def replicas_in_sync(self, timeout: float = 120) -> float:
        """Until every partition of every topic has a leader and all its replicas in sync;
        the seconds it took."""
        started = time.monotonic()

        async def whole() -> bool:
            async with self.kafka_admin() as admin:
                described = await admin.describe_topics(await admin.list_topics())
            return all(
                t["error_code"] == 0
                and all(
                    p["leader"] >= 0 and set(p["isr"]) == set(p["replicas"])
                    for p in t["partitions"]
                )
                for t in described
            )

        await eventually(kafka_tolerant(whole), timeout, "every replica back in sync", every=0.5)
        return time.monotonic() - started

    async def start_nodes(self, node_ids: Iterable[int], timeout: float = 90) -> None:
        """Start stopped or killed nodes again with their data, the controller first, then the
        brokers together (each start is a JVM: seconds of CPU)."""
        kafka = self.kafka
        ids = sorted(node_ids, key=lambda n: (kafka.broker(n).is_broker, n))
        controllers = [n for n in ids if not kafka.broker(n).is_broker]
        for node_id in controllers:
            await asyncio.to_thread(kafka.start_node, node_id, timeout)
        brokers = [n for n in ids if kafka.broker(n).is_broker]
        await asyncio.gather(
            *(asyncio.to_thread(kafka.start_node, node_id, timeout) for node_id in brokers)
        )

    async def consumer_groups(self) -> list[str]:
        """The services' consumer groups (`scanner-auth.*`), as the cluster knows them."""
        async with self.kafka_admin() as admin:
            listed = await admin.list_consumer_groups()
        return sorted(g[0] for g in listed if str(g[0]).startswith("scanner-auth."))

    async def group_lags(self) -> dict[str, int]:
        """Per consumer group of the services: records not yet committed, over every partition
        of every topic the group has committed offsets on (end offset minus committed offset,
        a partition it never committed counting from 0)."""
        groups = await self.consumer_groups()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            async with self.kafka_admin() as admin:
                lags: dict[str, int] = {}
                for group in groups:
                    committed = await admin.list_consumer_group_offsets(group)
                    topics = {tp.topic for tp in committed}
                    tps = [
                        TopicPartition(t, p)
                        for t in sorted(topics)
                        for p in sorted(await topic_partitions(consumer, t))
                    ]
                    ends = await consumer.end_offsets(tps) if tps else {}
                    lags[group] = sum(
                        max(0, end - max(0, committed[tp].offset if tp in committed else 0))
                        for tp, end in ends.items()
                    )
                return lags
        finally:
            await consumer.stop()

    async def no_lag(self) -> bool:
        """Every consumer group of the services (all of them) has committed up to the end of
        its topics."""
        lags = await self.group_lags()
        return len(lags) >= CONSUMER_GROUPS and not any(lags.values())

    async def outbox_counts(self) -> dict[str, int]:
        return {
            name: int(await self.fetchval(name, "SELECT count(*) FROM outbox"))
            for name in SERVICE_ORDER
        }

    # ------------------------------------------------------------------ processes

    def pids(self) -> dict[str, int]:
        """Each service's process id: the same after a fault means it was not restarted."""
        return {name: self.pid(name) for name in self.stack.services}

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

    async def ready_now(self, service: str) -> bool:
        """Whether `service` answers ready now (False if its process has exited)."""
        try:
            return await asyncio.to_thread(self.stack.services[service].ready)
        except RuntimeError:
            return False

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
        """Whatever a failed test left behind: a frozen, stopped or killed broker node, a stopped
        database, a dead or frozen service. Then every broker in sync (a cluster) and every
        service ready again."""
        assert self.stack.broker is not None
        with contextlib.suppress(ProcessLookupError):
            self.stack.broker.resume()
        if isinstance(self.stack.broker, ApacheKafka):
            await self.start_nodes([n.node_id for n in self.stack.broker.nodes if not n.running])
            if self.stack.broker.brokers_count > 1:
                await self.replicas_in_sync()
        if not self.postgres_running():
            assert self.stack.postgres is not None
            self.stack.postgres.resume()
        processes = self.processes()
        for svc in processes:
            if svc.proc is not None and svc.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGCONT)
            else:
                svc.start()

        # A service a fault left running but stuck (not ready within 30 s: a healthy one is
        # within a second) is restarted, so that the next test starts whole; the test that left
        # it so has failed already.
        def ready_now(svc: ServiceProcess) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                try:
                    return await asyncio.to_thread(svc.ready)
                except RuntimeError:  # it has exited
                    return False

            return check

        answers = await asyncio.gather(*(within(ready_now(svc), 30) for svc in processes))
        for svc, ready in zip(processes, answers, strict=True):
            if not ready:
                print(f"\nheal: {svc.name} (:{svc.port}) not ready 30 s after the test: restarted")
                svc.stop()
                svc.start()
        await asyncio.gather(*(asyncio.to_thread(svc.wait_ready, 120) for svc in processes))
        for name, front in self.stack.fronts.items():  # every replica back in rotation
            for svc in self.stack.pods[name]:
                front.add(svc.port)

    def logs(self) -> str:
        return self.system.logs()

    def log_marks(self) -> dict[str, int]:
        """Where each service's log ends now (`logs_since`)."""
        return {
            name: svc.log_path.stat().st_size if svc.log_path.exists() else 0
            for name, svc in self.stack.services.items()
        }

    def logs_since(self, marks: dict[str, int]) -> str:
        out = []
        for name, svc in self.stack.services.items():
            with contextlib.suppress(OSError), open(svc.log_path, "rb") as log:
                log.seek(marks.get(name, 0))
                out.append(log.read().decode(errors="replace"))
        return "\n".join(out)


def kafka_tolerant(check: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """`check`, with a Kafka client error (a broker still starting) counting as not yet."""

    async def tolerant() -> Any:
        try:
            return await check()
        except (TimeoutError, KafkaError) as exc:
            return exc

    return tolerant


async def within(check: Callable[[], Awaitable[Any]], timeout: float, every: float = 0.2) -> bool:
    """Whether `check` gives a truthy result within `timeout` seconds (`eventually` that
    answers instead of failing, for counts printed before they are asserted)."""
    try:
        await eventually(kafka_tolerant(check), timeout, "", every=every)
    except AssertionError:
        return False
    return True


# ------------------------------------------------------------------------ work during a fault


@dataclass
class Upload:
    scan_id: str
    started: float  # time.monotonic()
    ended: float
    status: int  # 0: no HTTP answer


@dataclass
class Uploads:
    """Uploads of one scanner, each with when it started and ended, as a fault test makes them
    before, during and after the fault."""

    rig: Rig
    credential: str
    done: list[Upload] = field(default_factory=list)

    async def one(self, label: str = "scan") -> Upload:
        scan_id = uid(label)
        started = time.monotonic()
        try:
            status = (await self.rig.upload(self.credential, {"scan_id": scan_id})).status_code
        except httpx.HTTPError:
            status = 0
        upload = Upload(scan_id, started, time.monotonic(), status)
        self.done.append(upload)
        return upload

    async def keep_going(self, stopping: asyncio.Event, label: str, workers: int = 3) -> None:
        async def worker() -> None:
            while not stopping.is_set():
                await self.one(label)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(workers)))

    def between(self, since: float, until: float) -> list[Upload]:
        """The uploads that started at `since` or later and were answered by `until`."""
        return [u for u in self.done if u.started >= since and u.ended <= until]

    def statuses(self, uploads: list[Upload] | None = None) -> dict[int, int]:
        return dict(Counter(u.status for u in (self.done if uploads is None else uploads)))

    async def on_topic(self) -> set[str]:
        return {e.data.get("scan_id") for e in await self.rig.events(SCANS_TOPIC, "ScanIngested")}


@dataclass
class Work:
    """State changes of every kind a fault test commits while (part of) Kafka is away, each
    with its events, and what each must have become once Kafka is back.

    Before the fault (`prepare`): a scanner that uploads, a code ready to be redeemed, a scanner
    about to be deauthorised (its credential works), a scanner with an active code to email.
    During it (`commit`): a code issued and superseded, the pending code redeemed, the scanner
    deauthorised, an email requested. After (`check`): the events arrived, the effects happened
    once each."""

    rig: Rig
    uploading: Scanner
    uploads: Uploads
    to_redeem: Scanner
    pending_code: str
    fresh: Scanner
    leaving: Scanner
    leaving_credential: str
    mailed: Scanner
    committed: dict[str, list[str]] = field(default_factory=dict)  # event type -> keys
    redeemed_credential: str = ""
    superseded: str = ""
    superseding: str = ""
    notification_id: str = ""

    @classmethod
    async def prepare(cls, rig: Rig, label: str) -> Work:
        uploading, to_redeem, fresh, leaving, mailed = await rig.scanners(5, label)
        tokens = {
            s.scanner_id: await rig.generate(s.scanner_id)
            for s in (uploading, to_redeem, leaving, mailed)
        }
        await rig.redeemer_knows_tokens([t["token_id"] for t in tokens.values()])
        credentials = []
        for s in (uploading, leaving):
            r = await rig.redeem(tokens[s.scanner_id]["code"], s.serial_number)
            assert r.status_code == 201, r.text
            credentials.append(r.json()["credential"])
        for credential in credentials:

            async def gate_open(c: str = credential) -> bool:
                return (await rig.upload(c, {"probe": True})).status_code == 202

            await eventually(gate_open, 60, "the gate opened")
        return cls(
            rig,
            uploading,
            Uploads(rig, credentials[0]),
            to_redeem,
            tokens[to_redeem.scanner_id]["code"],
            fresh,
            leaving,
            credentials[1],
            mailed,
        )

    async def commit(self) -> None:
        """Every change committed (answered 201/204/202) whether Kafka is there or not."""
        rig, committed = self.rig, self.committed
        issued = await rig.generate(self.fresh.scanner_id)
        superseding = await rig.generate(self.fresh.scanner_id)
        self.superseded, self.superseding = issued["token_id"], superseding["token_id"]
        committed.setdefault("TokenIssued", []).extend([self.superseded, self.superseding])
        committed.setdefault("TokenRevoked", []).append(self.superseded)
        r = await rig.redeem(self.pending_code, self.to_redeem.serial_number)
        assert r.status_code == 201, r.text
        self.redeemed_credential = r.json()["credential"]
        committed.setdefault("ScannerAuthorised", []).append(r.json()["credential_id"])
        async with rig.admin() as admin:
            r = await admin.delete(f"/v1/scanners/{self.leaving.scanner_id}/authorisation")
        assert r.status_code == 204, r.text
        committed.setdefault("ScannerDeauthorised", []).append(self.leaving.scanner_id)
        self.notification_id = await rig.email(self.mailed)
        committed.setdefault("TokenEmailRequested", []).append(self.notification_id)

    @staticmethod
    def key(event: CloudEvent) -> str:
        data = event.data
        field_of = {
            "TokenIssued": "token_id",
            "TokenRevoked": "token_id",
            "ScannerAuthorised": "credential_id",
            "ScannerDeauthorised": "scanner_id",
            "TokenEmailRequested": "notification_id",
        }
        return str(data.get(field_of.get(event.type, ""), ""))

    async def seen(self) -> dict[tuple[str, str], int]:
        """(type, key) of every committed event -> how many records of it the topics hold."""
        wanted = {(kind, k) for kind, keys in self.committed.items() for k in keys}
        counts: dict[tuple[str, str], int] = {}
        for topic in (PUBLIC_TOPIC, NOTIFICATIONS_TOPIC):
            for event in await self.rig.events(topic):
                if (event.type, self.key(event)) in wanted:
                    k = (event.type, self.key(event))
                    counts[k] = counts.get(k, 0) + 1
        return counts

    async def check(self, timeout: float = 120) -> WorkOutcome:
        """Once Kafka is back (waiting at most `timeout` seconds in all): the counts of the
        fault table. `lost`: committed events not on
        their topic; `redelivered`: extra records of them (allowed); `unseen`: effects that did
        not happen; `duplicated_effects`: effects that happened twice."""
        rig = self.rig
        sent = sum(len(keys) for keys in self.committed.values())
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        async def all_arrived() -> bool:
            return len(await self.seen()) == sent

        await within(all_arrived, left(), every=1)
        seen = await self.seen()
        lost = sent - len(seen)
        redelivered = sum(n - 1 for n in seen.values())

        async def gate_accepts() -> bool:
            return (await rig.upload(self.redeemed_credential, {"probe": True})).status_code == 202

        async def gate_refuses_leaving() -> bool:
            status = (await rig.upload(self.leaving_credential, {"probe": True})).status_code
            return status in (401, 403)

        async def redeemer_follows_tokens() -> bool:
            rows = await rig.fetch(
                "redeemer",
                "SELECT token_id, status FROM tokens WHERE token_id = ANY($1)",
                [self.superseded, self.superseding],
            )
            return {r["token_id"]: r["status"] for r in rows} == {
                self.superseded: "revoked",
                self.superseding: "active",
            }

        async def email_sent() -> bool:
            status = await rig.fetchval(
                "notifier",
                "SELECT status FROM notifications WHERE notification_id = $1",
                self.notification_id,
            )
            return bool(status == "sent")

        effects = {
            "the gate accepts the credential redeemed": gate_accepts,
            "the gate refuses the deauthorised credential": gate_refuses_leaving,
            "the redeemer's tokens revoked and active": redeemer_follows_tokens,
            "the email sent": email_sent,
        }
        missing = [name for name, check in effects.items() if not await within(check, left())]
        # A `sent` notification is final (the sender sends only pending rows): the mails now in
        # the sink are all this request will ever produce.
        assert rig.stack.mail is not None
        mails = len(rig.stack.mail.to(self.mailed.viewer_email))
        credentials = int(
            await rig.fetchval(
                "redeemer",
                "SELECT count(*) FROM credentials WHERE scanner_id = $1",
                self.to_redeem.scanner_id,
            )
        )
        return WorkOutcome(
            committed=sent,
            lost=lost,
            redelivered=redelivered,
            unseen=missing + ["an email"] * (mails == 0) + ["a credential"] * (credentials == 0),
            duplicated_effects=max(0, mails - 1) + max(0, credentials - 1),
            emails=mails,
            credentials=credentials,
        )


@dataclass
class WorkOutcome:
    committed: int  # events committed during the fault
    lost: int  # of them, not on their topic
    redelivered: int  # extra records of them on the topics (redelivery: allowed)
    unseen: list[str]  # effects that did not happen
    duplicated_effects: int  # effects that happened twice (emails, credentials)
    emails: int
    credentials: int

    def __str__(self) -> str:
        return (
            f"committed={self.committed} lost={self.lost} redelivered={self.redelivered} "
            f"unseen={len(self.unseen)} duplicated_effects={self.duplicated_effects} "
            f"(emails={self.emails}, credentials={self.credentials})"
        )


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
