"""The whole system on one machine with embedded infrastructure: `scanner-auth dev`, and the
end-to-end tests. Every process it starts, it stops."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Literal

import httpx

from scanner_auth_shared.events import DIRECTORY_TOPIC, EventData
from scanner_auth_shared.infra import EmbeddedPostgres, MailSink, TansuBroker, free_port
from scanner_auth_shared.kafka_broker import ApacheKafka
from scanner_auth_shared.testing.identity import TestIdentity
from scanner_auth_shared.testing.kafka import publish_events
from scanner_auth_shared.testing.signing import service_environment as signing_environment

from .demo import DemoDirectory
from .proxy import RoundRobinProxy
from .services import SERVICES

SERVICE_ORDER = ("token-issuer", "redeemer", "scan-ingest", "notifier")
# Which broker a stack runs: Apache Kafka (the tests', Java needed) or Tansu (the quick default
# of `scanner-auth dev`: in memory, starts in 0.1 s, but no idempotent producer and nothing kept
# across a restart).
KafkaKind = Literal["apache", "tansu"]

# The hourly quotas (emails per code and per address, rotations per scanner) raised, for stacks
# that drive one code, address or credential in a loop: the load, restart and replica tests and
# the benchmarks. The quotas themselves are tested where they are built (the token-issuer's and
# the redeemer's tests, tests/security/test_abuse_limits.py).
LOAD_QUOTAS: dict[str, dict[str, str]] = {
    "token-issuer": {
        "EMAIL_LIMIT_PER_CODE_PER_HOUR": "100000",
        "EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR": "100000",
    },
    "redeemer": {"ROTATION_LIMIT_PER_HOUR": "100000"},
}


def merged_env(*envs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Per-service environments, later ones winning variable by variable."""
    out: dict[str, dict[str, str]] = {}
    for env in envs:
        for service, values in env.items():
            out.setdefault(service, {}).update(values)
    return out


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The command that runs the service (tests/deploy runs it from the image instead)."""
        return [sys.executable, "-m", "scanner_auth", "serve", self.name]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv(),
            env={**os.environ, **self.env},
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: signals reach it and only it
        )

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
            )
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float, told: float | None = None) -> None:
        """Until `/readyz` answers 200; TimeoutError after `timeout` seconds (`told`: the
        timeout to name in the error, when this wait is part of a longer one)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} (:{self.port}) not ready within {told or timeout}s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def shared_environment(
    *,
    bootstrap: str,
    smtp_port: int,
    identity: TestIdentity,
    pepper: str,
    sealing_key: str,
    code_key: str,
) -> dict[str, str]:
    """What the four services of a stack on this machine share (each reads what it needs);
    HTTP_PORT and DATABASE_URL are each service's own."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HTTP_HOST": "127.0.0.1",
        "AUTH_PUBLIC_KEY_PEM": identity.public_pem,
        "AUTH_ISSUER": identity.issuer,
        "AUTH_AUDIENCE": identity.audience,
        "TOKEN_PEPPER": pepper,
        "SEALING_KEY": sealing_key,
        "CODE_ENCRYPTION_KEY": code_key,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_TLS": "none",
        "SMTP_FROM": "MyScanner <no-reply@myscanner.test>",
        "TRUSTED_PROXIES": "127.0.0.1/32",
        # Short sessions: a replica that dies leaves its group in 3 s (the test brokers allow
        # sessions down to 1 s: group.min.session.timeout.ms).
        "KAFKA_SESSION_TIMEOUT_MS": "3000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "SHUTDOWN_GRACE_SECONDS": "10",
    }


@dataclass
class Stack:
    """Embedded PostgreSQL, a Kafka broker (Apache Kafka or Tansu), an SMTP sink and the four
    services as processes."""

    root: Path
    smtp_port: int = 0
    fixed_ports: bool = False  # the contract's default ports (dev) or free ones (tests)
    kafka: KafkaKind = "apache"
    # Apache Kafka only: 1 node, or a controller and this many brokers (the production topic
    # settings: the broker-fault tests); `kafka_fast_jit=False` for the benchmarks (full JIT).
    kafka_brokers: int = 1
    kafka_fast_jit: bool = True
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    identity: TestIdentity = field(default_factory=TestIdentity)
    # Processes of each service, as a Deployment's `spec.replicas`. With more than one, every
    # replica of a service is its own `scanner-auth serve` process on its own port and the
    # service's one database, and a round-robin proxy (`fronts[name]`, a Kubernetes Service:
    # proxy.RoundRobinProxy) listens on the service's port, the one `System.url` returns.
    replicas: int = 1
    # How long a replica stays out of rotation before its SIGTERM in a rollout (what the
    # Deployment's preStop sleep gives endpoints and proxies to stop routing to it).
    drain_seconds: float = 1.0
    postgres: EmbeddedPostgres | None = None
    broker: ApacheKafka | TansuBroker | None = None
    mail: MailSink | None = None
    # The first replica of each service (what code that knows one process per service uses);
    # `pods[name]` has them all, in the order they serve; `history[name]` every process a
    # service ever had (the replaced ones too: their logs).
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    pods: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    fronts: dict[str, RoundRobinProxy] = field(default_factory=dict)
    history: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def start_infrastructure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pg_dir, kafka_dir = self.root / "postgres", self.root / "kafka"
        # Tansu keeps nothing across a restart, so neither does the database (nor Apache
        # Kafka's folder, for the same clean start): each run starts from a consistent state.
        shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(kafka_dir, ignore_errors=True)
        self.postgres = EmbeddedPostgres(pg_dir).start()
        self.broker = (
            ApacheKafka(kafka_dir, brokers=self.kafka_brokers, fast_jit=self.kafka_fast_jit).start()
            if self.kafka == "apache"
            else TansuBroker(self.root / "logs" / "broker.log").start()
        )
        self.mail = MailSink(folder=self.root / "mail", port=self.smtp_port or free_port()).start()

    def service_env(self) -> dict[str, dict[str, str]]:
        assert self.postgres and self.broker and self.mail
        shared = shared_environment(
            bootstrap=self.broker.bootstrap,
            smtp_port=self.mail.port,
            identity=self.identity,
            pepper=secrets.token_urlsafe(48),
            sealing_key=base64.b64encode(secrets.token_bytes(32)).decode(),
            code_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        )
        if self.kafka == "tansu":
            # Tansu hands out no producer ids: say so rather than have every service probe.
            shared["KAFKA_IDEMPOTENCE"] = "off"
        envs = {}
        for name in SERVICE_ORDER:
            spec = SERVICES[name]
            port = spec.default_port if self.fixed_ports else free_port()
            env = {
                **shared,
                # Every event signed by its producer and checked by its consumers, as in the
                # production overlay (scanner_auth_shared.signing).
                **signing_environment(name),
                "HTTP_PORT": str(port),
                "DATABASE_URL": self.postgres.create_database(name.replace("-", "_")),
            }
            env.update(self.extra_env.get(name, {}))
            envs[name] = env
        return envs

    def enable_ui_dev_identities(
        self, demo: DemoDirectory, lifetime: timedelta = timedelta(hours=12)
    ) -> Path:
        """The demo users and their JWTs in a file (readable by this user only) that the
        token-issuer serves to its /ui/ page's "Acting as" picker. Dev and tests only."""
        path = self.root / "ui-dev-identities.json"
        users = [
            {
                "user_id": u.user_id,
                "label": u.label,
                "display_name": u.display_name,
                "email": u.email,
                "org_id": u.org_id,
                "token": self.identity.mint(
                    u.user_id, u.org_id, list(u.roles), u.email, lifetime=lifetime
                ),
            }
            for u in demo.users
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"users": users}, out)
        self.extra_env.setdefault("token-issuer", {})["UI_DEV_IDENTITIES_FILE"] = str(path)
        return path

    def start_services(self, timeout: float = 90) -> None:
        """Every replica of every service started at once (replicas of a service serialise
        their migrations on PostgreSQL's advisory lock), then each awaited until ready; then
        the fronts of a replicated stack."""
        self.envs = self.service_env()
        if self.replicas > 1:
            # Each front listens on its service's port from the start, with no backend yet:
            # a port that stays unbound while the replicas start (a minute on a busy machine)
            # can be taken meanwhile as the local port of any outgoing connection.
            for name in self.envs:
                port = int(self.envs[name]["HTTP_PORT"])
                self.fronts[name] = RoundRobinProxy(name, [], port=port).start()
        for name in self.envs:
            for _ in range(self.replicas):
                svc = self.new_replica(name)
                self.pods.setdefault(name, []).append(svc)
                svc.start()
            self.services[name] = self.pods[name][0]
        deadline = time.monotonic() + timeout
        for pods in self.pods.values():
            for svc in pods:
                svc.wait_ready(max(0.0, deadline - time.monotonic()), told=timeout)
        for name, front in self.fronts.items():
            for svc in self.pods[name]:
                front.add(svc.port)

    def new_replica(self, name: str) -> ServiceProcess:
        """One more process of `name` (not started): the service's environment, its own port
        when the stack runs replicas (the service's port otherwise)."""
        env = dict(self.envs[name])
        number = len(self.history.setdefault(name, [])) + 1
        log_name = f"{name}.log"
        if self.replicas > 1:
            env["HTTP_PORT"] = str(free_port())
            log_name = f"{name}-{number}.log"
        svc = ServiceProcess(name, int(env["HTTP_PORT"]), env, self.root / "logs" / log_name)
        self.history[name].append(svc)
        return svc

    def _set_pods(self, name: str, pods: list[ServiceProcess]) -> None:
        self.pods[name] = pods
        self.services[name] = pods[0]

    def roll(self, name: str, index: int, timeout: float = 120) -> tuple[int | None, float]:
        """Replace replica `index` of `name` as a Deployment's rollout does with maxSurge 1 and
        maxUnavailable 0: a new process is started and, once ready, put in rotation; then the
        old one is taken out of rotation, given `drain_seconds` (the preStop sleep), and sent
        SIGTERM; the new one takes its place in `pods`. The old one's exit code and how long it
        took to exit after its SIGTERM."""
        assert self.replicas > 1, "a rollout needs a stack of replicas (a port per process)"
        old = self.pods[name][index]
        new = self.new_replica(name)
        new.start()
        new.wait_ready(timeout)
        front = self.fronts.get(name)
        if front is not None:
            front.add(new.port)
            front.drain(old.port)
        time.sleep(self.drain_seconds)  # the preStop sleep: routes to it are gone by now
        started = time.monotonic()
        code = old.stop(signal.SIGTERM, timeout=max(30.0, self.grace_seconds(name) + 10))
        took = time.monotonic() - started
        if front is not None:
            front.remove(old.port)
        pods = list(self.pods[name])
        pods[index] = new
        self._set_pods(name, pods)
        return code, took

    def restart(self, name: str, index: int, sig: int, timeout: float = 120) -> int | None:
        """Replica `index` of `name` ended by `sig` and started again on its port, as the
        kubelet restarts a container in its pod; its exit code. A SIGTERM is preceded by the
        drain (out of rotation, `drain_seconds`) and the replica goes back into rotation once
        ready; after a SIGKILL it stays in rotation (nobody took it out: the proxy skips it
        while it refuses connections, and its readiness probe while it is not ready)."""
        svc = self.pods[name][index]
        front = self.fronts.get(name)
        if sig != signal.SIGKILL and front is not None:
            front.drain(svc.port)
            time.sleep(self.drain_seconds)
        code = svc.stop(sig, timeout=max(30.0, self.grace_seconds(name) + 10))
        svc.start()
        try:
            svc.wait_ready(timeout)
        except RuntimeError:
            if not self._port_taken(svc):
                raise
            # Its port was free for the seconds the new process took to start, and something
            # else bound it meanwhile (an outgoing connection's local port): on this machine a
            # pod's address is its port, so the restarted replica gets a new one, as a pod that
            # was rescheduled would, and the front follows it.
            old_port = svc.port
            svc.port = free_port()
            svc.env["HTTP_PORT"] = str(svc.port)
            svc.start()
            svc.wait_ready(timeout)
            if front is not None:
                front.remove(old_port)
        if front is not None:
            front.add(svc.port)
        return code

    @staticmethod
    def _port_taken(svc: ServiceProcess) -> bool:
        """Whether the process exited because its port was in use (its log's last lines)."""
        try:
            tail = svc.log_path.read_bytes()[-4000:]
        except OSError:
            return False
        return b"address already in use" in tail

    def grace_seconds(self, name: str) -> float:
        return float(self.envs.get(name, {}).get("SHUTDOWN_GRACE_SECONDS", "30"))

    def publish(self, *events: EventData) -> None:
        """Directory events, published (and signed) as MyScanner's directory would."""
        assert self.broker is not None
        asyncio.run(publish_events(self.broker.bootstrap, DIRECTORY_TOPIC, *events))

    def stop(self) -> None:
        for front in self.fronts.values():
            front.stop()
        for pods in reversed(list(self.pods.values())):
            for svc in pods:
                svc.stop()
        for svc in reversed(list(self.services.values())):  # set by hand (bench/run.py)
            svc.stop()
        if self.mail:
            self.mail.stop()
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()


