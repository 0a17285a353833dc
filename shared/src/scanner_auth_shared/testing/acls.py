"""Kafka ACLs from the deployment's Strimzi KafkaUser resources, applied to a test broker.

`deploy/k8s/users/` holds one KafkaUser per service, `deploy/k8s/users/other-teams/` the
directory's and an example reader's: the one source of who may do what on Kafka. The tests read
them here (never a copy), give each user SCRAM-SHA-512 credentials on a secured Apache Kafka
(`kafka_broker.ApacheKafka(scram_users=..., tls=True)`) and create their ACLs through the broker's
super-user listener as Strimzi's User Operator creates them (one ACL per operation, principal
`User:<name>`, host `*` unless given; the user's ACLs replaced as a whole). `allows` evaluates
the same rules without a broker, as Kafka's StandardAuthorizer does, for the offline checks of
tests/deploy. Tests only.
"""

from __future__ import annotations

import secrets
import ssl
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import ALL_TOPICS, DIRECTORY_TOPIC
from ..kafka_broker import (
    ApacheKafka,
    KafkaUnavailable,
    TopicSpec,
    production_topics,
    repository_root,
)

# Strimzi's operation names and what each is called in Kafka's API (confluent-kafka's enums, from
# their defining modules: confluent_kafka.admin re-exports them implicitly only).
OPERATIONS = {
    "Read": "READ",
    "Write": "WRITE",
    "Create": "CREATE",
    "Delete": "DELETE",
    "Alter": "ALTER",
    "Describe": "DESCRIBE",
    "ClusterAction": "CLUSTER_ACTION",
    "AlterConfigs": "ALTER_CONFIGS",
    "DescribeConfigs": "DESCRIBE_CONFIGS",
    "IdempotentWrite": "IDEMPOTENT_WRITE",
    "All": "ALL",
}
RESOURCE_TYPES = {
    "topic": "TOPIC",
    "group": "GROUP",
    "cluster": "BROKER",  # confluent-kafka's name of Kafka's CLUSTER resource
    "transactionalId": "TRANSACTIONAL_ID",
}
# Kafka's implications (AclAuthorizer / StandardAuthorizer): an ACL allowing one of these also
# allows Describe (DescribeConfigs for the Configs pair); All allows everything.
IMPLIES_DESCRIBE = {"Read", "Write", "Delete", "Alter"}
PATTERN_TYPES = {"literal": "LITERAL", "prefix": "PREFIXED"}
CLUSTER_NAME = "kafka-cluster"


@dataclass(frozen=True)
class AclRule:
    """One ACL of a KafkaUser, for one operation."""

    resource_type: str  # topic | group | cluster | transactionalId
    name: str  # a literal name, a prefix, or "*"
    pattern: str  # literal | prefix
    operation: str  # Strimzi's spelling: Read, Write, ...
    permission: str = "allow"  # allow | deny
    host: str = "*"

    def matches(self, resource_type: str, name: str) -> bool:
        if resource_type != self.resource_type:
            return False
        if resource_type == "cluster":
            return True
        if self.pattern == "prefix":
            return name.startswith(self.name)
        return self.name in ("*", name)

    def covers(self, operation: str) -> bool:
        """Whether this rule decides `operation`: its own operation or All; an allow of Read,
        Write, Delete or Alter also allows Describe, of AlterConfigs DescribeConfigs (Kafka's
        implications; a deny denies only what it names)."""
        if self.operation in ("All", operation):
            return True
        if self.permission == "deny":
            return False
        if operation == "Describe" and self.operation in IMPLIES_DESCRIBE:
            return True
        return operation == "DescribeConfigs" and self.operation == "AlterConfigs"


@dataclass(frozen=True)
class KafkaUser:
    """A Strimzi KafkaUser, as far as the broker sees it."""

    name: str
    authentication: str | None  # scram-sha-512 | tls | tls-external | None
    rules: tuple[AclRule, ...]
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None

    @property
    def principal(self) -> str:
        """Strimzi: `User:CN=<name>` for TLS users, `User:<name>` otherwise."""
        if self.authentication in ("tls", "tls-external"):
            return f"User:CN={self.name}"
        return f"User:{self.name}"


