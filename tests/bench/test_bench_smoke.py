"""The benchmark harness cannot rot, and what it made fast publishes the same records.

- `bench/run.py --profile smoke --only ingest,producers` end to end: embedded infrastructure,
  scan-ingest as a process, the floor server, wrk, the Kafka-acknowledged count, the producer
  comparison's apps (aiokafka, scan-ingest's record batches, confluent-kafka), the JSON it
  writes. No timing is asserted: speed belongs in `make bench`.
- The relay's batched path (`OutboxRelay(producer=...)`, measured in bench/README.md) puts on
  the topic exactly what one `send` per row puts there: same keys, values, headers,
  partitions, and per key the same order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker

from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import TokenExpired, new_event, utcnow
from scanner_auth_shared.messaging import aiokafka_producer
from scanner_auth_shared.outbox import MESSAGING_DDL, OutboxRelay
from scanner_auth_shared.testing.kafka import read_topic

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(480)
def test_the_bench_harness_measures_ingest_against_its_floor(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (`make bench` installs it)")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--profile",
            "smoke",
            "--only",
            "ingest,producers",
            "--results",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=460,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "cores" in out.stdout and "floor (same run)" in out.stdout
    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["machine"]["cores"] >= 1
    figures = {f["key"]: f for f in document["figures"]}
    assert {"ingest_accepted", "ingest_bad_credential", "ingest_latency_half_peak"} <= set(figures)
    accepted = figures["ingest_accepted"]["data"]
    # Every 2xx wrk saw was a 202 that scan-ingest sent after Kafka acknowledged the event,
    # and the bad credentials were all refused.
    assert accepted["every_answer_as_expected"], accepted
    assert accepted["figure"]["runs"][0]["kafka_acked_202"] > 0
    assert figures["ingest_bad_credential"]["data"]["every_answer_as_expected"]
    assert accepted["floor"]["per_s"] > 0
    # The broker's own limit, measured in the same run by Kafka's ProducerPerformance.
    producer = figures["kafka_producer_floor"]["data"]
    assert producer["records_per_s"] > 0 and producer["records"] == 5000
    assert accepted["kafka_producer_floor_per_s"] == producer["records_per_s"]
    # Each producer app answered its 202s only after Kafka's acknowledgement, and all of them.
    producers = figures["ingest_producers"]["data"]["producers"]
    assert set(producers) == {"floor", "aiokafka", "aiokafka-batches", "confluent"}
    for kind, summary in producers.items():
        assert summary["per_s"] > 0, kind
        assert all(r["non_2xx"] == 0 for r in summary["runs"]), (kind, summary)
    assert list(tmp_path.glob("bench-*-smoke.json"))


def _outbox_rows() -> list[tuple[str, str, str | None, bytes]]:
    """(event_id, event_type, key, payload) of 700 events of 7 scanners, a few without a key."""
    rows = []
    for n in range(700):
        data = TokenExpired(
            token_id=f"t{n}", scanner_id=f"sc-{n % 7}", org_id="o", expired_at=utcnow()
        )
        event = new_event(data, source="scanner-auth/test")
        rows.append((event.id, event.type, f"sc-{n % 7}" if n % 50 else None, event.to_bytes()))
    return rows


async def _relay_everything(
    url: str, bootstrap: str, topic: str, outbox: list[Any], batched: bool
) -> None:
    dsn = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn)
    for ddl in MESSAGING_DDL:
        await conn.execute(ddl)
    rows = [(event_id, kind, topic, key, payload) for event_id, kind, key, payload in outbox]
    await conn.copy_records_to_table(
        "outbox", records=rows, columns=["event_id", "event_type", "topic", "key", "payload"]
    )
    broker = KafkaBroker(bootstrap, enable_idempotence=False, acks="all")
    await broker.connect()

    async def send(topic: str, key: bytes | None, payload: bytes, headers: dict[str, str]) -> Any:
        return await broker.publish(payload, topic, key=key, headers=headers, no_confirm=True)

    relay = OutboxRelay(
        dsn,
        send,
        service="test",
        batch_size=300,
        producer=(lambda: aiokafka_producer(broker)) if batched else None,
    )
    if batched:  # else this would compare the per-row path with itself
        assert aiokafka_producer(broker) is not None
    try:
        while await relay.drain_once(conn):
            pass
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await broker.stop()
        await conn.close()


@pytest.mark.integration
async def test_the_batched_relay_publishes_what_one_send_per_row_does(
    make_database: Any, kafka: Any
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=3, replication_factor=1) for t in ("per.row", "batched")]
        )
    finally:
        await admin.close()
    outbox = _outbox_rows()
    await _relay_everything(make_database(), kafka.bootstrap, "per.row", outbox, False)
    await _relay_everything(make_database(), kafka.bootstrap, "batched", outbox, True)
    per_row = await read_topic(kafka.bootstrap, "per.row")
    batched = await read_topic(kafka.bootstrap, "batched")
    assert len(per_row) == len(batched) == 700

    def shape(rs: list[Any]) -> list[tuple[Any, ...]]:
        # Per partition, in offset order: key, value, headers (faststream adds a random
        # correlation_id of its own). Keyless rows aside: the default partitioner spreads them
        # at random, the batched relay puts them in the first partition.
        return [
            (r.partition, r.key, r.value, sorted(h for h in r.headers if h[0] != "correlation_id"))
            for r in rs
            if r.key is not None
        ]

    assert shape(batched) == shape(per_row)
    keyless = [r for r in batched if r.key is None]
    assert len(keyless) == 14 and {r.partition for r in keyless} == {0}
    assert all(dict(r.headers)["ce-type"] == b"TokenExpired" for r in batched)
