"""Broker faults on a controller and three brokers with the production topic settings
(replication 3, `min.insync.replicas` 2; `fault_kit.cluster_rig`, a stack of this module's own):

- the leader of a `myscanner.scanner-auth.v1` partition SIGKILLed while the token-issuer's relay
  drains a backlog of 3,000 `TokenIssued`;
- one broker (the redeemer's group coordinator) stopped and started again, its data kept, while
  the consumers work through a backlog and the system takes requests;
- the token-state group's coordinator moved away (its broker stopped) and back (a
  preferred-leader election, as the cluster's periodic rebalance does): an email after each
  move is sent (the notifier's read barrier asks for the coordinator again);
- two brokers down, below `min.insync.replicas`: nothing may be acknowledged (no upload answered
  202), the outboxes keep the events, and everything drains once the brokers are back;
- the whole cluster SIGKILLed for 30 seconds and started again from its data.

Each test prints its counts: events lost, delivered twice (allowed: redelivery), effects applied
twice (never) or never (unseen). Each checks that every outbox empties, every consumer group
reaches lag 0 (committed offsets against end offsets) and every service is ready again with the
process it had before the fault (no restart). tests/faults/README.md has the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fault_kit import (
    CLUSTER_IDEMPOTENCE,
    ORG,
    Rig,
    Work,
    eventually,
    uid,
    within,
)

from notifier.consumers import TOKEN_STATES
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CloudEvent,
    PoisonMessage,
    TokenIssued,
    new_event,
)
from scanner_auth_shared.kafka_broker import run_tool
from scanner_auth_shared.messaging import default_partition

# The backlog test waits for the consumers as long as they progress (10 to 100 events/s on this
# machine, so 30 s to 5 minutes for the backlog); each test's own waits are bounded below this.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

# TokenIssued committed for the relay to drain: 2,000, then 1,000 more during the failover.
BACKLOG = int(os.environ.get("BROKER_FAULTS_BACKLOG", "3000"))
REDEEMER_GROUP = "scanner-auth.redeemer.authorisation"
OUTBOX_COLUMNS = ["event_id", "event_type", "topic", "key", "payload"]


@pytest.fixture(autouse=True)
async def healed(cluster_rig: Rig) -> AsyncIterator[None]:
    """This module's stack, not the suites' shared one: every node running and every replica in
    sync, every service ready, before and after each test."""
    await cluster_rig.heal()
    yield
    await cluster_rig.heal()


# ------------------------------------------------------------------------------------ backlog


def backlog(label: str, n: int, scanners: int = 400) -> list[CloudEvent]:
    """`n` TokenIssued of `scanners` scanners (so several per key, in order), as the
    token-issuer would commit them."""
    now = datetime.now(UTC)
    return [
        new_event(
            TokenIssued(
                token_id=f"{label}-t{i:05d}",
                scanner_id=f"{label}-sc{i % scanners:03d}",
                org_id=ORG,
                issued_by="u-alice",
                issued_at=now,
                expires_at=now + timedelta(hours=1),
                code_digest=hashlib.sha256(f"{label}-{i}".encode()).hexdigest(),
            ),
            source="scanner-auth/token-issuer",
        )
        for i in range(n)
    ]


async def commit_to_outbox(conn: asyncpg.Connection, events: list[CloudEvent]) -> None:
    """One transaction of outbox rows, as `outbox.enqueue` writes them."""
    rows = [(e.id, e.type, PUBLIC_TOPIC, e.subject, e.to_bytes()) for e in events]
    await conn.copy_records_to_table("outbox", records=rows, columns=OUTBOX_COLUMNS)


@dataclass
class BacklogOutcome:
    sent: int
    lost: int  # committed, not on the topic
    redelivered: int  # extra records of an event (allowed)
    altered: int  # records whose key, bytes or type header differ from the committed row
    out_of_order: int  # keys whose events first appear on the topic out of commit order
    applied: dict[str, int]  # consumer database -> events applied (effect rows)
    applied_twice: int  # processed-event rows beyond one per (consumer, event)

    @property
    def unseen(self) -> int:
        return sum(self.sent - n for n in self.applied.values())


async def backlog_on_topic(rig: Rig, events: list[CloudEvent]) -> BacklogOutcome:
    committed = {e.id: e for e in events}
    found: dict[str, int] = {}
    altered = 0
    order: dict[str, list[str]] = {}  # key -> event ids, first appearance, in offset order
    for record in await rig.records(PUBLIC_TOPIC):  # sorted by partition, offset
        try:
            event_id = CloudEvent.from_bytes(record.value).id
        except PoisonMessage:
            continue
        original = committed.get(event_id)
        if original is None:
            continue
        found[event_id] = found.get(event_id, 0) + 1
        if (
            record.value != original.to_bytes()
            or record.key != (original.subject or "").encode()
            or dict(record.headers).get("ce-type") != b"TokenIssued"
        ):
            altered += 1
        if found[event_id] == 1:
            order.setdefault(record.key.decode(), []).append(event_id)
    expected: dict[str, list[str]] = {}
    for e in events:
        if e.id in found:
            expected.setdefault(e.subject or "", []).append(e.id)
    return BacklogOutcome(
        sent=len(events),
        lost=len(events) - len(found),
        redelivered=sum(n - 1 for n in found.values()),
        altered=altered,
        out_of_order=sum(order.get(k) != ids for k, ids in expected.items()),
        applied={},
        applied_twice=0,
    )


async def applied(rig: Rig, events: list[CloudEvent]) -> tuple[dict[str, int], int]:
    """How many of `events` each consumer of TokenIssued applied (its effect row, with the
    committed digest), and processed-event rows beyond one per (consumer, event)."""
    tokens = [(e.data["token_id"], e.data["code_digest"]) for e in events]
    ids, digests = [t for t, _ in tokens], [d for _, d in tokens]
    redeemer = await rig.fetchval(
        "redeemer",
        "SELECT count(*) FROM tokens t JOIN unnest($1::text[], $2::text[]) AS w(id, digest) "
        "ON t.token_id = w.id AND t.code_digest = w.digest",
        ids,
        digests,
    )
    notifier = await rig.fetchval(
        "notifier", "SELECT count(*) FROM token_states WHERE token_id = ANY($1)", ids
    )
    twice = 0
    for service in ("redeemer", "notifier"):
        twice += int(
            await rig.fetchval(
                service,
                "SELECT count(*) - count(DISTINCT (consumer, event_id)) FROM processed_events "
                "WHERE event_id = ANY($1)",
                [e.id for e in events],
            )
        )
    return {"redeemer": int(redeemer), "notifier": int(notifier)}, twice


async def wait_applied(
    rig: Rig, events: list[CloudEvent], stalled: float = 60, cap: float = 900
) -> float:
    """Until both consumers applied every event, as long as they make progress: the seconds it
    took. The consumers' rate depends on the machine's load (10 to 100 events/s here), so the
    deadline is no progress for `stalled` seconds (a rebalance takes seconds; a minute is
    ample), within `cap` seconds in all (the module's timeout is the last guard)."""
    started = last_change = time.monotonic()
    last = -1
    while True:
        counts, _ = await applied(rig, events)
        now = time.monotonic()
        if all(n == len(events) for n in counts.values()):
            return now - started
        if sum(counts.values()) != last:
            last, last_change = sum(counts.values()), now
        if now - last_change > stalled or now - started > cap:
            return now - started
        await asyncio.sleep(1)


@dataclass
class Settled:
    """After a fault: every outbox empty, every consumer group at lag 0, every service ready
    with the process it had before the fault; and how long each took."""

    outboxes_empty: bool
    outboxes_s: float
    outbox_rows: dict[str, int]
    lag_zero: bool
    lag_s: float
    lags: dict[str, int]
    ready: bool
    restarted: list[str]

    @property
    def ok(self) -> bool:
        return self.outboxes_empty and self.lag_zero and self.ready and not self.restarted

    def __str__(self) -> str:
        return (
            f"outboxes_empty={self.outboxes_empty} ({self.outboxes_s:.1f}s; rows "
            f"{self.outbox_rows}) lag_0={self.lag_zero} ({self.lag_s:.1f}s; "
            f"{sum(self.lags.values())} behind in {len(self.lags)} groups) "
            f"ready_without_restart={self.ready and not self.restarted}"
        )


async def settle(rig: Rig, pids: dict[str, int], timeout: float = 120) -> Settled:
    started = time.monotonic()

    async def outboxes() -> bool:
        return not any((await rig.outbox_counts()).values())

    empty = await within(outboxes, timeout, every=0.5)
    outboxes_s = time.monotonic() - started
    rows = await rig.outbox_counts()
    started = time.monotonic()

    lag_zero = await within(rig.no_lag, timeout, every=0.5)
    lag_s = time.monotonic() - started
    lags = await rig.group_lags()

    async def ready() -> bool:
        return all(await asyncio.gather(*(rig.ready_now(name) for name in rig.stack.services)))

    all_ready = await within(ready, 60, every=0.5)
    now = {
        name: svc.proc.pid if svc.proc is not None and svc.proc.poll() is None else -1
        for name, svc in rig.stack.services.items()
    }
    restarted = [name for name, pid in pids.items() if now.get(name) != pid]
    return Settled(empty, outboxes_s, rows, lag_zero, lag_s, lags, all_ready, restarted)


# ------------------------------------------------------------------------------------ helpers


async def readiness(rig: Rig, service: str, stopping: asyncio.Event) -> list[tuple[float, int]]:
    """`service`'s /readyz every second until `stopping`: (time.monotonic(), status)."""
    samples: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=rig.url(service), timeout=5) as probe:
        while not stopping.is_set():
            at = time.monotonic()
            try:
                samples.append((at, (await probe.get("/readyz")).status_code))
            except httpx.HTTPError:
                samples.append((at, 0))
            await asyncio.sleep(1)
    return samples