def parse_kafka_user(doc: Mapping[str, Any], source: Path | None = None) -> KafkaUser:
    """A KafkaUser document (kafka.strimzi.io/v1) as its rules, one per operation."""
    spec = doc.get("spec") or {}
    authorization = spec.get("authorization") or {}
    if authorization and authorization.get("type") != "simple":
        raise ValueError(f"{doc['metadata']['name']}: only `simple` authorization is understood")
    rules = []
    for acl in authorization.get("acls") or []:
        resource = acl["resource"]
        for operation in acl["operations"]:
            if operation not in OPERATIONS:
                raise ValueError(f"{doc['metadata']['name']}: unknown operation {operation}")
            rules.append(
                AclRule(
                    resource_type=resource["type"],
                    name=CLUSTER_NAME if resource["type"] == "cluster" else resource["name"],
                    pattern=resource.get("patternType", "literal"),
                    operation=operation,
                    permission=acl.get("type", "allow"),
                    host=acl.get("host", "*"),
                )
            )
    metadata = doc["metadata"]
    return KafkaUser(
        name=metadata["name"],
        authentication=(spec.get("authentication") or {}).get("type"),
        rules=tuple(rules),
        namespace=metadata.get("namespace"),
        labels=dict(metadata.get("labels") or {}),
        source=source,
    )


def users_folder() -> Path:
    root = repository_root()
    if root is None:
        raise FileNotFoundError("no scanner-auth checkout found: deploy/k8s/users is in it")
    return root / "deploy" / "k8s" / "users"


def kafka_users(folder: Path | None = None) -> dict[str, KafkaUser]:
    """Every KafkaUser in the YAML files under `folder` (default `deploy/k8s/users`, with
    `other-teams/`), by name. A name defined twice is refused (Strimzi would fight over it)."""
    import yaml

    folder = folder or users_folder()
    users: dict[str, KafkaUser] = {}
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "KafkaUser":
                continue
            user = parse_kafka_user(doc, path)
            if user.name in users:
                raise ValueError(f"KafkaUser {user.name} in {users[user.name].source} and {path}")
            users[user.name] = user
    return users


def service_user(users: Mapping[str, KafkaUser], service: str) -> KafkaUser:
    """The KafkaUser of one of the four services (label app.kubernetes.io/name)."""
    found = [
        u
        for u in users.values()
        if u.labels.get("app.kubernetes.io/name") == service
        and u.labels.get("app.kubernetes.io/part-of", "scanner-auth") == "scanner-auth"
        and u.name.startswith("scanner-auth-")
    ]
    if len(found) != 1:
        raise LookupError(f"expected one KafkaUser for {service}, found {[u.name for u in found]}")
    return found[0]


def allows(
    users: Iterable[KafkaUser], principal: str, resource_type: str, name: str, operation: str
) -> bool:
    """Whether the users' ACLs let `principal` do `operation` on the resource, as Kafka decides
    (no super user, allow.everyone.if.no.acl.found=false): some allow matches and no deny does."""
    rules = [
        r
        for u in users
        if u.principal == principal
        for r in u.rules
        if r.host == "*" and r.matches(resource_type, name) and r.covers(operation)
    ]
    if any(r.permission == "deny" for r in rules):
        return False
    return any(r.permission == "allow" for r in rules)


# ------------------------------------------------------------------------------ on a broker


def acl_bindings(user: KafkaUser) -> list[Any]:
    """The user's rules as confluent-kafka AclBindings."""
    from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
    from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

    return [
        AclBinding(
            ResourceType[RESOURCE_TYPES[rule.resource_type]],
            rule.name,
            ResourcePatternType[PATTERN_TYPES[rule.pattern]],
            user.principal,
            rule.host,
            AclOperation[OPERATIONS[rule.operation]],
            AclPermissionType[rule.permission.upper()],
        )
        for rule in user.rules
    ]


