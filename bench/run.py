"""`make bench`: every hot path of the system, each against a floor measured in the same run.

Starts the system as `scanner-auth dev --kafka apache` does (embedded PostgreSQL, one Apache
Kafka node with the full JIT, an SMTP sink, the four services as `scanner-auth serve`
processes), drives it from other processes (wrk for the ingest figures, an open-loop asyncio
process at a fixed rate for token issue and redeem, Kafka's own ProducerPerformance for the
broker's limit), prints one table and writes it as JSON under bench/results/. See
bench/README.md.

    python bench/run.py                     # full (about 8 minutes on 2 cores)
    python bench/run.py --profile quick     # one run of each, fewer sizes (about 3 minutes)
    python bench/run.py --only ingest,relay # some figures only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from wrkload import Wrk, WrkResult

from scanner_auth.devstack import LOAD_QUOTAS, ServiceProcess, Stack, merged_env
from scanner_auth_shared.crypto import generate_credential
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    SCANS_TOPIC,
    EventData,
    ScannerRegistered,
    UserUpserted,
    new_event,
)
from scanner_auth_shared.infra import Mail, free_port
from scanner_auth_shared.kafka_broker import ApacheKafka, KafkaUnavailable, run_tool

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARK = "BENCH_JSON "

ORG = "org-bench"
ADMIN = ("u-bench-admin", "admin@bench.example")
RATE = 200.0  # requests/s of the token issue and redeem figures
# Kafka's own producer writes here: as many partitions as the scans topic, on the same broker.
PRODUCER_FLOOR_TOPIC = "bench.kafka-producer-floor"
PRODUCER_PERFORMANCE = "org.apache.kafka.tools.ProducerPerformance"


@dataclass(frozen=True)
class Profile:
    name: str
    runs: int  # runs per figure; the median is reported
    seconds: int  # one measured wrk run
    warmup: int  # wrk warm-up before each measured run, excluded
    clients: tuple[int, ...]  # concurrent connections (the first size of scanners)
    main_clients: int  # the headline figures'
    scanners: tuple[int, ...]  # credentials in the gate (the first is the headline's)
    samples: int  # journeys: redeem -> gate, email -> SMTP
    rate_seconds: float  # token issue and redeem: measured seconds per run at RATE
    rate_warmup: float  # token issue and redeem: warm-up seconds at RATE, excluded
    relay_sizes: tuple[int, ...]
    gate_sizes: tuple[int, ...]
    producer_records: int = 200_000  # Kafka's ProducerPerformance, 1 KiB records, acks=all
    gate_samples: int = 200  # redeem -> gate journeys
    step_seconds: float = 2.0  # capacity: measured seconds of one open-loop step
    step_warmup: float = 0.5  # capacity: warm-up seconds of a step, excluded
    bisections: int = 2  # capacity: steps after the first failed doubling
    max_rate: float = 4096.0  # capacity: the search stops doubling here
    flat_rows: int = 1_000_000  # rows in every table on the path for the *_flat_1m figures


PROFILES = {
    "full": Profile(
        "full",
        runs=3,
        seconds=5,
        warmup=1,
        clients=(16, 64, 256),
        main_clients=64,
        scanners=(1_000, 100_000),
        samples=40,
        rate_seconds=3,
        rate_warmup=1,
        relay_sizes=(5_000, 20_000),
        gate_sizes=(100_000, 1_000_000),
        step_seconds=3.0,
        bisections=3,
    ),
    "quick": Profile(
        "quick",
        runs=1,
        seconds=3,
        warmup=1,
        clients=(64,),
        main_clients=64,
        scanners=(1_000,),
        samples=12,
        rate_seconds=3,
        rate_warmup=1,
        relay_sizes=(10_000,),
        gate_sizes=(1_000_000,),
    ),
    # The harness's own test: every code path, figures meaningless.
    "smoke": Profile(
        "smoke",
        runs=1,
        seconds=1,
        warmup=1,
        clients=(8,),
        main_clients=8,
        scanners=(50,),
        samples=2,
        rate_seconds=0.25,
        rate_warmup=0.1,
        relay_sizes=(1_000,),
        gate_sizes=(5_000,),
        producer_records=5_000,
        gate_samples=2,
        step_seconds=0.3,
        step_warmup=0.1,
        bisections=0,
        max_rate=20.0,
        flat_rows=1_000,
    ),
}
FIGURES = ("ingest", "producers", "journeys", "rates", "capacity", "flat", "relay", "gate")
EVERY_SERVICE = {"token-issuer", "redeemer", "scan-ingest", "notifier"}
NEEDS = {  # the services each figure group starts
    "ingest": {"scan-ingest"},
    "producers": {"scan-ingest"},
    "journeys": EVERY_SERVICE,
    "rates": {"token-issuer", "redeemer"},
    # With its fan-out: the consumers of TokenIssued and ScannerAuthorised run and are counted.
    "capacity": EVERY_SERVICE,
    "flat": EVERY_SERVICE,
}
CAPACITY_P99_MS = 50.0  # a rate is served when its p99 is within this


@dataclass
class Figure:
    key: str
    label: str
    value: str
    floor: str
    target: str
    ok: bool | None
    data: dict[str, Any] = field(default_factory=dict)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_json(cmd: list[str], *, stdin: str | None = None, timeout: float = 900) -> Any:
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARK)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(
            f"{cmd[1]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return json.loads(line[len(MARK) :])


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of a service's /metrics (0 when absent)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)}\s+(\S+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(every)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
    except OSError:
        commit = ""
    import uvicorn

    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu": model,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "commit": commit,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class FloorServer:
    """bench/floor_server.py as a process: scan-ingest's server with an empty handler (or
    another floor app of bench/: `script`)."""

    def __init__(
        self, env: dict[str, str], log_path: Path, script: str = "floor_server.py"
    ) -> None:
        self.script = script
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FloorServer:
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / self.script)],
            env={**os.environ, **self.env},
            stdout=open(self.log_path, "ab"),  # noqa: SIM115 (the child holds it)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the floor server exited; see {self.log_path}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, f"{self.script} ready")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Bench:
    def __init__(
        self, profile: Profile, figures: tuple[str, ...], root: Path, kafka: str = "apache"
    ) -> None:
        self.p = profile
        self.figures = figures
        self.root = root
        # Apache Kafka, one node, the full JIT: throughput matters here (the tests' C1-only JVM
        # starts faster and runs slower). `--kafka tansu`: the dev broker, for an A/B only.
        self.kafka = kafka
        self.stack = Stack(
            root,
            kafka="tansu" if kafka == "tansu" else "apache",
            kafka_fast_jit=False,
            # The email journeys send one admin dozens of codes an hour: above the quotas.
            extra_env=merged_env(LOAD_QUOTAS),  # a copy: a Stack adds to its extra_env
        )
        self.results: list[Figure] = []
        self.scaling: dict[str, list[dict[str, Any]]] = {}
        self.scanner_serial = 0
        self.mail_times: list[tuple[float, Mail]] = []
        self._floor_partitions = 0
        self._admin_jwt = ""
        self._codes: list[tuple[str, tuple[str, str]]] = []  # issued, not yet redeemed
        self._counters: dict[str, Any] = {}  # database -> asyncpg connection (`count`)
        self._counter_loop: asyncio.AbstractEventLoop | None = None
        self._step_started = time.monotonic()
        self._idle_per_s: dict[str, float] = {}
        self._capacities: dict[str, dict[str, Any]]

    # ---------------------------------------------------------------------------- life

    def run(self) -> None:
        services = set().union(*(NEEDS.get(f, set()) for f in self.figures))
        log(f"starting the infrastructure and {', '.join(sorted(services)) or 'no service'}")
        try:
            self.stack.start_infrastructure()
        except KafkaUnavailable:
            # A JIT-compiling Kafka JVM on a crowded machine can miss the start's 120 s: once
            # more, from a fresh folder.
            log("Kafka did not start in time: once more")
            self.stack.stop()
            self.root = self.root / "again"
            self.stack = Stack(
                self.root,
                kafka="tansu" if self.kafka == "tansu" else "apache",
                kafka_fast_jit=False,
            )
            self.stack.start_infrastructure()
        try:
            if services:
                self._start_services(services)
                self._watch_mail()
            for name in FIGURES:
                if name in self.figures:
                    log(f"figure group: {name}")
                    try:
                        getattr(self, name)()
                    except Exception as exc:  # the other groups' figures still count
                        log(f"figure group {name} failed: {traceback.format_exc()}")
                        self.results.append(
                            Figure(
                                f"{name}_failed",
                                f"figure group {name}",
                                f"failed: {type(exc).__name__}: {str(exc)[:200]}",
                                "",
                                "",
                                False,
                                {"traceback": traceback.format_exc()},
                            )
                        )
        finally:
            log("stopping everything")
            self._close_counters()
            self.stack.stop()

    def _start_services(self, names: set[str], timeout: float = 120) -> None:
        """Like `Stack.start_services`, only the services these figures need."""
        for name, env in self.stack.service_env().items():
            if name in names:
                svc = ServiceProcess(
                    name, int(env["HTTP_PORT"]), env, self.root / "logs" / f"{name}.log"
                )
                self.stack.services[name] = svc
                svc.start()
        deadline = time.monotonic() + timeout
        for svc in self.stack.services.values():
            while not svc.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{svc.name} not ready within {timeout}s")
                time.sleep(0.2)

    def service(self, name: str) -> str:
        return self.stack.services[name].url

    def database(self, service: str) -> str:
        return self.stack.services[service].env["DATABASE_URL"]

    def count(self, database: str, query: str) -> int:
        """One integer from a service's database on a connection kept open: polling through
        psql would fork a PostgreSQL backend per poll, CPU the system figures would count."""
        if self._counter_loop is None:
            self._counter_loop = asyncio.new_event_loop()
        loop = self._counter_loop
        conn = self._counters.get(database)
        if conn is None:
            dsn = asyncpg_dsn(self.database(database.replace("_", "-")))
            conn = self._counters[database] = loop.run_until_complete(asyncpg.connect(dsn))
        return int(loop.run_until_complete(conn.fetchval(query)) or 0)

    def _close_counters(self) -> None:
        if self._counter_loop is not None:
            for conn in self._counters.values():
                with contextlib.suppress(Exception):
                    self._counter_loop.run_until_complete(conn.close())
            self._counter_loop.close()
        self._counters, self._counter_loop = {}, None

    def sql(self, database: str, query: str) -> str:
        assert self.stack.postgres is not None
        return self.stack.postgres.psql(query, database).strip()

    # ---------------------------------------------------------------------------- ingest

    def ingest(self) -> None:
        p = self.p
        ingest = self.service("scan-ingest")
        ingest_proc = self.stack.services["scan-ingest"].proc
        assert ingest_proc is not None
        wrk = Wrk(self.root)
        credentials: list[str] = []
        bad = wrk.credentials_file("bad", [generate_credential() for _ in range(1000)])
        configs = [(p.scanners[0], c) for c in p.clients] + [
            (s, p.main_clients) for s in p.scanners[1:]
        ]
        main = (p.scanners[0], p.main_clients)
        runs: dict[tuple[str, int, int], list[Run]] = {}

        def measure(kind: str, config: tuple[int, int], url: str, pid: int, creds: Path) -> None:
            clients = config[1]
            wrk.run(url, creds, connections=clients, seconds=p.warmup)  # warm-up, excluded
            accepted = accepted_count(ingest)
            cpu = cpu_seconds(pid)
            result = wrk.run(url, creds, connections=clients, seconds=p.seconds)
            run = Run(
                result,
                cpu_us=(cpu_seconds(pid) - cpu) * 1e6 / max(1, result.requests),
                acked=accepted_count(ingest) - accepted if kind == "accepted" else 0,
            )
            runs.setdefault((kind, *config), []).append(run)

        producer_runs: list[dict[str, float]] = []
        floor_env = self.stack.services["scan-ingest"].env
        with FloorServer(floor_env, self.root / "logs" / "bench-floor.log") as floor:
            assert floor.proc is not None
            for size in p.scanners:
                self._seed_gate(credentials, size)
                sample = random.sample(credentials, min(2000, len(credentials)))
                good = wrk.credentials_file(f"good-{size}", sample)
                for n in range(p.runs):
                    for config in [c for c in configs if c[0] == size]:
                        log(f"ingest run {n + 1}/{p.runs}: {size:,} scanners, {config[1]} clients")
                        # Figure and floor back to back, alternating: the same machine state.
                        measure("floor", config, floor.url, floor.proc.pid, good)
                        measure("accepted", config, ingest, ingest_proc.pid, good)
                        if config == main:
                            measure("bad_floor", config, floor.url, floor.proc.pid, bad)
                            measure("bad", config, ingest, ingest_proc.pid, bad)
                    if size == p.scanners[0]:
                        # The broker's own limit, in the same run, right after the figure.
                        producer_runs.append(self._kafka_producer_floor())
            peak = median([r.result.ok_rate for r in runs[("accepted", *main)]])
            half = self._latency_at(wrk, ingest, good_file(wrk, p.scanners[0]), peak / 2)

        def summary(kind: str, config: tuple[int, int]) -> dict[str, Any]:
            these = runs[(kind, *config)]
            ok = kind in ("floor", "accepted", "bad_floor")
            return {
                "per_s": median([r.result.ok_rate if ok else r.result.rate for r in these]),
                "cpu_us_per_request": median([r.cpu_us for r in these]),
                "p99_ms": median([r.result.p99_ms for r in these]),
                "runs": [
                    {
                        "per_s": r.result.ok_rate if ok else r.result.rate,
                        "requests": r.result.requests,
                        "non_2xx": r.result.non_2xx,
                        "errors": r.result.errors,
                        "p50_ms": r.result.p50_ms,
                        "p99_ms": r.result.p99_ms,
                        "cpu_us_per_request": r.cpu_us,
                        "kafka_acked_202": r.acked,
                    }
                    for r in these
                ],
            }

        for kind, floor_kind, key, label, bound in (
            (
                "accepted",
                "floor",
                "ingest_accepted",
                f"scan-ingest: authorised 1 KiB uploads, Kafka-acked ({main[0]:,} scanners, "
                f"{main[1]} clients)",
                0.6,
            ),
            (
                "bad",
                "bad_floor",
                "ingest_bad_credential",
                f"scan-ingest: uploads with a bad credential, 401 ({main[1]} clients)",
                0.9,
            ),
        ):
            fig, floor_ = summary(kind, main), summary(floor_kind, main)
            ratio = fig["per_s"] / floor_["per_s"]
            producer_floor = median([r["records_per_s"] for r in producer_runs])
            cpu_ratio = floor_["cpu_us_per_request"] / fig["cpu_us_per_request"]
            these = runs[(kind, *main)]
            if kind == "accepted":
                # Every 2xx wrk counted is a 202 the service sent after Kafka's acknowledgement:
                # the service's count covers wrk's, plus at most the requests in flight when
                # the warm-up and the measured run stopped (wrk does not count those).
                clean = all(
                    r.result.non_2xx == 0
                    and r.result.errors == 0
                    and r.result.requests <= r.acked <= r.result.requests + 2 * main[1]
                    for r in these
                )
            else:
                clean = all(r.result.non_2xx == r.result.requests for r in these)
            self.results.append(
                Figure(
                    key,
                    label,
                    f"{fig['per_s']:,.0f} req/s, {fig['cpu_us_per_request']:.0f} µs CPU/req",
                    f"{floor_['per_s']:,.0f} req/s, {floor_['cpu_us_per_request']:.0f} µs "
                    f"CPU/req; ratio {ratio:.2f} (CPU {cpu_ratio:.2f})"
                    + (
                        f"; Kafka's producer {producer_floor:,.0f} records/s, ratio "
                        f"{fig['per_s'] / producer_floor:.2f}"
                        if kind == "accepted"
                        else ""
                    ),
                    f"ratio ≥ {bound}",
                    ratio >= bound and clean,
                    {
                        "figure": fig,
                        "floor": floor_,
                        "ratio": ratio,
                        "cpu_ratio": cpu_ratio,
                        "every_answer_as_expected": clean,
                        **(
                            {
                                "kafka_producer_floor_per_s": producer_floor,
                                "kafka_producer_ratio": fig["per_s"] / producer_floor,
                            }
                            if kind == "accepted"
                            else {}
                        ),
                    },
                )
            )
        accepted_per_s = summary("accepted", main)["per_s"]
        producer = {
            k: median([r[k] for r in producer_runs])
            for k in ("records_per_s", "mb_per_s", "avg_ms", "p50_ms", "p99_ms")
        }
        self.results.append(
            Figure(
                "kafka_producer_floor",
                f"Kafka's own producer, the broker's limit (ProducerPerformance: "
                f"{p.producer_records:,} records of 1 KiB, acks=all, idempotent, "
                f"{self._floor_partitions} partitions)",
                f"{producer['records_per_s']:,.0f} records/s ({producer['mb_per_s']:.1f} MB/s), "
                f"p50 {producer['p50_ms']:.0f} ms, p99 {producer['p99_ms']:.0f} ms",
                f"scan-ingest accepted {accepted_per_s:,.0f} req/s: "
                f"ratio {accepted_per_s / producer['records_per_s']:.2f} of it",
                "—",
                None,
                {
                    **producer,
                    "records": p.producer_records,
                    "record_bytes": 1024,
                    "scan_ingest_accepted_per_s": accepted_per_s,
                    "ratio": accepted_per_s / producer["records_per_s"],
                    "runs": producer_runs,
                },
            )
        )
        self.results.append(half)
        self.scaling["ingest"] = []
        for config in configs:
            fig, floor_ = summary("accepted", config), summary("floor", config)
            self.scaling["ingest"].append(
                {
                    "scanners": config[0],
                    "clients": config[1],
                    "accepted_per_s": fig["per_s"],
                    "floor_per_s": floor_["per_s"],
                    "ratio": fig["per_s"] / floor_["per_s"],
                    "cpu_us_per_request": fig["cpu_us_per_request"],
                    "floor_cpu_us_per_request": floor_["cpu_us_per_request"],
                    "cpu_ratio": floor_["cpu_us_per_request"] / fig["cpu_us_per_request"],
                    "p99_ms": fig["p99_ms"],
                    "floor_p99_ms": floor_["p99_ms"],
                }
            )

    def producers(self) -> None:
        """Which Kafka client for scan-ingest's uploads (bench/producer_floor.py): 1 KiB records,
        acks=all, the 202 after the acknowledgement; aiokafka's send(), aiokafka through
        scan-ingest's record batches, librdkafka. Each against the empty-handler floor, with wrk,
        alternating, in the same run."""
        p = self.p
        assert self.stack.broker is not None
        topic = "bench.producer-floor"
        asyncio.run(_create_like(self.stack.broker.bootstrap, topic))
        wrk = Wrk(self.root)
        creds = wrk.credentials_file("producers", [generate_credential() for _ in range(2000)])
        env = self.stack.services["scan-ingest"].env
        kinds = ("aiokafka", "aiokafka-batches", "confluent")
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("floor", *kinds)}
        servers: dict[str, FloorServer] = {}
        with contextlib.ExitStack() as stack:
            servers["floor"] = FloorServer(env, self.root / "logs" / "bench-floor-producers.log")
            for kind in kinds:
                servers[kind] = FloorServer(
                    {**env, "PRODUCER": kind, "PRODUCER_TOPIC": topic},
                    self.root / "logs" / f"bench-producer-{kind}.log",
                    script="producer_floor.py",
                )
            for server in servers.values():  # started together: each takes a while to import
                stack.callback(server.__exit__)
                server.launch()
            for server in servers.values():
                server.wait_ready()
            for n in range(p.runs):
                for kind, server in servers.items():
                    assert server.proc is not None
                    log(f"producers run {n + 1}/{p.runs}: {kind}")
                    wrk.run(server.url, creds, connections=p.main_clients, seconds=p.warmup)
                    roots = {kind: server.proc.pid, **self._broker_roots()}
                    before = tree_cpu_seconds(roots)
                    result = wrk.run(
                        server.url, creds, connections=p.main_clients, seconds=p.seconds
                    )
                    after = tree_cpu_seconds(roots)
                    spent = {k: after[k] - before[k] for k in after}
                    requests = max(1, result.requests)
                    runs[kind].append(
                        {
                            "per_s": result.ok_rate,
                            "non_2xx": result.non_2xx + result.errors,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "cpu_us_per_request": spent[kind] * 1e6 / requests,
                            "broker_cpu_us_per_request": sum(
                                v for k, v in spent.items() if k != kind
                            )
                            * 1e6
                            / requests,
                        }
                    )
        summary = {
            kind: {
                key: median([r[key] for r in these])
                for key in (
                    "per_s",
                    "p50_ms",
                    "p99_ms",
                    "cpu_us_per_request",
                    "broker_cpu_us_per_request",
                )
            }
            | {"runs": these}
            for kind, these in runs.items()
        }
        floor = summary["floor"]["per_s"]
        for kind in kinds:
            s = summary[kind]
            s["ratio"] = s["per_s"] / floor if floor else float("nan")
        best = max(kinds, key=lambda k: summary[k]["per_s"])
        other = summary["aiokafka-batches"]["per_s"]
        self.results.append(
            Figure(
                "ingest_producers",
                f"Kafka producer for the uploads (1 KiB, acks=all, 202 after the ack, "
                f"{p.main_clients} clients): aiokafka send() / aiokafka record batches "
                "(scan-ingest's) / confluent-kafka",
                " / ".join(
                    f"{summary[k]['per_s']:,.0f} req/s ({summary[k]['cpu_us_per_request']:.0f} µs)"
                    for k in kinds
                ),
                f"empty handler {floor:,.0f} req/s; ratios "
                + " / ".join(f"{summary[k]['ratio']:.2f}" for k in kinds)
                + f"; best {best}, {summary[best]['per_s'] / other:.2f} x scan-ingest's batches",
                "—",
                None,
                {"producers": summary, "best": best, "topic": topic},
            )
        )

    def _broker_roots(self) -> dict[str, int]:
        return {k: v for k, v in self._roots().items() if k.startswith(("kafka", "tansu"))}

    def _kafka_producer_floor(self) -> dict[str, float]:
        """`kafka-producer-perf-test` (ProducerPerformance, from the broker's own jars) against
        the stack's broker: 1 KiB records, acks=all, as fast as it can, to a topic with the
        scans topic's partition count. The Java producer is idempotent by default."""
        assert self.stack.broker is not None
        bootstrap = self.stack.broker.bootstrap
        if not self._floor_partitions:
            self._floor_partitions = asyncio.run(_create_like(bootstrap, PRODUCER_FLOOR_TOPIC))
        n = self.p.producer_records
        log(f"Kafka's ProducerPerformance: {n:,} records of 1 KiB, acks=all")
        out = run_tool(
            PRODUCER_PERFORMANCE,
            "--topic",
            PRODUCER_FLOOR_TOPIC,
            "--num-records",
            str(n),
            "--record-size",
            "1024",
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={bootstrap}",
            "acks=all",
            *(["enable.idempotence=false"] if self.kafka == "tansu" else []),
            timeout=600,
        )
        found = PRODUCER_SUMMARY.findall(out)
        if not found:
            raise RuntimeError(f"ProducerPerformance printed no summary:\n{out[-2000:]}")
        sent, per_s, mb, avg, _max, p50, _p95, p99, _p999 = found[-1]
        if int(sent) != n:
            raise RuntimeError(f"ProducerPerformance sent {sent} of {n} records")
        return {
            "records_per_s": float(per_s),
            "mb_per_s": float(mb),
            "avg_ms": float(avg),
            "p50_ms": float(p50),
            "p99_ms": float(p99),
        }

    def _latency_at(self, wrk: Wrk, url: str, creds: Path, rate: float) -> Figure:
        # Each connection waits `delay` ms between requests: connections * 1000 / delay req/s.
        delay = 50
        connections = base = max(1, round(rate * delay / 1000))
        runs = []
        for run in range(self.p.runs):
            log(f"ingest latency run {run + 1}/{self.p.runs} at ~{rate:,.0f} req/s")
            warm = wrk.run(
                url, creds, connections=connections, seconds=self.p.warmup, delay_ms=delay
            )
            # A connection waits its delay plus its answer: more connections if the warm-up
            # fell short of the rate.
            if warm.rate > 0:
                connections = min(4 * base, max(1, round(connections * rate / warm.rate)))
            runs.append(
                wrk.run(url, creds, connections=connections, seconds=self.p.seconds, delay_ms=delay)
            )
        p50 = median([r.p50_ms for r in runs])
        p99 = median([r.p99_ms for r in runs])
        achieved = median([r.rate for r in runs])
        return Figure(
            "ingest_latency_half_peak",
            f"scan-ingest latency at half of peak ({achieved:,.0f} req/s, {connections} clients)",
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            "",
            "p99 ≤ 10 ms",
            p99 <= 10,
            {
                "target_rate": rate,
                "achieved_per_s": [r.rate for r in runs],
                "p50_ms": [r.p50_ms for r in runs],
                "p99_ms": [r.p99_ms for r in runs],
                "max_ms": [r.max_ms for r in runs],
                "not_accepted": sum(r.non_2xx + r.errors for r in runs),
            },
        )

    def _seed_gate(self, credentials: list[str], size: int) -> None:
        """Authorise `size` scanners in scan-ingest's gate table, as its writer would have, and
        have every replica reload it (NOTIFY '*')."""
        have = len(credentials)
        if have >= size:
            return
        log(f"authorising {size - have:,} more scanners in the gate")
        new = [generate_credential() for _ in range(size - have)]
        now = datetime.now(UTC)
        rows = [
            (
                hashlib.sha256(c.encode()).digest(),
                str(uuid.uuid4()),
                f"bench-{uuid.uuid4()}",
                f"org-{i % 200}",
                now,
                "active",
            )
            for i, c in enumerate(new, start=have)
        ]

        async def insert() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(self.database("scan-ingest")))
            try:
                await conn.copy_records_to_table(
                    "gate_credentials",
                    records=rows,
                    columns=[
                        "credential_digest",
                        "credential_id",
                        "scanner_id",
                        "org_id",
                        "issued_at",
                        "state",
                    ],
                )
                await conn.execute("NOTIFY scan_ingest_gate, '*'")
            finally:
                await conn.close()

        asyncio.run(insert())
        credentials.extend(new)
        ingest = self.service("scan-ingest")
        wait_until(
            lambda: metric(ingest, "scan_ingest_gate_credentials") >= size,
            120,
            "the gate loaded the bench scanners",
        )

    # ---------------------------------------------------------------------------- directory

    def _register(self, count: int, prefix: str) -> list[tuple[str, str]]:
        """Register `count` new scanners of the bench organisation in the directory and wait
        until the token-issuer and the redeemer know them. Returns (scanner_id, serial)."""
        scanners = []
        for _ in range(count):
            self.scanner_serial += 1
            scanners.append(
                (f"bench-{prefix}-{self.scanner_serial:06d}", f"BEN-{self.scanner_serial:07d}")
            )
        events: list[EventData] = [
            UserUpserted(user_id=ADMIN[0], org_id=ORG, email=ADMIN[1], display_name="Bench Admin")
        ]
        events += [
            ScannerRegistered(
                scanner_id=sid, org_id=ORG, serial_number=serial, name=f"Bench {sid}", model="LVS"
            )
            for sid, serial in scanners
        ]
        asyncio.run(self._publish(events))
        total = self.scanner_serial

        def known(database: str) -> bool:
            query = "SELECT count(*) FROM scanners WHERE scanner_id LIKE 'bench-%'"
            return self.count(database, query) >= total

        wait_until(lambda: known("token_issuer"), 120, "the token-issuer knows the scanners")
        wait_until(lambda: known("redeemer"), 120, "the redeemer knows the scanners")
        return scanners

    async def _publish(self, events: list[EventData]) -> None:
        """Directory events as MyScanner's directory publishes them: signed with its (test)
        key, which the services check (`testing.signing`, as `scanner-auth dev` configures)."""
        from aiokafka import AIOKafkaProducer

        from scanner_auth_shared.testing.signing import signer

        assert self.stack.broker is not None
        producer = AIOKafkaProducer(
            bootstrap_servers=self.stack.broker.bootstrap, acks="all", enable_idempotence=False
        )
        directory = signer("directory")
        await producer.start()
        try:
            futures = []
            for data in events:
                event = new_event(data, source="myscanner/directory")
                key = (event.subject or "").encode()
                value = event.to_bytes()
                futures.append(
                    await producer.send(
                        DIRECTORY_TOPIC,
                        value,
                        key=key,
                        headers=[directory.header(DIRECTORY_TOPIC, key, value)],
                    )
                )
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    def admin_jwt(self) -> str:
        if not self._admin_jwt:
            self._admin_jwt = self.stack.identity.mint(
                ADMIN[0], ORG, ["admin"], ADMIN[1], lifetime=timedelta(hours=3)
            )
        return self._admin_jwt

    def _issue(self, client: httpx.Client, scanner_id: str) -> str:
        r = client.post(f"/v1/scanners/{scanner_id}/authorisation-token")
        if r.status_code != 201:
            raise RuntimeError(f"issue {scanner_id}: {r.status_code} {r.text[:200]}")
        return str(r.json()["code"])

    def _wait_tokens(self, scanners: list[tuple[str, str]], *, notifier: bool = False) -> None:
        """Until the redeemer (and the notifier) know the active tokens of these scanners."""
        ids = ",".join(f"'{sid}'" for sid, _ in scanners)
        watched = [("redeemer", "tokens")] + ([("notifier", "token_states")] if notifier else [])
        for database, table in watched:
            query = f"SELECT count(DISTINCT scanner_id) FROM {table} WHERE scanner_id IN ({ids})"
            wait_until(
                lambda q=query, d=database: self.count(d, q) >= len(scanners),
                120,
                f"the {database} knows the tokens",
                every=0.1,
            )

    # ---------------------------------------------------------------------------- journeys

    def _watch_mail(self) -> None:
        sink = self.stack.mail
        assert sink is not None
        keep = sink._keep

        def timed_keep(mail: Mail) -> None:
            # Called in the SMTP server's thread just before it answers 250 to DATA.
            self.mail_times.append((time.perf_counter(), mail))
            keep(mail)

        sink._keep = timed_keep  # type: ignore[method-assign]

    def journeys(self) -> None:
        self._to_gate("redeem_to_gate", "")
        self._to_smtp()

    def _to_gate(self, key: str, context: str) -> None:
        """Redeem 201 → the gate accepts that scanner, `gate_samples` journeys one at a time."""
        n = self.p.gate_samples
        gate_scanners = self._register(n, "j")
        issuer = httpx.Client(
            base_url=self.service("token-issuer"),
            timeout=30,
            headers={"Authorization": f"Bearer {self.admin_jwt()}"},
        )
        redeemer = httpx.Client(base_url=self.service("redeemer"), timeout=30)
        ingest = httpx.Client(base_url=self.service("scan-ingest"), timeout=30)
        try:
            codes = {sid: self._issue(issuer, sid) for sid, _ in gate_scanners}
            self._wait_tokens(gate_scanners, notifier=True)
            log(f"redeem 201 -> the gate accepts: {n} samples{context}")
            to_gate = []
            answered_at = []  # wall clock of each 201, to split the journey (below)
            for i, (sid, serial) in enumerate(gate_scanners):
                r = redeemer.post(
                    "/v1/authorisations",
                    json={"code": codes[sid], "serial_number": serial},
                    headers={"X-Forwarded-For": f"198.18.1.{i % 250 + 1}"},
                )
                if r.status_code != 201:
                    raise RuntimeError(f"redeem: {r.status_code} {r.text[:200]}")
                answered = time.perf_counter()
                answered_at.append(time.time())
                bearer = {"Authorization": f"Bearer {r.json()['credential']}"}
                while True:
                    status = ingest.post("/v1/scans", json={"n": i}, headers=bearer).status_code
                    if status == 202:
                        to_gate.append((time.perf_counter() - answered) * 1000)
                        break
                    if status != 401 or time.perf_counter() - answered > 10:
                        raise RuntimeError(f"upload after redeem: {status}")
                    time.sleep(0.002)
                time.sleep(0.05)  # one journey at a time: latency, not throughput
        finally:
            issuer.close()
            redeemer.close()
            ingest.close()

        # Where a redeem journey's time goes: 201 → the gate writer's transaction starts in
        # scan-ingest (processed_events.processed_at: now() of that transaction; the redeemer's
        # relay and the Kafka hop), and from there to the gate's first 202.
        started = self.sql(
            "scan_ingest",
            "SELECT string_agg(extract(epoch FROM processed_at)::text, ',' ORDER BY processed_at) "
            "FROM (SELECT processed_at FROM processed_events WHERE consumer = 'scan-ingest.gate' "
            f"AND processed_at <= now() ORDER BY processed_at DESC LIMIT {n}) AS last",
        )
        split: dict[str, list[float]] = {}
        writer_starts = [float(x) for x in started.split(",")][-n:] if started else []
        if len(writer_starts) == n:
            split["to_gate_writer_ms"] = [
                (w - a) * 1000 for w, a in zip(writer_starts, answered_at, strict=True)
            ]
            split["gate_writer_to_202_ms"] = [
                g - h for g, h in zip(to_gate, split["to_gate_writer_ms"], strict=True)
            ]
            log(
                "redeem -> gate, split (p50/p99 ms): "
                + ", ".join(
                    f"{k} {percentile(v, 50):.0f}/{percentile(v, 99):.0f}" for k, v in split.items()
                )
            )
        p99 = percentile(to_gate, 99)
        self.results.append(
            Figure(
                key,
                f"redeem 201 → the gate accepts that scanner ({len(to_gate)} journeys, one at a "
                f"time{context})",
                f"p50 {percentile(to_gate, 50):.0f} ms, p99 {p99:.0f} ms"
                + (
                    f" (to the gate writer p50 {percentile(split['to_gate_writer_ms'], 50):.0f}"
                    f" / p99 {percentile(split['to_gate_writer_ms'], 99):.0f} ms, then to the 202"
                    f" {percentile(split['gate_writer_to_202_ms'], 50):.0f}"
                    f" / {percentile(split['gate_writer_to_202_ms'], 99):.0f} ms)"
                    if split
                    else ""
                ),
                "",
                "p99 ≤ 100 ms",
                p99 <= 100 and len(to_gate) >= min(200, n),
                {"ms": to_gate, **split},
            )
        )

    def _to_smtp(self) -> None:
        n = self.p.samples
        mail_scanners = self._register(3, "m")
        issuer = httpx.Client(
            base_url=self.service("token-issuer"),
            timeout=30,
            headers={"Authorization": f"Bearer {self.admin_jwt()}"},
        )
        try:
            for sid, _ in mail_scanners:
                self._issue(issuer, sid)
            self._wait_tokens(mail_scanners, notifier=True)
            log(f"email requested (202) -> SMTP 250: {n} samples")
            to_smtp = []
            for i in range(n):
                sid = mail_scanners[i % len(mail_scanners)][0]
                seen = len(self.mail_times)
                r = issuer.post(f"/v1/scanners/{sid}/authorisation-token/email", json={})
                if r.status_code != 202:
                    raise RuntimeError(f"email: {r.status_code} {r.text[:200]}")
                answered = time.perf_counter()
                wait_until(lambda s=seen: len(self.mail_times) > s, 30, "the email", every=0.001)
                to_smtp.append((self.mail_times[seen][0] - answered) * 1000)
                time.sleep(0.05)
        finally:
            issuer.close()
        p99 = percentile(to_smtp, 99)
        self.results.append(
            Figure(
                "email_to_smtp",
                f"email requested (202) → SMTP 250 ({len(to_smtp)} journeys, one at a time)",
                f"p50 {percentile(to_smtp, 50):.0f} ms, p99 {p99:.0f} ms",
                "",
                "p99 ≤ 250 ms",
                p99 <= 250,
                {"ms": to_smtp},
            )
        )

    # ---------------------------------------------------------------------------- rates

    def rates(self) -> None:
        p = self.p
        warm = int(RATE * p.rate_warmup)
        measured = max(10, int(RATE * p.rate_seconds))
        issuer, redeemer = self.service("token-issuer"), self.service("redeemer")
        jwt = self.admin_jwt()
        issue_runs: list[dict[str, Any]] = []
        redeem_runs: list[dict[str, Any]] = []
        for run in range(p.runs):
            scanners = self._register(warm + measured, "r")
            log(f"token issue at {RATE:.0f}/s, run {run + 1}/{p.runs}")
            job = {
                "rate": RATE,
                "patience": 10,
                "warmup": warm,
                "requests": [
                    {
                        "method": "POST",
                        "url": f"{issuer}/v1/scanners/{sid}/authorisation-token",
                        "headers": {"Authorization": f"Bearer {jwt}"},
                    }
                    for sid, _ in scanners
                ],
            }
            issued = run_json([sys.executable, str(HERE / "rate_client.py")], stdin=json.dumps(job))
            # Codes of every issued token, warm-up included (rate_client reports measured only).
            issue_runs.append(issued)
            # Redeem the codes of the measured issues that succeeded (a failure is counted in
            # the issue figure's statuses, and fails it).
            issued_codes = [
                (json.loads(r["body"])["code"], scanner)
                for r, scanner in zip(issued["results"], scanners[warm:], strict=True)
                if r["status"] == 201
            ]
            codes = [code for code, _ in issued_codes]
            measured_scanners = [scanner for _, scanner in issued_codes]
            if not codes:
                raise RuntimeError(f"issue: {Counter(r['status'] for r in issued['results'])}")
            self._wait_tokens(measured_scanners)
            log(f"redeem at {RATE:.0f}/s, run {run + 1}/{p.runs}")
            rwarm = min(warm, len(codes) // 5)
            job = {
                "rate": RATE,
                "patience": 10,
                "warmup": rwarm,
                "requests": [
                    {
                        "method": "POST",
                        "url": f"{redeemer}/v1/authorisations",
                        "json": {"code": code, "serial_number": serial},
                        "headers": {"X-Forwarded-For": f"198.18.{i // 250 % 250}.{i % 250 + 1}"},
                    }
                    for i, (code, (_, serial)) in enumerate(
                        zip(codes, measured_scanners, strict=True)
                    )
                ],
            }
            redeem_runs.append(
                run_json([sys.executable, str(HERE / "rate_client.py")], stdin=json.dumps(job))
            )

        for key, label, runs, want in (
            ("token_issue_at_200", "token issue (POST …/authorisation-token)", issue_runs, 201),
            ("redeem_at_200", "redeem (POST /v1/authorisations)", redeem_runs, 201),
        ):
            p50s = [percentile([r["ms"] for r in run["results"]], 50) for run in runs]
            p99s = [percentile([r["ms"] for r in run["results"]], 99) for run in runs]
            statuses = Counter(r["status"] for run in runs for r in run["results"])
            p99 = median(p99s)
            self.results.append(
                Figure(
                    key,
                    f"{label} at {RATE:.0f} req/s, open loop "
                    f"({median([r['achieved_rate'] for r in runs]):.0f} sent/s)",
                    f"p50 {median(p50s):.1f} ms, p99 {p99:.1f} ms; "
                    f"{median([r['served_rate'] for r in runs]):.0f}/s served",
                    "",
                    "p99 ≤ 30 ms",
                    p99 <= 30 and set(statuses) == {want},
                    {
                        "p50_ms": p50s,
                        "p99_ms": p99s,
                        "statuses": dict(statuses),
                        "achieved_per_s": [r["achieved_rate"] for r in runs],
                        "served_per_s": [r["served_rate"] for r in runs],
                    },
                )
            )

    # ---------------------------------------------------------------------------- capacity

    def capacity(self) -> None:
        """`issue_capacity`, `redeem_capacity`: the highest open-loop rate served with p99 ≤
        50 ms, each next to `capacity_floor` (bench/capacity_floor.py, the same search), and the
        whole system's CPU per request at that rate (every service, PostgreSQL, the broker)."""
        # What the system burns doing nothing (pollers, the JVM, the relays' waits): the steps'
        # CPU also reports net of it (`cpu_ms_per_request_net`), the window being long at low rates.
        before, t0 = self._system_cpu(), time.monotonic()
        time.sleep(3)
        spent = self._system_cpu(since=before)
        self._idle_per_s = {k: v / (time.monotonic() - t0) for k, v in spent.items()}
        log(f"idle system CPU: {sum(self._idle_per_s.values()) * 1000:.0f} ms/s")
        floor_env = self.stack.services["redeemer"].env
        with FloorServer(
            floor_env, self.root / "logs" / "bench-capacity-floor.log", script="capacity_floor.py"
        ) as floor:
            assert floor.proc is not None
            floor_cap = self._search("capacity floor", lambda r: self._floor_step(floor, r))
        issue_cap = self._search("token issue", self._issue_step)
        redeem_cap = self._search("redeem", self._redeem_step)
        self._capacities = {"floor": floor_cap, "issue": issue_cap, "redeem": redeem_cap}
        self.results.append(self._capacity_figure("capacity_floor", "capacity floor", floor_cap))
        for key, label, found in (
            ("issue_capacity", "token issue", issue_cap),
            ("redeem_capacity", "redeem", redeem_cap),
        ):
            self.results.append(self._capacity_figure(key, label, found, floor_cap))

    def _capacity_figure(
        self, key: str, label: str, found: dict[str, Any], floor: dict[str, Any] | None = None
    ) -> Figure:
        rate = found["capacity_per_s"]
        best = found.get("at_capacity") or {}
        cpu = best.get("cpu_ms_per_request", {})
        total = sum(cpu.values()) if cpu else float("nan")
        net = sum(best.get("cpu_ms_per_request_net", {}).values()) if cpu else float("nan")
        split = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        value = (
            f"{rate:,.0f}/s (p99 {best.get('p99_ms', float('nan')):.0f} ms); system CPU "
            f"{total:.2f} ms/req, {net:.2f} net of idle ({split})"
        )
        if floor is None:
            return Figure(
                key,
                f"{label}: highest open-loop rate with p99 ≤ {CAPACITY_P99_MS:.0f} ms "
                "(bench/capacity_floor.py: one INSERT a request)",
                value,
                "—",
                "—",
                None,
                {**found, "system_cpu_ms_per_request": total, "system_cpu_net_ms": net},
            )
        ratio = rate / floor["capacity_per_s"] if floor["capacity_per_s"] else float("nan")
        cpu_target = 3.0 if key == "redeem_capacity" else None
        ok = ratio >= 0.5 and (rate >= 1000 or floor["capacity_per_s"] < 2000)
        if cpu_target is not None:
            ok = ok and net <= cpu_target
        return Figure(
            key,
            f"{label}: highest open-loop rate with p99 ≤ {CAPACITY_P99_MS:.0f} ms, with its "
            "fan-out",
            value,
            f"{floor['capacity_per_s']:,.0f}/s; ratio {ratio:.2f}",
            "ratio ≥ 0.5, ≥ 1,000/s where the floor allows"
            + ("; ≤ 3 ms system CPU/req" if cpu_target else ""),
            ok,
            {
                **found,
                "floor_per_s": floor["capacity_per_s"],
                "ratio": ratio,
                "system_cpu_ms_per_request": total,
                "system_cpu_net_ms": net,
                "idle_system_cpu_ms_per_s": {k: v * 1000 for k, v in self._idle_per_s.items()},
            },
        )

    def _search(self, what: str, step: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
        """Double the rate until a step fails, then bisect between the last pass and it."""
        p = self.p
        steps: list[dict[str, Any]] = []

        def run(rate: float) -> bool:
            rate = round(rate)
            result = step(rate)
            result["rate"] = rate
            steps.append(result)
            log(
                f"{what} at {rate}/s: p99 {result['p99_ms']:.1f} ms, statuses "
                f"{result['statuses']}, system CPU {sum(result['cpu_ms_per_request'].values()):.2f}"
                f" ms/req -> {'served' if result['served'] else 'not served'}"
            )
            return bool(result["served"])

        lo, hi = 0.0, 0.0
        rate = min(50.0, p.max_rate / 2)
        while rate <= p.max_rate:
            if run(rate):
                lo, rate = rate, rate * 2
            else:
                hi = rate
                break
        if lo == 0:  # not even the first rate: downwards
            rate = hi / 2
            while rate >= 5 and not lo:
                if run(rate):
                    lo = rate
                else:
                    hi, rate = rate, rate / 2
        for _ in range(p.bisections if lo and hi else 0):
            if hi / lo < 1.1:
                break
            mid = (lo + hi) / 2
            if run(mid):
                lo = mid
            else:
                hi = mid
        served = [s for s in steps if s["served"]]
        best = max(served, key=lambda s: s["rate"]) if served else None
        return {
            "capacity_per_s": best["rate"] if best else 0.0,
            "first_refused_per_s": hi or None,
            "at_capacity": best,
            "steps": steps,
        }

    def _open_loop(self, rate: float, requests: list[dict[str, Any]], warm: int) -> dict[str, Any]:
        job = {"rate": rate, "patience": 5, "warmup": 0, "requests": requests}
        out = run_json([sys.executable, str(HERE / "rate_client.py")], stdin=json.dumps(job))
        results = out["results"]
        measured = results[warm:]
        out["measured"] = measured
        out["p50_ms"] = percentile([r["ms"] for r in measured], 50)
        out["p99_ms"] = percentile([r["ms"] for r in measured], 99)
        out["statuses"] = dict(Counter(r["status"] for r in measured))
        return out

    def _step_size(self, rate: float) -> tuple[int, int]:
        warm = max(1, int(rate * self.p.step_warmup))
        return warm, warm + max(10, int(rate * self.p.step_seconds))

    def _step_result(
        self, out: dict[str, Any], want: int, cpu: dict[str, float], requests: int
    ) -> dict[str, Any]:
        window = time.monotonic() - self._step_started
        idle = self._idle_per_s
        return {
            "window_s": window,
            "cpu_ms_per_request_net": {
                k: max(0.0, v - idle.get(k, 0.0) * window) * 1000 / max(1, requests)
                for k, v in cpu.items()
            },
            "p50_ms": out["p50_ms"],
            "p99_ms": out["p99_ms"],
            "statuses": out["statuses"],
            "achieved_per_s": out["achieved_rate"],
            "served_per_s": out["served_rate"],
            "served": out["p99_ms"] <= CAPACITY_P99_MS and set(out["statuses"]) == {want},
            "cpu_ms_per_request": {k: v * 1000 / max(1, requests) for k, v in cpu.items()},
        }

    def _floor_step(self, floor: FloorServer, rate: float) -> dict[str, Any]:
        assert floor.proc is not None
        warm, total = self._step_size(rate)
        requests = [
            {"method": "POST", "url": f"{floor.url}/v1/floor", "json": {"n": i}}
            for i in range(total)
        ]
        before = self._system_cpu({"capacity-floor": floor.proc.pid})
        out = self._open_loop(rate, requests, warm)
        cpu = self._system_cpu({"capacity-floor": floor.proc.pid}, since=before)
        return self._step_result(out, 201, cpu, total)

    def _issue_step(self, rate: float) -> dict[str, Any]:
        """Every request for another scanner (no two on one scanner's row lock); the codes are
        kept for the redeem search. CPU counted until the redeemer and the notifier know the
        tokens (TokenIssued's fan-out)."""
        warm, total = self._step_size(rate)
        scanners = self._register(total, "c")
        issuer, jwt = self.service("token-issuer"), self.admin_jwt()
        requests = [
            {
                "method": "POST",
                "url": f"{issuer}/v1/scanners/{sid}/authorisation-token",
                "headers": {"Authorization": f"Bearer {jwt}"},
            }
            for sid, _ in scanners
        ]
        before = self._system_cpu()
        out = self._open_loop(rate, requests, warm)
        issued = [
            (json.loads(r["body"])["code"], scanner)
            for r, scanner in zip(out["results"], scanners, strict=True)
            if r["status"] == 201
        ]
        if issued:
            self._wait_tokens([s for _, s in issued], notifier=True)
        cpu = self._system_cpu(since=before)
        self._codes.extend(issued)
        return self._step_result(out, 201, cpu, total)

    def _redeem_step(self, rate: float) -> dict[str, Any]:
        """Every request another code from another address. CPU counted until the token-issuer,
        scan-ingest's gate writer and the notifier applied every ScannerAuthorised."""
        warm, total = self._step_size(rate)
        if len(self._codes) < total:
            self._top_up_codes(total - len(self._codes))
        codes, self._codes = self._codes[:total], self._codes[total:]
        redeemer = self.service("redeemer")
        requests = [
            {
                "method": "POST",
                "url": f"{redeemer}/v1/authorisations",
                "json": {"code": code, "serial_number": serial},
                "headers": {"X-Forwarded-For": f"198.19.{i // 250 % 250}.{i % 250 + 1}"},
            }
            for i, (code, (_, serial)) in enumerate(codes)
        ]
        counts = self._processed_counts()
        before = self._system_cpu()
        out = self._open_loop(rate, requests, warm)
        ok = sum(1 for r in out["results"] if r["status"] == 201)
        self._wait_fan_out(counts, ok)
        cpu = self._system_cpu(since=before)
        return self._step_result(out, 201, cpu, total)

    def _top_up_codes(self, count: int) -> None:
        """More issued codes for the redeem search, at a rate the token-issuer serves."""
        rate = max(
            20.0,
            0.8 * getattr(self, "_capacities", {}).get("issue", {}).get("capacity_per_s", 50.0),
        )
        log(f"issuing {count} more codes for the redeem search at {rate:.0f}/s")
        scanners = self._register(count, "c")
        issuer, jwt = self.service("token-issuer"), self.admin_jwt()
        job = {
            "rate": rate,
            "patience": 60,
            "warmup": 0,
            "requests": [
                {
                    "method": "POST",
                    "url": f"{issuer}/v1/scanners/{sid}/authorisation-token",
                    "headers": {"Authorization": f"Bearer {jwt}"},
                }
                for sid, _ in scanners
            ],
        }
        out = run_json([sys.executable, str(HERE / "rate_client.py")], stdin=json.dumps(job))
        issued = [
            (json.loads(r["body"])["code"], scanner)
            for r, scanner in zip(out["results"], scanners, strict=True)
            if r["status"] == 201
        ]
        self._wait_tokens([s for _, s in issued], notifier=True)
        self._codes.extend(issued)

    FAN_OUT = (  # (database, consumer) that applies each ScannerAuthorised
        ("scan_ingest", "scan-ingest.gate"),
        ("token_issuer", None),
        ("notifier", None),
    )

    def _processed_counts(self) -> dict[str, int]:
        counts = {}
        for database, consumer in self.FAN_OUT:
            where = f" WHERE consumer = '{consumer}'" if consumer else ""
            counts[database] = self.count(database, f"SELECT count(*) FROM processed_events{where}")
        return counts

    def _wait_fan_out(self, before: dict[str, int], events: int) -> None:
        def done() -> bool:
            now = self._processed_counts()
            return all(now[d] - before[d] >= events for d in before)

        wait_until(done, 180, f"the fan-out of {events} ScannerAuthorised", every=0.1)

    def _roots(self) -> dict[str, int]:
        """The process tree roots of the system: every service, PostgreSQL, the broker."""
        roots = {
            name: svc.proc.pid
            for name, svc in self.stack.services.items()
            if svc.proc is not None and svc.proc.poll() is None
        }
        assert self.stack.postgres is not None
        pid_file = Path(self.stack.postgres.data_dir) / "postmaster.pid"
        roots["postgresql"] = int(pid_file.read_text().split()[0])
        broker = self.stack.broker
        if isinstance(broker, ApacheKafka):
            for node in broker.nodes:
                if node.pid is not None:
                    roots[f"kafka-{node.node_id}" if len(broker.nodes) > 1 else "kafka"] = node.pid
        elif getattr(broker, "proc", None) is not None:
            roots["tansu"] = broker.proc.pid  # type: ignore[union-attr]
        return roots

    def _system_cpu(
        self, extra: dict[str, int] | None = None, since: dict[str, float] | None = None
    ) -> dict[str, float]:
        """CPU seconds so far of each root's process tree (utime + stime of every living
        process in it, plus cutime + cstime: its children that exited, e.g. closed PostgreSQL
        backends); with `since`, the difference."""
        roots = {**self._roots(), **(extra or {})}
        now = tree_cpu_seconds(roots)
        if since is None:
            self._step_started = time.monotonic()
            return now
        return {k: now[k] - since.get(k, 0.0) for k in now}

    # ---------------------------------------------------------------------------- flat

    def flat(self) -> None:
        """`redeem_flat_1m`, `issue_flat_1m`: the capacity with `flat_rows` rows in every table
        on the path, divided by the same search with the tables as the capacity group left them
        (nearly empty); then the redeem → gate journeys with that gate (resync due)."""
        if not hasattr(self, "_capacities"):
            self.capacity()
        empty = self._capacities
        self._fill_tables(self.p.flat_rows)
        issue = self._search("token issue, full tables", self._issue_step)
        redeem = self._search("redeem, full tables", self._redeem_step)
        rows = self.p.flat_rows
        for key, label, full, base in (
            ("issue_flat_1m", "token issue", issue, empty["issue"]),
            ("redeem_flat_1m", "redeem", redeem, empty["redeem"]),
        ):
            ratio = (
                full["capacity_per_s"] / base["capacity_per_s"]
                if base["capacity_per_s"]
                else float("nan")
            )
            self.results.append(
                Figure(
                    key,
                    f"{label} capacity with {rows:,} rows in every table on its path / empty",
                    f"{full['capacity_per_s']:,.0f}/s with {rows:,} rows",
                    f"{base['capacity_per_s']:,.0f}/s empty; ratio {ratio:.2f}",
                    "ratio ≥ 0.9",
                    ratio >= 0.9,
                    {"rows": rows, "full": full, "empty": base, "ratio": ratio},
                )
            )
        self._to_gate("redeem_to_gate_1m", f", {rows:,} credentials in the gate")

    def _fill_tables(self, rows: int) -> None:
        """`rows` rows in every table on the issue and redeem paths, straight into each
        service's database (`INSERT … SELECT generate_series`), then ANALYZE; the gate reloads
        (NOTIFY '*'), as after a resync."""
        log(f"filling every table on the path with {rows:,} rows")
        t0 = time.monotonic()
        n = rows
        old = "now() - interval '30 days'"
        fills = {
            "token_issuer": [
                f"INSERT INTO scanners (scanner_id, org_id, serial_number, name, model, registered,"
                f" authorised, updated_at) SELECT 'fill-' || i, 'org-fill-' || (i % 1000),"
                f" 'FIL-' || i, 'fill', 'LVS', true, false, {old}"
                f" FROM generate_series(1, {n}) AS i",
                f"INSERT INTO tokens (token_id, scanner_id, org_id, code_digest, status,"
                f" issued_at, issued_by, expires_at, expired_at) SELECT 'fill-' || i,"
                f" 'fill-' || i, 'org-fill-' || (i % 1000), md5(i::text) || md5((-i)::text),"
                f" 'expired', {old}, 'u-fill', {old}, {old} FROM generate_series(1, {n}) AS i",
                f"INSERT INTO audit_log (actor_user_id, actor_org_id, scanner_id, action, at)"
                f" SELECT 'u-fill', 'org-fill-' || (i % 1000), 'fill-' || i, 'generated', {old}"
                f" FROM generate_series(1, {n}) AS i",
                f"INSERT INTO processed_events (consumer, event_id, processed_at)"
                f" SELECT 'fill', 'fill-' || i, now() FROM generate_series(1, {n}) AS i",
            ],
            "redeemer": [
                f"INSERT INTO scanners (scanner_id, org_id, serial_number, removed, updated_at)"
                f" SELECT 'fill-' || i, 'org-fill-' || (i % 1000), 'FIL-' || i, false, {old}"
                f" FROM generate_series(1, {n}) AS i",
                f"INSERT INTO tokens (token_id, scanner_id, org_id, code_digest, issued_at,"
                f" expires_at, status, updated_at) SELECT 'fill-' || i, 'fill-' || i,"
                f" 'org-fill-' || (i % 1000), md5(i::text) || md5((-i)::text), {old}, {old},"
                f" 'redeemed', {old} FROM generate_series(1, {n}) AS i",
                f"INSERT INTO scanner_credential_state (scanner_id, updated_at)"
                f" SELECT 'fill-' || i, {old} FROM generate_series(1, {n}) AS i",
                f"INSERT INTO credentials (credential_id, scanner_id, org_id, credential_digest,"
                f" status, issued_at) SELECT 'fill-' || i, 'fill-' || i,"
                f" 'org-fill-' || (i % 1000), md5(i::text) || md5((-i)::text), 'active', {old}"
                f" FROM generate_series(1, {n}) AS i",
                f"INSERT INTO serial_throttle (serial_key, failures, updated_at)"
                f" SELECT md5('s' || i), 1, now() FROM generate_series(1, {n}) AS i",
                f"INSERT INTO address_throttle (address, failures, updated_at)"
                f" SELECT md5('a' || i), ARRAY[now()], now() FROM generate_series(1, {n}) AS i",
                f"INSERT INTO processed_events (consumer, event_id, processed_at)"
                f" SELECT 'fill', 'fill-' || i, now() FROM generate_series(1, {n}) AS i",
            ],
            "scan_ingest": [
                f"INSERT INTO gate_credentials (credential_digest, credential_id, scanner_id,"
                f" org_id, issued_at, state) SELECT sha256(('fill-' || i)::bytea), 'fill-' || i,"
                f" 'fill-' || i, 'org-fill-' || (i % 200), {old}, 'active'"
                f" FROM generate_series(1, {n}) AS i",
                f"INSERT INTO processed_events (consumer, event_id, processed_at)"
                f" SELECT 'fill', 'fill-' || i, now() FROM generate_series(1, {n}) AS i",
            ],
            "notifier": [
                f"INSERT INTO processed_events (consumer, event_id, processed_at)"
                f" SELECT 'fill', 'fill-' || i, now() FROM generate_series(1, {n}) AS i",
            ],
        }

        async def fill(database: str, statements: list[str]) -> None:
            service = database.replace("_", "-")
            conn = await asyncpg.connect(asyncpg_dsn(self.database(service)))
            try:
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("ANALYZE")
                if database == "scan_ingest":
                    await conn.execute("NOTIFY scan_ingest_gate, '*'")
            finally:
                await conn.close()

        async def fill_all() -> None:
            await asyncio.gather(*(fill(d, s) for d, s in fills.items()))

        asyncio.run(fill_all())
        ingest = self.service("scan-ingest")
        wait_until(
            lambda: metric(ingest, "scan_ingest_gate_credentials") >= rows,
            300,
            "the gate reloaded its table",
        )
        log(f"tables filled in {time.monotonic() - t0:.0f} s")

    # ---------------------------------------------------------------------------- relay, gate

    def relay(self) -> None:
        assert self.stack.postgres is not None and self.stack.broker is not None
        url = self.stack.postgres.create_database("bench_relay")
        sizes = ",".join(str(s) for s in self.p.relay_sizes)
        log(f"outbox relay: backlogs of {sizes} events, {self.p.runs} runs")
        out = run_json(
            [
                sys.executable,
                str(HERE / "relay_bench.py"),
                "--database-url",
                url,
                "--bootstrap",
                self.stack.broker.bootstrap,
                "--sizes",
                sizes,
                "--runs",
                str(self.p.runs),
            ]
        )
        rows = []
        for size, d in out["sizes"].items():
            rows.append(
                {
                    "events": int(size),
                    "relay_per_s": d["relay_median"],
                    "per_row_relay_per_s": d["per_row_relay_median"],
                    "bare_producer_per_s": d["bare_median"],
                    "ratio": d["relay_median"] / d["bare_median"],
                    "per_row_ratio": d["per_row_relay_median"] / d["bare_median"],
                    "runs": d,
                }
            )
        self.scaling["relay"] = rows
        head = rows[-1]
        for key, label, rate, ratio in (
            ("relay_drain", "as the services wire it: record batches", "relay", "ratio"),
            (
                "relay_drain_per_row",
                "its fallback without the producer: one publish per row",
                "per_row_relay",
                "per_row_ratio",
            ),
        ):
            self.results.append(
                Figure(
                    key,
                    f"outbox relay drain, {label} ({head['events']:,} events)",
                    f"{head[rate + '_per_s']:,.0f} events/s",
                    f"bare aiokafka {head['bare_producer_per_s']:,.0f}/s, ratio {head[ratio]:.2f}",
                    "≥ 20,000 events/s",
                    head[rate + "_per_s"] >= 20_000,
                    out,
                )
            )

    def gate(self) -> None:
        assert self.stack.postgres is not None
        url = self.stack.postgres.create_database("bench_gate")
        sizes = ",".join(str(s) for s in self.p.gate_sizes)
        log(f"gate: {sizes} scanners, {self.p.runs} loads each")
        out = run_json(
            [
                sys.executable,
                str(HERE / "gate_bench.py"),
                "--database-url",
                url,
                "--sizes",
                sizes,
                "--runs",
                str(self.p.runs),
            ]
        )
        rows = [
            {
                "scanners": int(size),
                "load_s": d["load_median_s"],
                "exact_bytes_per_scanner": d["exact_bytes_per_scanner"],
                "rss_bytes_per_scanner": d["rss_bytes_per_scanner"],
                "runs": d,
            }
            for size, d in out["sizes"].items()
        ]
        self.scaling["gate"] = rows
        head = rows[-1]
        n = head["scanners"]
        self.results.append(
            Figure(
                "gate_memory",
                f"gate memory per authorised scanner ({n:,} scanners)",
                f"{head['exact_bytes_per_scanner']:.0f} B "
                f"({head['rss_bytes_per_scanner']:.0f} B resident)",
                "",
                "≤ 300 B",
                head["rss_bytes_per_scanner"] <= 300,
                head,
            )
        )
        self.results.append(
            Figure(
                "gate_rebuild",
                f"gate rebuild from its table ({n:,} scanners)",
                f"{head['load_s']:.2f} s",
                "",
                "≤ 5 s (1,000,000)",
                head["load_s"] <= 5 if n >= 1_000_000 else None,
                head,
            )
        )


# ProducerPerformance's last line: "200000 records sent, 95238.1 records/sec (93.01 MB/sec),
# 150.2 ms avg latency, 400.0 ms max latency, 120 ms 50th, 300 ms 95th, 350 ms 99th, 390 ms
# 99.9th."
PRODUCER_SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th"
)


async def _create_like(bootstrap: str, topic: str) -> int:
    """`topic`, with as many partitions as the scans topic (replication 1: one node)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (scans,) = await admin.describe_topics([SCANS_TOPIC])
        partitions = len(scans["partitions"]) or 24
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        return partitions
    finally:
        await admin.close()


@dataclass(frozen=True)
class Run:
    result: WrkResult
    cpu_us: float  # CPU time of the server process per request
    acked: float  # the service's count of Kafka-acknowledged uploads during the run


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each root's process tree (see `Bench._system_cpu`)."""
    parent: dict[int, int] = {}
    spent: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parent[pid] = int(fields[1])
        spent[pid] = sum(int(f) for f in fields[11:15]) / tick
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += spent.get(pid, 0.0)
            todo += children.get(pid, [])
        out[name] = total
    return out


def accepted_count(url: str) -> float:
    return metric(url, "scan_ingest_uploads_total", '{outcome="accepted"}')


def good_file(wrk: Wrk, size: int) -> Path:
    return wrk.dir / f"good-{size}.txt"


# -------------------------------------------------------------------------------- report


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)