class System:
    """A started stack, driven as its users drive it (end-to-end tests)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.demo = DemoDirectory()

    @property
    def bootstrap(self) -> str:
        assert self.stack.broker is not None
        return self.stack.broker.bootstrap

    def url(self, service: str) -> str:
        """Where clients call `service`: its front (the Service) when it runs replicas, else
        its one process."""
        front = self.stack.fronts.get(service)
        return front.url if front is not None else self.stack.services[service].url

    def replica_urls(self, service: str) -> list[str]:
        """Each replica of `service` by its own port (one URL when it runs one process)."""
        return [p.url for p in self.stack.pods.get(service, [self.stack.services[service]])]

    # One connection per request: through a front, each request goes to the next replica in
    # turn, as a Kubernetes Service spreads new connections (and no keep-alive race with a
    # server that is closing).
    LIMITS = httpx.Limits(max_keepalive_connections=0)

    def as_user(self, label_or_id: str) -> httpx.Client:
        user = next(u for u in self.demo.users if label_or_id in (u.user_id, u.env_name))
        token = self.stack.identity.mint(user.user_id, user.org_id, list(user.roles), user.email)
        return httpx.Client(
            base_url=self.url("token-issuer"),
            timeout=15,
            headers={"Authorization": f"Bearer {token}"},
            limits=self.LIMITS,
        )

    def device(
        self, service: str, credential: str | None = None, *, base_url: str | None = None
    ) -> httpx.Client:
        """A scanner's client of `service` (through its front), or of one replica
        (`base_url`)."""
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return httpx.Client(
            base_url=base_url or self.url(service), timeout=15, headers=headers, limits=self.LIMITS
        )

    def generate_token(self, scanner_id: str, as_user: str = "ADMIN_JWT") -> dict[str, Any]:
        """A new authorisation token (201) with its code, as an admin generates it."""
        with self.as_user(as_user) as admin:
            r = admin.post(f"/v1/scanners/{scanner_id}/authorisation-token")
            if r.status_code != 201:
                raise AssertionError(f"generate: {r.status_code} {r.text}")
            return dict(r.json())

    def redeem(self, code: str, serial_number: str) -> httpx.Response:
        """The scanner redeems the code a person typed in."""
        with self.device("redeemer") as device:
            return device.post(
                "/v1/authorisations", json={"code": code, "serial_number": serial_number}
            )

    def upload_status(self, credential: str) -> int:
        """The status scan-ingest answers to a scanner's upload with that credential."""
        with self.device("scan-ingest", credential) as device:
            return device.post("/v1/scans", json={"volume_m3": 1.0}).status_code

    def upload_statuses(self, credential: str) -> list[int]:
        """The status each scan-ingest replica (by its own port) answers to an upload with
        that credential: a change of the gate has reached every replica when they agree."""
        statuses = []
        for url in self.replica_urls("scan-ingest"):
            with self.device("scan-ingest", credential, base_url=url) as device:
                statuses.append(device.post("/v1/scans", json={"volume_m3": 1.0}).status_code)
        return statuses

    def processes(self) -> list[ServiceProcess]:
        """Every service process the stack has started (replaced replicas too)."""
        seen = [p for history in self.stack.history.values() for p in history]
        return seen + [p for p in self.stack.services.values() if p not in seen]

    def logs(self) -> str:
        return "\n".join(
            s.log_path.read_text(errors="replace") for s in self.processes() if s.log_path.exists()
        )


