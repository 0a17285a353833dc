"""All four services as processes (`scanner-auth serve`), on embedded PostgreSQL, Apache Kafka
and an SMTP sink: `system` runs one process per service; `replicated_system` two per service,
each service behind its round-robin front (a Kubernetes Service, `scanner_auth.proxy`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from scanner_auth.devstack import LOAD_QUOTAS, Stack, System, merged_env

# Of many concurrent redemptions of one code exactly one may succeed (the contract): the
# replicated stack proves it over both redeemers with 50 attempts from one scanner, so the
# brute-force lockouts (5 failures per serial number, 30 per address) would answer most of them
# 429 before the race is judged. They are raised there, as in the redeemer's own race test
# (services/redeemer/tests/test_redeem.py, NO_THROTTLE); the load of tests/faults keeps them.
# The replica tests also email one code many times: the quotas raised too.
REPLICATED_ENV = merged_env(
    LOAD_QUOTAS,
    {"redeemer": {"SERIAL_LOCKOUT_FAILURES": "1000", "ADDRESS_LOCKOUT_FAILURES": "1000"}},
)
# test_graceful_shutdown.py emails one code to one address every 0.25 s and rotates a
# credential in a loop through a restart: above the hourly quotas.
SYSTEM_ENV = merged_env(LOAD_QUOTAS)  # a copy: a Stack adds to its extra_env


@pytest.fixture(scope="module")
def system(private_tmp: Any) -> Iterator[System]:
    stack = Stack(private_tmp("stack"), extra_env=SYSTEM_ENV)
    try:
        stack.start_infrastructure()
        stack.start_services()
        sys_ = System(stack)
        stack.publish(*sys_.demo.events())
        yield sys_
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def replicated_system(private_tmp: Any) -> Iterator[System]:
    """Two replicas of each service on one database per service and one broker; requests
    through `System.url` spread over both (one connection per request). One stack for the
    session, whichever module asks first (its tests make their own scanners, or use the demo
    directory's once)."""
    stack = Stack(private_tmp("replicated"), replicas=2, extra_env=REPLICATED_ENV)
    started = time.monotonic()
    try:
        stack.start_infrastructure()
        stack.start_services(timeout=240)
        sys_ = System(stack)
        stack.publish(*sys_.demo.events())
        print(f"\nreplicated stack: 2 x 4 services ready in {time.monotonic() - started:.1f} s")
        yield sys_
    finally:
        stack.stop()
