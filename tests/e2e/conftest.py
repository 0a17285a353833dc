"""All four services as processes (`scanner-auth serve`), on embedded PostgreSQL, Apache Kafka
and an SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from scanner_auth.devstack import Stack, System


@pytest.fixture(scope="module")
def system(private_tmp: Any) -> Iterator[System]:
    stack = Stack(private_tmp("stack"))
    try:
        stack.start_infrastructure()
        stack.start_services()
        sys_ = System(stack)
        stack.publish(*sys_.demo.events())
        yield sys_
    finally:
        stack.stop()
