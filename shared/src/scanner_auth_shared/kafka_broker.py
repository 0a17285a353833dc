"""Apache Kafka on this machine, from Maven Central's jars: KRaft brokers for the tests, the
benchmarks and `scanner-auth dev --kafka apache`. No Docker.

`tools/kafka/pom.xml` pins the version; `make kafka` (a prerequisite of `make test`) resolves its
jars once into `.tools/kafka/lib`. `ApacheKafka` formats each node's storage in a folder of its
own and starts it from that classpath on free loopback ports:

- `ApacheKafka(root)`: one node, broker and controller in one process: the tests' shared broker.
- `ApacheKafka(root, brokers=3)`: a dedicated controller and three brokers, the contract's topics
  created with the production settings of `deploy/k8s/topics` (replication 3,
  `min.insync.replicas` 2): the broker-fault tests. A dedicated controller keeps the metadata
  quorum alive while brokers are killed, so that what is measured is the brokers' replication.
- `scram_users`: a SASL/SCRAM-SHA-512 client listener with the KRaft `StandardAuthorizer`
  (`allow.everyone.if.no.acl.found=false`: a principal may do only what an ACL grants it); the
  internal listener (inter-broker, and the operator's ANONYMOUS super user, `internal_bootstrap`,
  through which ACLs are created) stays plaintext on loopback. `tls=True` makes the client
  listener SASL_SSL: a CA and a broker certificate (127.0.0.1, localhost) are made at format
  time, the broker reads them as a PEM key store, clients verify it with `ca_file`.

Nodes can be killed (SIGKILL), stopped and started again with their data, or paused (SIGSTOP).
Nothing here runs at import time; dev and tests only (not in the image).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .infra import free_port, wait_for_port

KAFKA_VERSION = "4.1.1"  # keep in step with tools/kafka/pom.xml
CONTROLLER_ID = 100
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
T = TypeVar("T")


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot be started here; the message says what is missing and what to do."""


# ------------------------------------------------------------------------------ the classpath