# ------------------------------------------------------------------------------ scanner-auth dev


def run_dev(
    root: Path, *, smtp_port: int = 0, quiet: bool = False, kafka: KafkaKind = "tansu"
) -> int:
    stack = Stack(root.resolve(), smtp_port=smtp_port, fixed_ports=True, kafka=kafka)
    stopping = {"signal": 0}

    def on_signal(signum: int, _: Any) -> None:
        stopping["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        print("scanner-auth dev: starting PostgreSQL, the broker and the SMTP sink…", flush=True)
        stack.start_infrastructure()
        print("scanner-auth dev: starting the four services…", flush=True)
        demo = DemoDirectory()
        stack.enable_ui_dev_identities(demo)
        stack.start_services()
        stack.publish(*demo.events())
        _print_welcome(stack, demo, time.monotonic() - started, quiet)
        while True:
            for svc in stack.services.values():
                if svc.proc is not None and svc.proc.poll() is not None:
                    print(
                        f"scanner-auth dev: {svc.name} exited ({svc.proc.returncode}); "
                        f"see {svc.log_path}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nscanner-auth dev: stopping…", flush=True)
        return 0
    except Exception as exc:
        print(f"scanner-auth dev: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan anything
        stack.stop()
        print("scanner-auth dev: everything stopped.", flush=True)


def _print_welcome(stack: Stack, demo: DemoDirectory, took: float, quiet: bool) -> None:
    assert stack.postgres and stack.broker and stack.mail
    lines = [
        "",
        f"scanner-auth is running ({took:.1f} s). Ctrl-C stops everything.",
        "",
        "  services",
    ]
    for name, svc in stack.services.items():
        lines.append(
            f"    {name:<13} {svc.url}   (docs: {svc.url}/docs)"
            if name in ("token-issuer", "redeemer")
            else f"    {name:<13} {svc.url}"
        )
    lines += [
        f"    {'web page':<13} {stack.services['token-issuer'].url}/ui/   "
        "(act as any demo user there)",
        "  infrastructure",
        f"    postgresql    {stack.postgres.url('<service>')}",
        f"    kafka         {stack.broker.bootstrap}  ({_broker_name(stack)})",
        f"    smtp sink     127.0.0.1:{stack.mail.port}  (mails: {stack.mail.folder})",
        "                  `scanner-auth mail` lists them",
        f"    logs          {stack.root / 'logs'}",
        "",
        "  demo users (JWTs valid 12 hours)",
    ]
    for user in demo.users:
        token = stack.identity.mint(
            user.user_id, user.org_id, list(user.roles), user.email, lifetime=timedelta(hours=12)
        )
        lines.append(f"    {user.label:<32} {user.user_id}")
        lines.append(f"      export {user.env_name}={token}")
    lines += ["", "  demo scanners"]
    for s in demo.scanners:
        lines.append(
            f"    {s.scanner_id:<14} {s.serial_number:<10} {s.name} ({s.model}, {s.org_id})"
        )
    first = demo.scanners[0]
    issuer, redeemer = stack.services["token-issuer"].url, stack.services["redeemer"].url
    ingest = stack.services["scan-ingest"].url
    body = json.dumps({"code": "<code>", "serial_number": first.serial_number})
    lines += [
        "",
        "  try it",
        f'    curl -s -X POST -H "Authorization: Bearer $ADMIN_JWT" \\\n'
        f"      {issuer}/v1/scanners/{first.scanner_id}/authorisation-token",
        f"    curl -s -X POST -H 'Content-Type: application/json' -d '{body}' \\\n"
        f"      {redeemer}/v1/authorisations",
        "    curl -s -X POST -H 'Authorization: Bearer <credential>' \\\n"
        f"      -d '{{\"volume_m3\": 12.5}}' {ingest}/v1/scans",
        "",
        f"scanner-auth dev: ready at {datetime.now(UTC).isoformat(timespec='seconds')}",
    ]
    if quiet:
        lines = [
            line for line in lines if "export" in line or "ready" in line or line.startswith("    ")
        ]
    print("\n".join(lines), flush=True)


def _broker_name(stack: Stack) -> str:
    if isinstance(stack.broker, ApacheKafka):
        return stack.broker.description
    return "Tansu, in memory; `scanner-auth dev --kafka apache` for Apache Kafka"


def list_mail(root: Path) -> None:
    folder = root / "mail"
    files = sorted(folder.glob("*.eml")) if folder.exists() else []
    if not files:
        print(f"no mail in {folder}")
        return
    for path in files:
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        print(f"{path.name}  {msg['Date']}  to {msg['To']}  “{msg['Subject']}”")