def report(bench: Bench, info: dict[str, Any], started: float) -> dict[str, Any]:
    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "NO")

    broker = bench.stack.broker
    broker_name = broker.description if isinstance(broker, ApacheKafka) else "Tansu"
    print()
    print(
        f"scanner-auth bench ({bench.p.name}, median of {bench.p.runs} run(s), warm-up "
        f"excluded) on {broker_name}, {info['cores']} cores ({info['cpu']}), load average at start "
        f"{info['load_average_at_start'][0]:.2f}, at end {os.getloadavg()[0]:.2f}, "
        f"{time.monotonic() - started:.0f} s"
    )
    print()
    print(
        table(
            [[f.label, f.value, f.floor, f.target, verdict(f.ok)] for f in bench.results],
            ["figure", "measured", "floor (same run)", "target", "met"],
        )
    )
    if "ingest" in bench.scaling:
        print("\nscan-ingest, how it scales (authorised uploads against the floor)")
        print(
            table(
                [
                    [
                        f"{r['scanners']:,}",
                        str(r["clients"]),
                        f"{r['accepted_per_s']:,.0f}",
                        f"{r['floor_per_s']:,.0f}",
                        f"{r['ratio']:.2f}",
                        f"{r['cpu_us_per_request']:.0f}",
                        f"{r['floor_cpu_us_per_request']:.0f}",
                        f"{r['cpu_ratio']:.2f}",
                        f"{r['p99_ms']:.1f}",
                        f"{r['floor_p99_ms']:.1f}",
                    ]
                    for r in bench.scaling["ingest"]
                ],
                [
                    "scanners",
                    "clients",
                    "accepted/s",
                    "floor/s",
                    "ratio",
                    "µs CPU/req",
                    "floor µs",
                    "CPU ratio",
                    "p99 ms",
                    "floor p99",
                ],
            )
        )
    if "relay" in bench.scaling:
        print("\noutbox relay, by backlog")
        print(
            table(
                [
                    [
                        f"{r['events']:,}",
                        f"{r['relay_per_s']:,.0f}",
                        f"{r['per_row_relay_per_s']:,.0f}",
                        f"{r['bare_producer_per_s']:,.0f}",
                        f"{r['ratio']:.2f}",
                        f"{r['per_row_ratio']:.2f}",
                    ]
                    for r in bench.scaling["relay"]
                ],
                [
                    "events",
                    "relay (as wired)/s",
                    "per-row relay/s",
                    "bare producer/s",
                    "ratio",
                    "per-row ratio",
                ],
            )
        )
    if "gate" in bench.scaling:
        print("\ngate, by size")
        print(
            table(
                [
                    [
                        f"{r['scanners']:,}",
                        f"{r['load_s']:.2f}",
                        f"{r['exact_bytes_per_scanner']:.0f}",
                        f"{r['rss_bytes_per_scanner']:.0f}",
                    ]
                    for r in bench.scaling["gate"]
                ],
                ["scanners", "rebuild s", "bytes/scanner", "resident bytes/scanner"],
            )
        )
    info["load_average_at_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - started, 1)
    return {
        "machine": info,
        "broker": broker_name,
        "profile": asdict(bench.p),
        "figures": [asdict(f) for f in bench.results],
        "scaling": bench.scaling,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated, of: {', '.join(FIGURES)}"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--kafka",
        choices=("apache", "tansu"),
        default="apache",
        help="the broker: Apache Kafka, one node (default), or Tansu (an A/B against the dev "
        "broker; the producer floor then runs without idempotence, which Tansu lacks)",
    )
    args = parser.parse_args(argv)
    figures = tuple(f.strip() for f in args.only.split(",") if f.strip())
    unknown = set(figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="scanner-auth-bench-"))
    bench = Bench(PROFILES[args.profile], figures, root, kafka=args.kafka)
    try:
        bench.run()
        document = report(bench, info, started)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.results / f"bench-{stamp}-{args.profile}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    (args.results / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