def producer_errors(logs: str) -> dict[str, int]:
    """What the services' logs say about records Kafka did not acknowledge."""
    return {
        "NotEnoughReplicas": logs.count("NotEnoughReplicas"),
        "uploads not acknowledged": logs.count("Kafka did not acknowledge it"),
        "relay interrupted": logs.count("outbox relay interrupted"),
    }


def report(name: str, **counts: Any) -> None:
    print(f"\nbroker faults, {name}: " + " ".join(f"{k}={v}" for k, v in counts.items()))


def progress(what: str) -> None:
    print(f"\n[{time.strftime('%H:%M:%S')}] {what}", flush=True)


# ------------------------------------------------------------------------------------ tests


async def test_a_partition_leader_sigkilled_while_the_relay_drains_a_backlog(
    cluster_rig: Rig,
) -> None:
    rig = cluster_rig
    pids = rig.pids()
    events = backlog(uid("backlog"), BACKLOG)
    first, rest = events[: BACKLOG * 2 // 3], events[BACKLOG * 2 // 3 :]
    partitions = [p["partition"] for p in await rig.partitions(PUBLIC_TOPIC)]
    target = default_partition((events[0].subject or "").encode(), partitions)
    victim = await rig.leader_of(PUBLIC_TOPIC, target)

    async with rig.connect("token-issuer") as conn:
        await commit_to_outbox(conn, first)
        committed_at = time.monotonic()

        async def draining() -> bool:
            # The relay's first batch acknowledged and deleted: it is mid-drain.
            return int(await conn.fetchval("SELECT count(*) FROM outbox")) < len(first)

        await eventually(draining, 60, "the relay started on the backlog", every=0.005)
        pending_at_kill = int(await conn.fetchval("SELECT count(*) FROM outbox"))
        await asyncio.to_thread(rig.kafka.kill_node, victim)
        killed = time.monotonic()
        progress(f"broker {victim} SIGKILLed, {pending_at_kill} rows in the outbox")
        # More commits while the partition has no leader: the backlog keeps coming.
        for i in range(0, len(rest), 250):
            await commit_to_outbox(conn, rest[i : i + 250])
            await asyncio.sleep(0.05)
    await rig.outbox_empty("token-issuer", timeout=120)
    drained = time.monotonic() - killed
    progress(f"the token-issuer's outbox drained {drained:.1f}s after the kill")

    async def all_on_topic() -> BacklogOutcome | None:
        outcome = await backlog_on_topic(rig, events)
        return outcome if outcome.lost == 0 else None

    await within(all_on_topic, 60, every=1)
    outcome = await backlog_on_topic(rig, events)
    applied_in = await wait_applied(rig, events)
    outcome.applied, outcome.applied_twice = await applied(rig, events)
    progress(f"consumers applied {outcome.applied} in {applied_in:.1f}s")
    # The killed broker comes back with its data and catches up.
    restarted = time.monotonic()
    await rig.start_nodes([victim])
    in_sync = time.monotonic() - restarted + await rig.replicas_in_sync()
    settled = await settle(rig, pids)
    new_leader = await rig.leader_of(PUBLIC_TOPIC, target)
    report(
        "leader SIGKILL mid-drain",
        sent=outcome.sent,
        lost=outcome.lost,
        redelivered=outcome.redelivered,
        altered=outcome.altered,
        out_of_order_keys=outcome.out_of_order,
        unseen=outcome.unseen,
        duplicated_effects=outcome.applied_twice,
        applied=outcome.applied,
        killed_broker=victim,
        partition=target,
        leader_after=new_leader,
        outbox_at_kill=pending_at_kill,
        relay_started_s=round(killed - committed_at, 2),
        drained_s_after_kill=round(drained, 1),
        applied_s=round(applied_in, 1),
        broker_back_in_sync_s=round(in_sync, 1),
        settled=str(settled),
    )
    assert outcome.lost == 0 and outcome.altered == 0 and outcome.out_of_order == 0, outcome
    assert outcome.unseen == 0 and outcome.applied_twice == 0, outcome
    assert settled.ok, settled


async def test_a_broker_stopped_and_started_again_while_consumers_work(cluster_rig: Rig) -> None:
    rig = cluster_rig
    work = await Work.prepare(rig, "sc-bounce")
    pids = rig.pids()
    events = backlog(uid("busy"), 600)
    victim = await rig.coordinator_of(REDEEMER_GROUP)
    async with rig.connect("token-issuer") as conn:
        await commit_to_outbox(conn, events)

    async def consumers_busy() -> bool:
        counts, _ = await applied(rig, events)
        return 0 < counts["redeemer"] < len(events)

    await eventually(consumers_busy, 60, "the redeemer working through the backlog", every=0.05)
    stopping = asyncio.Event()
    uploading = asyncio.create_task(work.uploads.keep_going(stopping, "scan-bounce"))
    await asyncio.to_thread(rig.kafka.stop_node, victim)  # SIGTERM: a controlled shutdown
    stopped = time.monotonic()
    progress(f"broker {victim} stopped")
    applied_at_stop, _ = await applied(rig, events)
    await work.commit()
    # The broker stays away 10 s (the fault itself, not a wait for something not to happen).
    await asyncio.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    down = time.monotonic() - stopped
    restarted = time.monotonic()
    await rig.start_nodes([victim])
    in_sync = time.monotonic() - restarted + await rig.replicas_in_sync()
    stopping.set()
    await uploading
    during = work.uploads.between(stopped, restarted)

    progress(f"broker {victim} back in sync after {in_sync:.1f}s")
    outcome = await work.check()
    applied_in = await wait_applied(rig, events)
    counts, twice = await applied(rig, events)
    settled = await settle(rig, pids)
    on_topic = await work.uploads.on_topic()
    accepted = [u.scan_id for u in work.uploads.done if u.status == 202]
    lost_uploads = [s for s in accepted if s not in on_topic]
    report(
        "one broker stopped and started",
        stopped_broker=f"{victim} (the redeemer's group coordinator)",
        down_s=round(down, 1),
        backlog=len(events),
        applied_at_stop=applied_at_stop["redeemer"],
        work=str(outcome),
        backlog_unseen=sum(len(events) - n for n in counts.values()),
        backlog_applied_twice=twice,
        uploads_while_down=work.uploads.statuses(during),
        accepted_uploads=len(accepted),
        lost_uploads=len(lost_uploads),
        broker_back_in_sync_s=round(in_sync, 1),
        backlog_applied_s=round(applied_in, 1),
        settled=str(settled),
    )
    assert outcome.lost == 0 and not outcome.unseen and outcome.duplicated_effects == 0, outcome
    assert counts == {"redeemer": len(events), "notifier": len(events)} and twice == 0
    assert settled.ok, settled
    assert not lost_uploads, f"uploads answered 202 but not on the topic: {lost_uploads}"
    assert 202 in work.uploads.statuses(during), "no upload accepted with two brokers of three"


async def test_the_email_barrier_follows_its_group_coordinator_when_it_moves_back(
    cluster_rig: Rig,
) -> None:
    """The notifier's read barrier caches the coordinator of the token-state group. A broker
    that is no longer it answers NOT_COORDINATOR, which aiokafka's admin client turns into "no
    offsets" rather than an error: a barrier that kept the broker it cached would then hold
    every email for good. Here the coordinator is stopped (it moves), started again, and made
    coordinator again by a preferred-leader election (what the cluster's own rebalance does
    every `leader.imbalance.check.interval.seconds`): an email after each move is sent."""
    rig = cluster_rig
    await elect_preferred_leaders(rig)
    home = await rig.coordinator_of(TOKEN_STATES.group_id)
    mailed = iter(await rig.scanners(3, "sc-coord"))

    async def email_sent(what: str) -> float:
        scanner = next(mailed)
        await rig.generate(scanner.scanner_id)
        notification_id = await rig.email(scanner)
        started = time.monotonic()

        async def sent() -> bool:
            status = await rig.fetchval(
                "notifier",
                "SELECT status FROM notifications WHERE notification_id = $1",
                notification_id,
            )
            return bool(status == "sent")

        await eventually(sent, 60, f"the email {what} sent")
        return time.monotonic() - started

    first = await email_sent("before any move")  # the barrier has cached `home` now
    await asyncio.to_thread(rig.kafka.stop_node, home)  # a controlled shutdown: it moves away
    moved = await rig.coordinator_of(TOKEN_STATES.group_id)
    progress(f"coordinator {home} stopped; broker {moved} coordinates now")
    away = await email_sent("with the coordinator moved away")
    await rig.start_nodes([home])
    await rig.replicas_in_sync()
    await elect_preferred_leaders(rig)
    back = await rig.coordinator_of(TOKEN_STATES.group_id)
    progress(f"broker {home} back and preferred leader: broker {back} coordinates")
    assert back == home != moved, (home, moved, back)
    returned = await email_sent("with the coordinator moved back")
    report(
        "the group coordinator moved away and back",
        coordinator=home,
        moved_to=moved,
        email_s={"before": round(first, 1), "away": round(away, 1), "back": round(returned, 1)},
    )


async def elect_preferred_leaders(rig: Rig) -> None:
    """Every partition led by its preferred replica (the first of its replicas), as the
    cluster's periodic rebalance makes it; partitions led so already are no error."""
    await asyncio.to_thread(
        run_tool,
        "org.apache.kafka.tools.LeaderElectionCommand",
        "--bootstrap-server",
        rig.bootstrap,
        "--election-type",
        "PREFERRED",
        "--all-topic-partitions",
        timeout=120,
    )


async def test_two_brokers_down_nothing_is_acknowledged_and_the_outboxes_keep_the_events(
    cluster_rig: Rig,
) -> None:
    rig = cluster_rig
    work = await Work.prepare(rig, "sc-minisr")
    pids = rig.pids()
    victims = [n.node_id for n in rig.kafka.brokers][1:]  # brokers 2 and 3: one left
    marks = rig.log_marks()
    stopping = asyncio.Event()
    uploading = asyncio.create_task(work.uploads.keep_going(stopping, "scan-minisr"))
    probing = asyncio.create_task(readiness(rig, "scan-ingest", stopping))
    await work.uploads.one("scan-before")
    for victim in victims:
        await asyncio.to_thread(rig.kafka.kill_node, victim)
    below = time.monotonic()  # from here on one replica at most: below min.insync.replicas
    progress(f"brokers {victims} SIGKILLed")
    await work.commit()
    outboxes: list[dict[str, int]] = []
    while time.monotonic() - below < 15:  # the outage lasts 15 s; the outboxes are watched
        outboxes.append(await rig.outbox_counts())
        await asyncio.sleep(0.5)
    back = time.monotonic()
    stopping.set()
    await uploading
    ready_during = [status for at, status in await probing if below + 3 <= at <= back]
    during = work.uploads.between(below, back)
    errors = producer_errors(rig.logs_since(marks))
    restarted = time.monotonic()
    await rig.start_nodes(victims)
    in_sync = time.monotonic() - restarted + await rig.replicas_in_sync()
    progress(f"brokers {victims} back in sync after {in_sync:.1f}s")

    outcome = await work.check()
    settled = await settle(rig, pids)
    on_topic = await work.uploads.on_topic()
    accepted = [u.scan_id for u in work.uploads.done if u.status == 202]
    lost_uploads = [s for s in accepted if s not in on_topic]
    late = [u.scan_id for u in during if u.status == 503 and u.scan_id in on_topic]
    least = {name: min(o[name] for o in outboxes) for name in ("token-issuer", "redeemer")}
    report(
        "two brokers down (below min.insync.replicas)",
        killed_brokers=victims,
        down_s=round(back - below, 1),
        work=str(outcome),
        uploads_while_below=work.uploads.statuses(during),
        accepted_uploads=len(accepted),
        lost_uploads=len(lost_uploads),
        answered_503_landed_later=len(late),
        fewest_outbox_rows_while_down=least,
        producer_errors=errors,
        scan_ingest_readyz_while_below=sorted(set(ready_during)),
        brokers_back_in_sync_s=round(in_sync, 1),
        settled=str(settled),
    )
    assert during and 202 not in work.uploads.statuses(during), (
        f"an upload was acknowledged below min.insync.replicas: {work.uploads.statuses(during)}"
    )
    assert set(work.uploads.statuses(during)) == {503}, work.uploads.statuses(during)
    assert all(n > 0 for n in least.values()), f"an outbox emptied while below min ISR: {least}"
    assert outcome.lost == 0 and not outcome.unseen and outcome.duplicated_effects == 0, outcome
    assert not lost_uploads, f"uploads answered 202 but not on the topic: {lost_uploads}"
    assert settled.ok, settled


# Not strict: the stall needs a relay's batch to expire while its partition has no leader, which
# happens in some runs only (2 of the first 3); with BROKER_FAULTS_IDEMPOTENCE=off it must pass.
@pytest.mark.xfail(
    CLUSTER_IDEMPOTENCE != "off",
    strict=False,
    reason="aiokafka 0.14's idempotent producer can stall for good after a leaderless partition "
    "(OutOfOrderSequenceNumber): a relay then never drains again until its service restarts "
    "(tests/faults/README.md, 'Broker faults')",
)
async def test_the_whole_cluster_down_for_30_seconds(cluster_rig: Rig) -> None:
    rig = cluster_rig
    work = await Work.prepare(rig, "sc-blackout")
    pids = rig.pids()
    marks = rig.log_marks()
    stopping = asyncio.Event()
    uploading = asyncio.create_task(work.uploads.keep_going(stopping, "scan-blackout"))
    probing = asyncio.create_task(readiness(rig, "scan-ingest", stopping))
    await work.uploads.one("scan-before")
    nodes = [n.node_id for n in rig.kafka.brokers] + [
        n.node_id for n in rig.kafka.nodes if not n.is_broker
    ]
    for node in nodes:  # SIGKILL: no controlled shutdown, logs recovered at the next start
        await asyncio.to_thread(rig.kafka.kill_node, node)
    down = time.monotonic()
    progress("every node SIGKILLed")
    await work.commit()
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down)))  # the outage itself
    up = time.monotonic()
    stopping.set()
    await uploading
    ready_during = [status for at, status in await probing if down + 3 <= at <= up]
    during = work.uploads.between(down, up)
    await rig.start_nodes(nodes)
    listening = time.monotonic() - up
    in_sync = time.monotonic() - up + await rig.replicas_in_sync()
    progress(f"every node listening after {listening:.1f}s, in sync after {in_sync:.1f}s")

    # Once the cluster is whole an outbox drains within a second (the other tests: 0.1 s):
    # 30 s is ample.
    settled = await settle(rig, pids, timeout=30)
    outcome = await work.check(timeout=60 if settled.outboxes_empty else 10)

    async def accepting() -> bool:
        return (await work.uploads.one("scan-after")).status == 202

    uploads_again = await within(accepting, 30, every=0.5)
    stuck = rig.logs_since(marks).count("OutOfOrderSequenceNumber")
    on_topic = await work.uploads.on_topic()
    accepted = [u.scan_id for u in work.uploads.done if u.status == 202]
    lost_uploads = [s for s in accepted if s not in on_topic]
    late = [u.scan_id for u in during if u.status == 503 and u.scan_id in on_topic]
    report(
        "whole cluster down 30 s",
        down_s=round(up - down, 1),
        work=str(outcome),
        uploads_while_down=work.uploads.statuses(during),
        accepted_uploads=len(accepted),
        lost_uploads=len(lost_uploads),
        answered_503_landed_later=len(late),
        scan_ingest_readyz_while_down=sorted(set(ready_during)),
        nodes_listening_s=round(listening, 1),
        cluster_in_sync_s=round(in_sync, 1),
        out_of_order_sequence_errors=stuck,
        uploads_accepted_again=uploads_again,
        settled=str(settled),
    )
    assert during and set(work.uploads.statuses(during)) == {503}, work.uploads.statuses(during)
    assert 200 not in ready_during, f"scan-ingest said ready with no broker: {ready_during}"
    assert not lost_uploads, f"uploads answered 202 but not on the topic: {lost_uploads}"
    assert settled.ok, f"{settled}; OutOfOrderSequenceNumber in the logs: {stuck}"
    assert uploads_again, "scan-ingest accepts no upload since the cluster came back"
    assert outcome.lost == 0 and not outcome.unseen and outcome.duplicated_effects == 0, outcome
