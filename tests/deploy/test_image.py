"""The image built from deploy/Dockerfile (deploy/build-local, podman, no Docker) and run the way
Kubernetes runs it: read-only root filesystem, uid 10001, the environment as configuration.

Each service migrates from the image as the init container does, then serves with
MIGRATE_ON_START=false, answers its probes and one request of its kind, and ends with exit 0 on
SIGTERM (`podman stop`) within the grace period. The four together carry the whole journey:
directory events, an admin's code, the code emailed, redeemed by the scanner, a scan accepted.

Each container gets what deploy/k8s gives the pod: uid/gid 10001, a read-only root filesystem
with /tmp the only writable path, no capabilities, no privilege escalation, and the CPU and
memory limits of the prod overlay (an init container's for `migrate`): a service that needs
more memory than its limit is killed here as it would be there.

The containers share the host's network (`--network host`) to reach the test PostgreSQL, broker
and SMTP sink of the repository's fixtures on the loopback interface.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scanner_auth.demo import DemoDirectory
from scanner_auth.devstack import ServiceProcess, Stack, System, shared_environment
from scanner_auth.services import SERVICES
from scanner_auth_shared.events import DIRECTORY_TOPIC, SCANS_TOPIC
from scanner_auth_shared.infra import free_port
from scanner_auth_shared.testing.kafka import publish_events, wait_for_events
from scanner_auth_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
BUILD_LOCAL = ROOT / "deploy" / "build-local"
PODMAN_STATE = ROOT / ".tools" / "podman"
RUN_AS = "10001:10001"  # runAsUser / runAsGroup of deploy/k8s
# What the pod gets before SIGKILL (terminationGracePeriodSeconds in deploy/k8s is 60, after a
# 5 s preStop pause); the services' own deadline, SHUTDOWN_GRACE_SECONDS, is 10 here.
STOP_GRACE_SECONDS = 30
# A start on a loaded 2-core machine: Python's imports, migrations, the group joins.
START_TIMEOUT = 180
TIMINGS = PODMAN_STATE / "run-timings.json"
# As the pod's securityContext and volumes have it (tests/deploy/test_manifests.py checks those).
LOCKED_DOWN = (
    "--read-only", "--read-only-tmpfs=false", "--tmpfs=/tmp", "--user", RUN_AS,
    "--cap-drop=ALL", "--security-opt=no-new-privileges", "--pull=never",
)  # fmt: skip


# ------------------------------------------------------------------------------ podman


def _podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(PODMAN_STATE / "containers.conf")}


def podman(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=_podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


@pytest.fixture(scope="session")
def image() -> str:
    """The image for the current sources, built by deploy/build-local unless it exists."""
    missing = [tool for tool in ("podman",) if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: `make test` installs Debian's podman, buildah, "
            "runc and mmdebstrap (deploy/build-local does, as root or with sudo)"
        )
    done = subprocess.run(
        [str(BUILD_LOCAL)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert done.returncode == 0, f"deploy/build-local failed:\n{done.stderr[-4000:]}"
    return done.stdout.strip().splitlines()[-1]


def _record(name: str, value: float | str) -> None:
    """Start and stop times, memory, kept for deploy/README.md's figures (not asserted)."""
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    found = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    found[name] = round(value, 2) if isinstance(value, float) else value
    TIMINGS.write_text(json.dumps(found, indent=2, sort_keys=True))


def _kubectl() -> str:
    found = shutil.which("kubectl") or (
        "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
    )
    if found is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "no kubectl: cannot render deploy/k8s for the containers' resource limits"
        )
    return str(found)


@functools.cache
def _limits() -> dict[tuple[str, str], tuple[str, str]]:
    """(service, serve|migrate) -> podman's --memory and --cpus, from the prod overlay's limits
    (the service's container, and its init container for migrate)."""
    rendered = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / "prod")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    limits = {}
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for command, container in (
            ("serve", pod["containers"][0]),
            ("migrate", pod["initContainers"][0]),
        ):
            memory = str(container["resources"]["limits"]["memory"])
            cpu = str(container["resources"]["limits"]["cpu"])
            memory = memory.replace("Mi", "m").replace("Gi", "g")  # podman: binary units
            cpus = str(int(cpu[:-1]) / 1000) if cpu.endswith("m") else cpu
            limits[(doc["metadata"]["name"], command)] = (memory, cpus)
    return limits


