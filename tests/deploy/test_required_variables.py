"""Every variable a service requires is refused by name when it is missing: `scanner-auth serve
<service>` with that one variable removed from an otherwise complete environment exits 2 before
it connects to anything, and its message names the variable and repeats no secret.

REQUIRED is the contract's configuration table (shared/product/contract.md, "Configuration");
a test checks it against what each service's Settings class requires, so that neither can
drift from the other.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from scanner_auth.services import SERVICES
from scanner_auth_shared.settings import ConfigurationError, load_settings
from scanner_auth_shared.testing.identity import TestIdentity

# The table's checks are unit tests; the refusals start real processes (integration).

COMMON = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")  # every service here keeps state
REQUIRED: dict[str, tuple[str, ...]] = {
    "token-issuer": (
        *COMMON,
        # One of AUTH_JWKS_URL and AUTH_PUBLIC_KEY_PEM; the complete environment uses the key.
        "AUTH_PUBLIC_KEY_PEM",
        "AUTH_ISSUER",
        "AUTH_AUDIENCE",
        "TOKEN_PEPPER",
        "SEALING_KEY",
        "CODE_ENCRYPTION_KEY",
    ),
    "redeemer": (*COMMON, "TOKEN_PEPPER"),
    "scan-ingest": COMMON,
    "notifier": (*COMMON, "SEALING_KEY"),
}
# Required as one of a group (a validator, not a field without default).
ONE_OF = {"token-issuer": {"AUTH_PUBLIC_KEY_PEM", "AUTH_JWKS_URL"}}
SECRETS = ("TOKEN_PEPPER", "SEALING_KEY", "CODE_ENCRYPTION_KEY", "DATABASE_URL")

CASES = [(service, variable) for service, names in REQUIRED.items() for variable in names]


def complete_environment(service: str) -> dict[str, str]:
    """What the service needs, and nothing it would reach: the addresses are .invalid."""
    identity = TestIdentity()
    values = {
        "DATABASE_URL": f"postgresql+asyncpg://svc:{secrets.token_urlsafe(16)}"
        "@postgres.invalid:5432/svc",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka.invalid:9092",
        "AUTH_PUBLIC_KEY_PEM": identity.public_pem,
        "AUTH_ISSUER": identity.issuer,
        "AUTH_AUDIENCE": identity.audience,
        "TOKEN_PEPPER": secrets.token_urlsafe(48),
        "SEALING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CODE_ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    fields = {name.upper() for name in SERVICES[service].settings_class().model_fields}
    return {name: value for name, value in values.items() if name in fields}


def _process_environment(service_env: dict[str, str]) -> dict[str, str]:
    # Nothing from this process's environment but what finds Python: a variable set here (a
    # developer's KAFKA_BOOTSTRAP_SERVERS, say) must not complete the service's configuration.
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, **service_env, "LOG_LEVEL": "INFO"}


@pytest.mark.unit
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_table_is_what_each_service_requires(service: str) -> None:
    fields = SERVICES[service].settings_class().model_fields
    required = {name.upper() for name, info in fields.items() if info.is_required()}
    listed = set(REQUIRED[service])
    alternatives = ONE_OF.get(service, set())
    assert required <= listed, f"{service} requires {sorted(required - listed)}: add them here"
    assert listed - required <= alternatives, f"{service} does not require {listed - required}"


@pytest.mark.unit
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_complete_environment_is_accepted(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the refusals below: with nothing removed, the settings load."""
    cls: Any = SERVICES[service].settings_class()
    for name in cls.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in complete_environment(service).items():
        monkeypatch.setenv(name, value)
    try:
        load_settings(cls)
    except ConfigurationError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"{service}: the complete environment is refused: {exc}")


@dataclass(frozen=True)
class Refusal:
    returncode: int
    stdout: str
    stderr: str
    secret_values: dict[str, str]


def _serve_without(service: str, variable: str) -> Refusal:
    env = complete_environment(service)
    secret_values = {name: env[name] for name in SECRETS if name in env}
    del env[variable]
    done = subprocess.run(
        [sys.executable, "-m", "scanner_auth", "serve", service],
        env=_process_environment(env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return Refusal(done.returncode, done.stdout, done.stderr, secret_values)


@pytest.fixture(scope="module")
def refusals() -> dict[tuple[str, str], Refusal]:
    """Every case at once, as many processes at a time as there are cores (each spends its
    ~2 s importing; none waits for anything)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {case: pool.submit(_serve_without, *case) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.integration
@pytest.mark.parametrize(("service", "variable"), CASES, ids=[f"{s}-{v}" for s, v in CASES])
def test_serve_refuses_to_start_without_a_required_variable(
    refusals: dict[tuple[str, str], Refusal], service: str, variable: str
) -> None:
    done = refusals[(service, variable)]
    output = done.stdout + done.stderr
    leaked = [name for name, value in done.secret_values.items() if value in output]
    assert not leaked, f"the value of {leaked} appears in the output"
    assert done.returncode == 2, f"{service} without {variable}: exit {done.returncode}\n{output}"
    assert variable in done.stderr, f"the message does not name {variable}:\n{done.stderr}"
    assert "Traceback" not in output, output