def repository_root() -> Path | None:
    """The checkout this package was installed from (editable), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "tools" / "kafka" / "pom.xml").exists():
            return parent
    cwd = Path.cwd()
    return cwd if (cwd / "tools" / "kafka" / "pom.xml").exists() else None


def kafka_lib(fetch: bool = True) -> Path:
    """The folder of Kafka's jars: `SCANNER_AUTH_KAFKA_LIB`, else `.tools/kafka/lib` of the
    checkout, resolved with Maven on first use when `fetch` (what `make kafka` does)."""
    if configured := os.environ.get("SCANNER_AUTH_KAFKA_LIB"):
        lib = Path(configured)
        if not _complete(lib):
            raise KafkaUnavailable(f"SCANNER_AUTH_KAFKA_LIB={lib} holds no Kafka {KAFKA_VERSION}")
        return lib
    root = repository_root()
    if root is None:
        raise KafkaUnavailable(
            "no tools/kafka/pom.xml found: run from a scanner-auth checkout, or set "
            "SCANNER_AUTH_KAFKA_LIB to a folder of Kafka's jars"
        )
    lib = root / ".tools" / "kafka" / "lib"
    if _complete(lib):
        return lib
    if not fetch:
        raise KafkaUnavailable(f"Kafka's jars are not in {lib}: run `make kafka`")
    fetch_jars(root / "tools" / "kafka" / "pom.xml", lib)
    return lib


def _complete(lib: Path) -> bool:
    return (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").exists() and (lib / ".complete").exists()


def fetch_jars(pom: Path, lib: Path) -> None:
    """`mvn dependency:copy-dependencies` of `pom` into `lib` (about 55 MB, once)."""
    require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(
            "Maven is missing: install it (`apt-get install maven`) or run `make kafka`"
        )
    partial = lib.with_name(lib.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not (partial / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise KafkaUnavailable(
            f"Maven could not fetch Apache Kafka {KAFKA_VERSION} from Maven Central "
            f"(exit {result.returncode}):\n" + "\n".join(tail)
        )
    (partial / ".complete").write_text(KAFKA_VERSION + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaUnavailable(
            "Java is missing (Apache Kafka needs Java 17 or newer): install it "
            "(`apt-get install default-jre-headless`) or run `make kafka`"
        )
    return java


# ------------------------------------------------------------------------------ nodes


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replicas: int
    config: dict[str, str] = field(default_factory=dict)


def production_topics(path: Path | None = None) -> list[TopicSpec]:
    """The topics of `deploy/k8s/topics/topics.yaml` (Strimzi KafkaTopic resources)."""
    import yaml

    if path is None:
        root = repository_root()
        if root is None:
            return []
        path = root / "deploy" / "k8s" / "topics" / "topics.yaml"
    specs = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "KafkaTopic":
            continue
        spec = doc["spec"]
        specs.append(
            TopicSpec(
                spec["topicName"],
                int(spec["partitions"]),
                int(spec["replicas"]),
                {k: str(v) for k, v in (spec.get("config") or {}).items()},
            )
        )
    return specs


@dataclass
class KafkaNode:
    node_id: int
    roles: str  # "broker,controller", "broker" or "controller"
    folder: Path
    client_port: int | None  # None for a controller
    internal_port: int | None
    controller_port: int | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def is_broker(self) -> bool:
        return "broker" in self.roles

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None


class ApacheKafka:
    """Apache Kafka in KRaft mode: one combined node, or a controller and `brokers` brokers."""

    def __init__(
        self,
        root: Path,
        *,
        brokers: int = 1,
        topics: Iterable[TopicSpec] | None = None,
        scram_users: dict[str, str] | None = None,
        tls: bool = False,
        heap: str = "512m",
        fast_jit: bool = True,
        settings: dict[str, str] | None = None,
    ) -> None:
        """`topics`: created at start (default: the production topics, replication capped at
        the number of brokers). `fast_jit`: the C1 compiler only, which starts a JVM in about
        half the time and is what tests want; benchmarks turn it off. `settings`: extra broker
        properties. `scram_users` (name: password) and `tls`: see the module's docstring."""
        if tls and not scram_users:
            raise ValueError("tls=True secures the SASL client listener: give scram_users too")
        self.root = root
        self.brokers_count = brokers
        self.topics = list(topics) if topics is not None else production_topics()
        self.scram_users = dict(scram_users or {})
        self.tls = tls
        self.heap = heap
        self.fast_jit = fast_jit
        self.extra = dict(settings or {})
        self.cluster_id = _cluster_id()
        self.lib = kafka_lib()
        self.java = require_java()
        self.nodes: list[KafkaNode] = []
        if brokers == 1:
            self.nodes.append(self._node(1, "broker,controller"))
        else:
            self.nodes.append(self._node(CONTROLLER_ID, "controller"))
            self.nodes += [self._node(i, "broker") for i in range(1, brokers + 1)]
        self._formatted = False

    def _node(self, node_id: int, roles: str) -> KafkaNode:
        broker = "broker" in roles
        controller = "controller" in roles
        return KafkaNode(
            node_id=node_id,
            roles=roles,
            folder=self.root / f"node-{node_id}",
            client_port=free_port() if broker else None,
            internal_port=free_port() if broker and self.scram_users else None,
            controller_port=free_port() if controller else None,
        )

    # -------------------------------------------------------------------- what clients see

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.client_port}" for n in self.brokers)

    @property
    def internal_bootstrap(self) -> str:
        """The operator's listener: plaintext, super user, loopback (ACL management, tests)."""
        ports = [n.internal_port or n.client_port for n in self.brokers]
        return ",".join(f"127.0.0.1:{p}" for p in ports)

    @property
    def security_protocol(self) -> str:
        """What a client of `bootstrap` sets as KAFKA_SECURITY_PROTOCOL."""
        if not self.scram_users:
            return "PLAINTEXT"
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate (PEM) that signed the brokers' certificate, with `tls`."""
        return self.root / "tls" / "ca.crt" if self.tls else None

    @property
    def brokers(self) -> list[KafkaNode]:
        return [n for n in self.nodes if n.is_broker]

    @property
    def description(self) -> str:
        return self.describe(
            brokers=self.brokers_count, secured=bool(self.scram_users), tls=self.tls
        )

    @staticmethod
    def describe(*, brokers: int, secured: bool = False, tls: bool = False) -> str:
        shape = "1 node" if brokers == 1 else f"a controller and {brokers} brokers"
        auth = (", TLS" if tls else "") + (", SASL/SCRAM and ACLs" if secured else "")
        return f"Apache Kafka {KAFKA_VERSION} (KRaft, {shape}{auth})"

    def broker(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    # -------------------------------------------------------------------- life

    def start(self, timeout: float = 120) -> ApacheKafka:
        started = time.monotonic()
        if not self._formatted:
            self._format()
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._wait_listening(node, started + timeout)
        run_sync(self._wait_ready(started + timeout))
        return self

    def stop(self) -> None:
        """Every node: SIGTERM (a controlled shutdown), SIGKILL after 20 s."""
        for node in self.brokers:
            self.stop_node(node.node_id, wait=False)
        for node in self.nodes:
            self._reap(node)
        for node in self.nodes:
            if node.running:
                self.stop_node(node.node_id)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def kill_node(self, node_id: int) -> None:
        node = self.broker(node_id)
        if node.proc is not None and node.running:
            node.proc.send_signal(signal.SIGCONT)
            node.proc.kill()
            node.proc.wait(10)

    def stop_node(self, node_id: int, *, wait: bool = True) -> None:
        node = self.broker(node_id)
        if node.proc is None or not node.running:
            return
        node.proc.send_signal(signal.SIGCONT)
        node.proc.terminate()
        if wait:
            self._reap(node)

    def _reap(self, node: KafkaNode) -> None:
        if node.proc is None:
            return
        try:
            node.proc.wait(20)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)

    def start_node(self, node_id: int, timeout: float = 60) -> None:
        """Start a stopped or killed node again, with the data it had."""
        node = self.broker(node_id)
        if node.running:
            return
        self._launch(node)
        self._wait_listening(node, time.monotonic() + timeout)

    def pause_node(self, node_id: int) -> None:
        node = self.broker(node_id)
        if node.proc is not None and node.running:
            node.proc.send_signal(signal.SIGSTOP)

    def resume_node(self, node_id: int) -> None:
        node = self.broker(node_id)
        if node.proc is not None and node.running:
            node.proc.send_signal(signal.SIGCONT)

    def pause(self) -> None:
        """Every node stops answering (SIGSTOP), as a frozen or partitioned cluster."""
        for node in self.nodes:
            self.pause_node(node.node_id)

    def resume(self) -> None:
        for node in self.nodes:
            self.resume_node(node.node_id)

    def memory_mb(self) -> float:
        """Resident memory of every running node, from /proc."""
        total = 0
        for node in self.nodes:
            if node.pid is None:
                continue
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    # -------------------------------------------------------------------- what runs

    def _properties(self, node: KafkaNode) -> dict[str, str]:
        voters = ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}"
            for n in self.nodes
            if n.controller_port is not None
        )
        replicas = min(3, self.brokers_count)
        props = {
            "process.roles": node.roles,
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.folder / "data"),
            # Tests join groups all the time: no waiting for more members to arrive.
            "group.initial.rebalance.delay.ms": "0",
            # ... and consumers with short sessions (tests use 3 s; the default floor is 6 s).
            "group.min.session.timeout.ms": "1000",
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, replicas)),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(min(2, replicas)),
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(2, replicas)),
            # The directory's topic is not ours to declare: auto-created as the directory's
            # broker would have it.
            "auto.create.topics.enable": "true",
            "num.partitions": "6",
            "unclean.leader.election.enable": "false",
            # A dead broker is noticed in seconds, not the default 9 s / 30 s: fault tests wait
            # for leadership to move and for the ISR to shrink.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "replica.lag.time.max.ms": "6000",
            "controlled.shutdown.enable": "true",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.check.interval.ms": "300000",
            "message.max.bytes": str(2 * 1024 * 1024 + 1024),
            "replica.fetch.max.bytes": str(2 * 1024 * 1024 + 1024),
        }
        if node.is_broker:
            listeners = [f"CLIENT://127.0.0.1:{node.client_port}"]
            protocols = ["CONTROLLER:PLAINTEXT"]
            advertised = [f"CLIENT://127.0.0.1:{node.client_port}"]
            if self.scram_users:
                listeners.append(f"INTERNAL://127.0.0.1:{node.internal_port}")
                advertised.append(f"INTERNAL://127.0.0.1:{node.internal_port}")
                protocols += [f"CLIENT:{self.security_protocol}", "INTERNAL:PLAINTEXT"]
                props.update(
                    {
                        "inter.broker.listener.name": "INTERNAL",
                        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                        "listener.name.client.scram-sha-512.sasl.jaas.config": SCRAM_LOGIN,
                    }
                )
                if self.tls:
                    # Kafka 3.0+ reads PEM key stores: the key (PKCS#8) and its chain, one file.
                    keystore = self.root / "tls" / "broker.pem"
                    props.update(
                        {
                            "listener.name.client.ssl.keystore.type": "PEM",
                            "listener.name.client.ssl.keystore.location": str(keystore),
                            "listener.name.client.ssl.client.auth": "none",
                        }
                    )
            else:
                protocols.append("CLIENT:PLAINTEXT")
                props["inter.broker.listener.name"] = "CLIENT"
            if node.controller_port is not None:
                listeners.append(f"CONTROLLER://127.0.0.1:{node.controller_port}")
            props["listeners"] = ",".join(listeners)
            props["advertised.listeners"] = ",".join(advertised)
            props["listener.security.protocol.map"] = ",".join(protocols)
        else:
            props["listeners"] = f"CONTROLLER://127.0.0.1:{node.controller_port}"
            props["listener.security.protocol.map"] = "CONTROLLER:PLAINTEXT"
        if self.scram_users:
            props.update(
                {
                    "authorizer.class.name": AUTHORIZER,
                    # The controller and inter-broker listeners (plaintext, loopback) act as
                    # ANONYMOUS; everyone else needs an ACL.
                    "super.users": "User:ANONYMOUS",
                    "allow.everyone.if.no.acl.found": "false",
                }
            )
        props.update(self.extra)
        return props

    def _format(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tls:
            write_tls_material(self.root / "tls", hosts=["127.0.0.1", "localhost"])
        scram = [
            f"SCRAM-SHA-512=[name={name},password={password}]"
            for name, password in self.scram_users.items()
        ]
        for node in self.nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            config = node.folder / "server.properties"
            config.write_text("".join(f"{k}={v}\n" for k, v in self._properties(node).items()))
            command = [
                self.java,
                *self._jvm(),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(config),
                "--ignore-formatted",
            ]
            for entry in scram if "controller" in node.roles else ():
                command += ["--add-scram", entry]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise KafkaUnavailable(
                    f"formatting node {node.node_id} failed: "
                    f"{(result.stdout + result.stderr).strip()[-2000:]}"
                )
        self._formatted = True

    def _jvm(self) -> list[str]:
        options = [
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-Xss512k",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            _log_config(),
            "-cp",
            f"{self.lib}/*",
        ]
        if self.fast_jit:
            options.insert(0, "-XX:TieredStopAtLevel=1")
        return options

    def _launch(self, node: KafkaNode) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                [self.java, *self._jvm(), "kafka.Kafka", str(node.folder / "server.properties")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: signals reach it only
            )

    def _wait_listening(self, node: KafkaNode, deadline: float) -> None:
        port = node.client_port or node.controller_port
        assert port is not None
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                raise KafkaUnavailable(
                    f"Kafka node {node.node_id} exited with {node.proc.returncode}:\n"
                    + _tail(node.log_path)
                )
            try:
                wait_for_port(port, 0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"Kafka node {node.node_id} not listening on {port}:\n"
                        + _tail(node.log_path)
                    ) from None

    async def _wait_ready(self, deadline: float) -> None:
        """Every broker registered, then the topics created (idempotent)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        while True:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.internal_bootstrap, request_timeout_ms=5000
            )
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if len(cluster.get("brokers", [])) >= self.brokers_count:
                    if self.topics:
                        await self._create_topics(admin, NewTopic, TopicAlreadyExistsError)
                    if await self._leaders_elected(admin):
                        return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            finally:
                await admin.close()
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"{self.description} not ready in time")
            await asyncio.sleep(0.2)

    async def _leaders_elected(self, admin: Any) -> bool:
        """Every partition of the topics created has a leader (a fresh topic takes a moment)."""
        names = [spec.name for spec in self.topics]
        if not names:
            return True
        described = await admin.describe_topics(names)
        return all(
            t["error_code"] == 0 and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        )

    async def _create_topics(self, admin: Any, new_topic: Any, exists: type[Exception]) -> None:
        existing = set(await admin.list_topics())
        wanted = [
            new_topic(
                spec.name,
                spec.partitions,
                min(spec.replicas, self.brokers_count),
                topic_configs={
                    **spec.config,
                    "min.insync.replicas": str(
                        min(
                            int(spec.config.get("min.insync.replicas", "1")),
                            max(1, self.brokers_count - 1),
                        )
                    ),
                },
            )
            for spec in self.topics
            if spec.name not in existing
        ]
        if wanted:
            with contextlib.suppress(exists):
                await admin.create_topics(wanted, timeout_ms=30_000)


def write_tls_material(folder: Path, hosts: Iterable[str]) -> None:
    """A CA (`ca.crt`) and a server certificate for `hosts` (IP addresses or DNS names) signed
    by it, with its key: `server.key`, `server.crt` (the certificate then the CA) and
    `broker.pem` (the key then that chain: Kafka's PEM key store). EC P-256, valid for a week;
    files readable by this user only. Tests and dev only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanner-auth test CA")])
    signing_only = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(signing_only, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanner-auth test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain = cert.public_bytes(pem) + ca.public_bytes(pem)
    files = {
        "ca.crt": ca.public_bytes(pem),
        "server.key": key_pem,
        "server.crt": chain,
        "broker.pem": key_pem + chain,
    }
    for name, content in files.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from sync code, even when an event loop runs in this thread
    (a sync fixture of an async test): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _log_config() -> str:
    """tools/kafka/log4j2.properties (quiet), or log4j's own default at WARN."""
    root = repository_root()
    config = root / "tools" / "kafka" / "log4j2.properties" if root is not None else None
    if config is not None and config.exists():
        return f"-Dlog4j2.configurationFile={config}"
    return "-Dlog4j2.level=WARN"


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding, as Kafka's own
    `Uuid.randomUuid()` makes them: never starting with "-", which the storage tool's argument
    parser would read as an option (one id in 64 otherwise)."""
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run_tool(main_class: str, *args: str, timeout: float = 300) -> str:
    """A Kafka command-line tool from the same jars (e.g. ProducerPerformance); its stdout."""
    lib = kafka_lib()
    result = subprocess.run(
        [require_java(), "-Xmx512m", "-cp", f"{lib}/*", main_class, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{main_class} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


__all__ = [
    "KAFKA_VERSION",
    "ApacheKafka",
    "KafkaNode",
    "KafkaUnavailable",
    "TopicSpec",
    "kafka_lib",
    "production_topics",
    "run_sync",
    "run_tool",
    "write_tls_material",
]


if __name__ == "__main__":  # `make kafka`: fetch the jars (once) and say where they are
    import sys

    try:
        print(f"Apache Kafka {KAFKA_VERSION}: {kafka_lib()}")
    except KafkaUnavailable as exc:
        print(f"Apache Kafka {KAFKA_VERSION} is not available: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