@dataclass
class ContainerService(ServiceProcess):
    """One service from the image, as a container in the foreground (`podman run --rm`): the
    dev stack's ServiceProcess with another command. The variables are passed by name
    (`--env NAME`, the value from podman's own environment): no secret on a command line."""

    image: str = ""
    variables: tuple[str, ...] = ()
    container: str = field(default_factory=lambda: f"scanner-auth-test-{uuid.uuid4().hex[:10]}")
    command: str = "serve"

    @classmethod
    def of(
        cls, name: str, image: str, env: dict[str, str], logs: Path, command: str = "serve"
    ) -> ContainerService:
        return cls(
            name=name,
            port=int(env["HTTP_PORT"]),
            env={**env, "CONTAINERS_CONF": str(PODMAN_STATE / "containers.conf")},
            log_path=logs / f"{name}-{command}.log",
            image=image,
            variables=tuple(env),
            command=command,
        )

    def argv(self) -> list[str]:
        memory, cpus = _limits()[(self.name, self.command)]
        return [
            "podman", "run", "--rm", "--name", self.container, "--network", "host",
            *LOCKED_DOWN, f"--memory={memory}", f"--cpus={cpus}",
            *(f"--env={name}" for name in self.variables),
            self.image, self.command, self.name,
        ]  # fmt: skip

    def memory(self) -> str:
        """What the container uses now (podman stats), e.g. "112.4MB"."""
        stats = json.loads(
            podman("stats", "--no-stream", "--format", "json", self.container).stdout
        )
        return str(stats[0]["mem_usage"]).split(" / ")[0]

    def run(self, timeout: float = START_TIMEOUT) -> int:
        """Start and wait for the end (`migrate`): its exit code."""
        self.start()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self.remove()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_GRACE_SECONDS) -> int | None:
        """`podman stop`: SIGTERM, SIGKILL after `timeout` seconds (podman run then exits 137)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        podman("stop", "--time", str(int(timeout)), self.container, timeout=timeout + 60)
        try:
            return self.proc.wait(30)
        finally:
            self.remove()

    def remove(self) -> None:
        podman("rm", "--force", "--ignore", self.container)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Environment:
    """The fixtures' infrastructure, and one complete environment per service."""

    kafka: Any
    mail_sink: Any
    identity: Any
    test_secrets: Any
    make_database: Any
    logs: Path

    def service_env(self, service: str, **extra: str) -> dict[str, str]:
        shared = shared_environment(
            bootstrap=self.kafka.bootstrap,
            smtp_port=self.mail_sink.port,
            identity=self.identity,
            pepper=self.test_secrets.pepper,
            sealing_key=self.test_secrets.sealing_key,
            code_key=self.test_secrets.code_key,
        )
        fields = {name.upper() for name in SERVICES[service].settings_class().model_fields}
        env = {k: v for k, v in shared.items() if k in fields}  # each gets what it reads
        env.update(HTTP_PORT=str(free_port()), DATABASE_URL=self.make_database(), **extra)
        return env

    def secrets(self) -> list[str]:
        s = self.test_secrets
        return [s.pepper, s.sealing_key, s.code_key]


@pytest.fixture
def environment(
    kafka: Any, mail_sink: Any, identity: Any, test_secrets: Any, make_database: Any,
    tmp_path: Path,
) -> Environment:  # fmt: skip
    return Environment(kafka, mail_sink, identity, test_secrets, make_database, tmp_path)


@pytest.fixture
def containers() -> Iterator[list[ContainerService]]:
    """Every container a test starts is gone after it, whatever happened."""
    started: list[ContainerService] = []
    yield started
    for container in started:
        container.remove()