def _principal_filter(principal: str) -> Any:
    from confluent_kafka.admin._acl import AclBindingFilter, AclOperation, AclPermissionType
    from confluent_kafka.admin._resource import ResourcePatternType, ResourceType

    # None: any resource name, any host (librdkafka's filter; the stubs say str).
    return AclBindingFilter(
        ResourceType.ANY,
        None,  # type: ignore[arg-type]
        ResourcePatternType.ANY,
        principal,
        None,  # type: ignore[arg-type]
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def _binding_key(binding: Any) -> tuple[Any, ...]:
    return (
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


def apply_kafka_users(
    admin_bootstrap: str, users: Iterable[KafkaUser], *, timeout: float = 30.0
) -> None:
    """Make each user's ACLs on the broker exactly its rules, as the User Operator does: those
    of its principal not in the rules deleted, the missing ones created, through
    `admin_bootstrap` (the super user's listener). Returns once the broker describes them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": admin_bootstrap, "log_level": 3})
    try:
        for user in users:
            wanted = {_binding_key(b): b for b in acl_bindings(user)}
            described = admin.describe_acls(_principal_filter(user.principal)).result(timeout)
            present = {_binding_key(b): b for b in described}
            stale = [_exact_filter(b) for key, b in present.items() if key not in wanted]
            if stale:
                for future in admin.delete_acls(stale).values():
                    future.result(timeout)
            missing = [b for key, b in wanted.items() if key not in present]
            if missing:
                for future in admin.create_acls(missing).values():
                    future.result(timeout)
            deadline = time.monotonic() + timeout
            while True:
                described = admin.describe_acls(_principal_filter(user.principal)).result(timeout)
                if {_binding_key(b) for b in described} == set(wanted):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the broker does not describe {user.name}'s ACLs")
                time.sleep(0.1)
    finally:
        del admin


def _exact_filter(binding: Any) -> Any:
    from confluent_kafka.admin._acl import AclBindingFilter

    return AclBindingFilter(
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


# ------------------------------------------------------------------------------ a secured broker


@dataclass
class SecuredKafka:
    """Apache Kafka with SASL/SCRAM (over TLS when `tls`) and the StandardAuthorizer, each
    KafkaUser of the deployment a SCRAM user with its ACLs, and `strangers`: SCRAM users with
    no ACL at all."""

    broker: ApacheKafka
    users: dict[str, KafkaUser]
    passwords: dict[str, str]

    @property
    def bootstrap(self) -> str:
        """The client listener: SASL_SSL (or SASL_PLAINTEXT), every principal but the super
        user's."""
        return self.broker.bootstrap

    @property
    def admin_bootstrap(self) -> str:
        """The operator's listener: plaintext, loopback, super user (reads everything)."""
        return self.broker.internal_bootstrap

    def ssl_context(self) -> ssl.SSLContext | None:
        ca = self.broker.ca_file
        return ssl.create_default_context(cafile=str(ca)) if ca is not None else None

    def security(self, name: str, password: str | None = None) -> dict[str, Any]:
        """aiokafka client options (beside `bootstrap_servers=bootstrap`) of user `name`, with
        its password unless `password`."""
        options: dict[str, Any] = {
            "security_protocol": self.broker.security_protocol,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": name,
            "sasl_plain_password": self.passwords[name] if password is None else password,
        }
        if context := self.ssl_context():
            options["ssl_context"] = context
        return options

    def environment(self, name: str) -> dict[str, str]:
        """The KAFKA_* variables of a service that connects as user `name` (what the prod
        overlay sets)."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": self.broker.security_protocol,
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": name,
            "KAFKA_SASL_PASSWORD": self.passwords[name],
        }
        if self.broker.ca_file is not None:
            env["KAFKA_SSL_CAFILE"] = str(self.broker.ca_file)
        return env

    def stop(self) -> None:
        self.broker.remove()


def secured_topics() -> list[TopicSpec]:
    """The production topics and the directory's own (its team creates it: a secured broker
    lets no one auto-create it), one replica each."""
    topics = [TopicSpec(t.name, t.partitions, 1, t.config) for t in production_topics()]
    missing = set(ALL_TOPICS) - {t.name for t in topics} - {DIRECTORY_TOPIC}
    if missing:
        raise LookupError(f"deploy/k8s/topics/topics.yaml lacks {sorted(missing)}")
    return [*topics, TopicSpec(DIRECTORY_TOPIC, 6, 1)]


def start_secured_kafka(
    root: Path,
    *,
    users: Mapping[str, KafkaUser] | None = None,
    strangers: Iterable[str] = ("stranger",),
    tls: bool = True,
    timeout: float = 180,
    attempts: int = 2,
) -> SecuredKafka:
    """One secured Apache Kafka node in `root`: every user (default: the deployment's
    KafkaUsers) with a random SCRAM-SHA-512 password and its ACLs, and the `strangers` with a
    password and no ACL. A node that does not come up (KafkaUnavailable: on a machine shared
    with other test sessions, a free port chosen for it can be taken before it binds it) is
    started again from scratch on new ports, up to `attempts` times; the errors are kept."""
    users = dict(users if users is not None else kafka_users())
    passwords = {name: secrets.token_urlsafe(24) for name in [*users, *strangers]}
    failures: list[str] = []
    while True:
        broker = ApacheKafka(root, topics=secured_topics(), scram_users=passwords, tls=tls)
        try:
            broker.start(timeout=timeout)
            apply_kafka_users(broker.internal_bootstrap, users.values())
        except KafkaUnavailable as exc:
            broker.remove()
            failures.append(str(exc))
            if len(failures) >= attempts:
                raise KafkaUnavailable("\n--- then:\n".join(failures)) from exc
            warnings.warn(f"secured Kafka did not start, again: {exc}", stacklevel=2)
            continue
        except BaseException:
            broker.remove()
            raise
        return SecuredKafka(broker, users, passwords)


__all__ = [
    "AclRule",
    "KafkaUser",
    "SecuredKafka",
    "acl_bindings",
    "allows",
    "apply_kafka_users",
    "kafka_users",
    "parse_kafka_user",
    "secured_topics",
    "service_user",
    "start_secured_kafka",
]
