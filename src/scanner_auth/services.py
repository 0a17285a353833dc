"""The four services, by the names the command line and Kubernetes use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import load_settings


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package: str
    default_port: int
    keeps_state: bool = True

    def settings_class(self) -> type[Any]:
        return importlib.import_module(f"{self.package}.settings").Settings  # type: ignore[no-any-return]

    def builder(self) -> Callable[[Any], ServiceRuntime]:
        return importlib.import_module(f"{self.package}.app").build  # type: ignore[no-any-return]

    def build_from_environment(self, **overrides: Any) -> ServiceRuntime:
        """Settings from the environment (ConfigurationError when they are not enough)."""
        settings = load_settings(self.settings_class(), **overrides)
        return self.builder()(settings)


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("token-issuer", "token_issuer", 8001),
        ServiceSpec("redeemer", "redeemer", 8002),
        ServiceSpec("scan-ingest", "scan_ingest", 8003),
        ServiceSpec("notifier", "notifier", 8004),
    )
}
