"""Fixtures of the token-issuer's tests: the use cases in memory (unit), running services on real
PostgreSQL and a real broker (integration), a directory of two organisations, and a guard that no
code ever reaches a log line."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanner_auth_shared.logs import JsonFormatter
from scanner_auth_shared.testing.identity import TestIdentity
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS
from token_issuer.app import build
from token_issuer.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))

from memory_world import World
from token_issuer_support import Harness, code_forms, directory_of_two_orgs


@pytest.fixture
def world() -> World:
    """The use cases over the memory fakes, with an empty directory."""
    return World()


@pytest.fixture
async def orgs(world: World) -> World:
    """`world` with the directory of two organisations applied."""
    await world.apply(*directory_of_two_orgs())
    return world


@pytest.fixture
def make_settings(
    database_url: str, kafka: Any, identity: TestIdentity, test_secrets: Any
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "kafka_bootstrap_servers": kafka.bootstrap,
            "auth_public_key_pem": identity.public_pem,
            "auth_issuer": identity.issuer,
            "auth_audience": identity.audience,
            "token_pepper": test_secrets.pepper,
            "sealing_key": test_secrets.sealing_key,
            "code_encryption_key": test_secrets.code_key,
            "expiry_sweep_interval_seconds": 0.2,
            **FAST_CONSUMERS,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Every log record at DEBUG and up, also rendered by the production JSON formatter."""
    caplog.set_level(logging.DEBUG)
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter("token-issuer"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield sink
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def make_service(
    make_settings: Callable[..., Settings],
    identity: TestIdentity,
    kafka: Any,
    database_url: str,
    log_lines: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> AsyncIterator[Callable[..., Any]]:
    """Start token-issuer runtimes (several may share the database). At the end: no code any
    of them handed out appears in a log record, a JSON log line, stdout or stderr."""
    harnesses: list[Harness] = []

    async def start(**overrides: Any) -> Harness:
        settings = make_settings(**overrides)
        runtime = build(settings)
        await runtime.start()
        harness = Harness(runtime, settings, identity, kafka.bootstrap, database_url)
        harnesses.append(harness)
        return harness

    try:
        yield start
    finally:
        for harness in reversed(harnesses):
            await harness.client.aclose()
            await harness.runtime.stop()
    codes = set().union(*(h.codes for h in harnesses)) if harnesses else set()
    out, err = capfd.readouterr()
    texts = {"json log lines": log_lines.getvalue(), "stdout": out, "stderr": err}
    # Raw records, before the JSON formatter's redaction (the second line of defence) ran.
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    assert records  # the capture works
    for n, record in enumerate(records):
        texts[f"log record {n} ({record.name})"] = record.getMessage() + repr(vars(record))
    leaks = [
        where
        for where, text in texts.items()
        for code in codes
        for form in code_forms(code)
        if form in text
    ]
    assert not leaks, f"an authorisation code reached: {leaks}"
    assert len(texts["json log lines"]) > 0  # the capture works


@pytest.fixture
async def service(make_service: Callable[..., Any]) -> Harness:
    harness: Harness = await make_service()
    return harness


@pytest.fixture
async def two_orgs(service: Harness) -> Harness:
    await service.directory(*directory_of_two_orgs())
    return service
