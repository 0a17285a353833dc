"""deploy/README.md, the platform team's page, names every configuration variable and every
metric the code defines (the issue asks for both; this keeps them from drifting)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

from scanner_auth.services import SERVICES

pytestmark = pytest.mark.unit

README = (Path(__file__).resolve().parents[2] / "deploy" / "README.md").read_text()


def _module(name: str) -> ModuleType:
    """The module, or a failure: every service has its settings and metrics (a drift check that
    skipped a missing module would pass by checking nothing)."""
    return importlib.import_module(name)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_configuration_variable_is_documented(service: str) -> None:
    settings = _module(f"{SERVICES[service].package}.settings")
    missing = [
        name.upper() for name in settings.Settings.model_fields if f"`{name.upper()}`" not in README
    ]
    assert not missing, f"deploy/README.md does not describe {service}'s {missing}"


@pytest.mark.parametrize(
    "module", ["scanner_auth_shared.metrics", *(f"{s.package}.metrics" for s in SERVICES.values())]
)
def test_every_metric_is_documented(module: str) -> None:
    found = _module(module)
    names = set()
    for value in vars(found).values():
        if isinstance(value, MetricWrapperBase) and not value._labelvalues:  # not a bound child
            suffix = "_total" if isinstance(value, Counter) else ""
            names.add(f"{value._name}{suffix}")
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing, f"deploy/README.md, section Metrics, does not describe {missing}"
