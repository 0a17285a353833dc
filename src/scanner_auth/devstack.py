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
from .services import SERVICES

SERVICE_ORDER = ("token-issuer", "redeemer", "scan-ingest", "notifier")
# Which broker a stack runs: Apache Kafka (the tests', Java needed) or Tansu (the quick default
# of `scanner-auth dev`: in memory, starts in 0.1 s, but no idempotent producer and nothing kept
# across a restart).
KafkaKind = Literal["apache", "tansu"]


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
    postgres: EmbeddedPostgres | None = None
    broker: ApacheKafka | TansuBroker | None = None
    mail: MailSink | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

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
        for name, env in self.service_env().items():
            svc = ServiceProcess(
                name, int(env["HTTP_PORT"]), env, self.root / "logs" / f"{name}.log"
            )
            self.services[name] = svc
            svc.start()
        deadline = time.monotonic() + timeout
        for svc in self.services.values():
            while not svc.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{svc.name} not ready within {timeout}s; see {svc.log_path}"
                    )
                time.sleep(0.2)

    def publish(self, *events: EventData) -> None:
        """Directory events, published (and signed) as MyScanner's directory would."""
        assert self.broker is not None
        asyncio.run(publish_events(self.broker.bootstrap, DIRECTORY_TOPIC, *events))

    def stop(self) -> None:
        for svc in reversed(list(self.services.values())):
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
        return self.stack.services[service].url

    def as_user(self, label_or_id: str) -> httpx.Client:
        user = next(u for u in self.demo.users if label_or_id in (u.user_id, u.env_name))
        token = self.stack.identity.mint(user.user_id, user.org_id, list(user.roles), user.email)
        return httpx.Client(
            base_url=self.url("token-issuer"),
            timeout=15,
            headers={"Authorization": f"Bearer {token}"},
        )

    def device(self, service: str, credential: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return httpx.Client(base_url=self.url(service), timeout=15, headers=headers)

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

    def logs(self) -> str:
        return "\n".join(
            s.log_path.read_text(errors="replace")
            for s in self.stack.services.values()
            if s.log_path.exists()
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
