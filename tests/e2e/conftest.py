"""All four services as processes (`scanner-auth serve`), on embedded infrastructure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scanner_auth.devstack import Stack, System


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    stack = Stack(Path(tmp_path_factory.mktemp("stack")))
    try:
        stack.start_infrastructure()
        stack.start_services()
        sys_ = System(stack)
        stack.publish(*sys_.demo.events())
        yield sys_
    finally:
        stack.stop()