def _ok(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def _start(container: ContainerService) -> float:
    started = time.monotonic()
    container.start()
    wait_until(container.ready, START_TIMEOUT, f"{container.name} ready (/readyz 200)", every=0.2)
    return time.monotonic() - started


def _stop(container: ContainerService) -> tuple[int | None, float]:
    started = time.monotonic()
    code = container.stop()
    return code, time.monotonic() - started


# ------------------------------------------------------------------------------ the image


def test_the_image_runs_as_the_manifests_expect(image: str) -> None:
    """User 10001, the entrypoint, the contract's ports; a read-only root filesystem with only
    /tmp writable; no package manager, uv or sources inside."""
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert inspected["User"] == RUN_AS
    assert inspected["Entrypoint"] == ["scanner-auth"]
    assert set(inspected["ExposedPorts"]) == {f"{s.default_port}/tcp" for s in SERVICES.values()}
    probe = (
        "import os, importlib.util as u, shutil, tempfile\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/app/x', 'w')\nexcept OSError as e:\n    print('ro', e.errno)\n"
        "tempfile.NamedTemporaryFile(dir='/tmp').close(); print('tmp ok')\n"
        "print('pip', u.find_spec('pip') is not None, 'uv', shutil.which('uv'))\n"
        "print('sources', os.path.exists('/src'))\n"
    )
    done = podman(
        "run", "--rm", *LOCKED_DOWN, "--network", "none", "--entrypoint", "python", image,
        "-c", probe,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == [
        "10001 10001",
        "ro 30",  # EROFS
        "tmp ok",
        "pip False uv None",
        "sources False",
    ], done.stdout
    done = podman("run", "--rm", *LOCKED_DOWN, "--network", "none", image)
    assert done.returncode == 0 and "serve SERVICE" in done.stdout, done.stdout + done.stderr


def test_the_image_refuses_to_start_without_database_url(image: str) -> None:
    """The bug this image found: no DATABASE_URL fell back to a default address."""
    done = podman(
        "run", "--rm", *LOCKED_DOWN, "--network", "none",
        "--env", "KAFKA_BOOTSTRAP_SERVERS=kafka.invalid:9092", image, "serve", "scan-ingest",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "DATABASE_URL is required" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# ------------------------------------------------------------------------------ each service


def _one_request(service: str, url: str, env: Environment) -> None:
    """One request of the service's kind, which needs its migrated schema."""
    if service == "token-issuer":
        token = env.identity.mint("u-admin", "org-x", ["admin"], "admin@x.example")
        r = httpx.get(f"{url}/v1/scanners", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == [], r.text  # an empty directory
    elif service == "redeemer":
        r = httpx.post(
            f"{url}/v1/authorisations", json={"code": "YD20-66YF-H255", "serial_number": "S-1"}
        )
        assert r.status_code == 400, r.text  # well formed, unknown: the uniform refusal
    elif service == "scan-ingest":
        r = httpx.post(f"{url}/v1/scans", json={"volume_m3": 1.0})
        assert r.status_code == 401, r.text  # no credential: the gate refuses
    else:  # the notifier serves nothing but health and metrics; the journey sends its mail
        r = httpx.get(f"{url}/metrics")
        assert r.status_code == 200 and "scanner_auth_notifier" in r.text


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_migrates_then_serves_from_the_image(
    image: str, environment: Environment, containers: list[ContainerService], service: str
) -> None:
    env = environment.service_env(service, MIGRATE_ON_START="false")

    # The init container: same image, same environment, read-only, uid 10001.
    migrate = ContainerService.of(service, image, env, environment.logs, command="migrate")
    containers.append(migrate)
    started = time.monotonic()
    assert migrate.run() == 0, migrate.log()
    _record(f"{service} migrate", time.monotonic() - started)
    assert f"{service}: migrations applied" in migrate.log()

    # The service's container, migrations off.
    serve = ContainerService.of(service, image, env, environment.logs)
    containers.append(serve)
    _record(f"{service} start to ready", _start(serve))
    assert _ok(f"{serve.url}/healthz") and _ok(f"{serve.url}/readyz")
    _one_request(service, serve.url, environment)

    code, took = _stop(serve)
    _record(f"{service} stop", took)
    assert code == 0, f"{service}: exit {code} on SIGTERM (137: killed after the grace)"
    for secret in environment.secrets():
        assert secret not in serve.log() + migrate.log(), f"{service}: a secret in its output"


# ------------------------------------------------------------------------------ the journey


def _consumed(url: str, consumer: str, outcomes: tuple[str, ...] = ("applied",)) -> float:
    """Messages the service's consumer finished with (its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "scanner_auth_events_consumed_total"
        and sample.labels.get("consumer") == consumer
        and sample.labels.get("outcome") in outcomes
    )


def test_the_journey_across_the_four_containers(
    image: str, environment: Environment, containers: list[ContainerService]
) -> None:
    """Directory events → an admin's code → the code emailed → redeemed by the scanner → a scan
    accepted; each service from the image, migrating at start (the default)."""
    services = {
        name: ContainerService.of(name, image, environment.service_env(name), environment.logs)
        for name in SERVICES
    }
    containers.extend(services.values())
    started = time.monotonic()
    for container in services.values():
        container.start()
    for container in services.values():
        wait_until(container.ready, START_TIMEOUT, f"{container.name} ready", every=0.2)
    _record("four services start to ready", time.monotonic() - started)

    demo = DemoDirectory()
    asyncio.run(publish_events(environment.kafka.bootstrap, DIRECTORY_TOPIC, *demo.events()))
    stack = Stack(
        environment.logs, identity=environment.identity, mail=environment.mail_sink,
        services=dict(services),
    )  # fmt: skip
    system = System(stack)
    scanner = demo.scanners[0]
    sid = scanner.scanner_id

    with system.as_user("ADMIN_JWT") as admin:
        wait_until(
            lambda: admin.get(f"/v1/scanners/{sid}/authorisation").status_code == 200,
            60,
            "the directory reached the token-issuer",
        )
    token = system.generate_token(sid)
    code = token["code"]

    with system.as_user("ADMIN_JWT") as admin:
        r = admin.post(
            f"/v1/scanners/{sid}/authorisation-token/email", json={"recipient_user_id": "u-bob"}
        )
        assert r.status_code == 202, r.text
    mails = wait_until(
        lambda: environment.mail_sink.to("bob@quarry.example"), 60, "the email at the sink"
    )
    parts = mails[0].parts()
    assert code in parts["text/plain"] and code in parts["text/html"]

    # The redeemer knows a scanner's serial number from the directory, and a code from
    # TokenIssued, the first event on the public topic.
    directory_events = len(demo.events())
    wait_until(
        lambda: (
            _consumed(
                services["redeemer"].url, "redeemer.directory", ("applied", "ignored", "duplicate")
            )
            >= directory_events
        ),
        60,
        "the redeemer consumed the directory",
    )
    wait_until(
        lambda: _consumed(services["redeemer"].url, "redeemer.authorisation") >= 1,
        60,
        "the redeemer consumed TokenIssued",
    )
    r = system.redeem(code, scanner.serial_number)
    assert r.status_code == 201, r.text
    credential = r.json()["credential"]

    wait_until(lambda: system.upload_status(credential) == 202, 10, "the gate opened")
    with system.device("scan-ingest", credential) as device:
        r = device.post("/v1/scans", json={"scan_id": "scan-image-1", "volume_m3": 3.5})
        assert r.status_code == 202, r.text
    asyncio.run(
        wait_for_events(
            environment.kafka.bootstrap,
            SCANS_TOPIC,
            "ScanIngested",
            match=lambda e: e.data.get("scan_id") == "scan-image-1",
            timeout=30,
        )
    )

    for name, container in services.items():
        _record(f"{name} memory after the journey", container.memory())
    for name, container in services.items():
        exit_code, took = _stop(container)
        _record(f"{name} stop after the journey", took)
        assert exit_code == 0, f"{name}: exit {exit_code} on SIGTERM"
    logs = system.logs()
    for secret in [*environment.secrets(), code, code.replace("-", ""), credential]:
        assert secret not in logs, "a secret in a container's output"
