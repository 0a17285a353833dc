"""Composition root of the redeemer: `build(settings)` wires everything into a ServiceRuntime."""

from __future__ import annotations

from pathlib import Path

from scanner_auth_shared.api import fastapi_app
from scanner_auth_shared.events import AuthorisationRejected, CredentialRotated, ScannerAuthorised
from scanner_auth_shared.http import parse_networks
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime

from . import api, consumers
from .handlers import Redeemer
from .settings import Settings

NAME = "redeemer"
# What it publishes through its outbox (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (ScannerAuthorised, CredentialRotated, AuthorisationRejected)


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(name=NAME, settings=settings, broker=create_broker(settings, NAME))
    database = runtime.use_database(Path(__file__).parent / "migrations")
    runtime.use_outbox_relay()
    redeemer = Redeemer(database, settings)
    consumers.subscribe(runtime.broker, settings, redeemer)
    runtime.background["throttle-housekeeping"] = redeemer.housekeeping_loop
    app = fastapi_app(
        runtime,
        title="scanner-auth redeemer",
        description="Scanners redeem the code a person typed for their own credential, and "
        "rotate that credential.",
        routers=[api.router(redeemer, parse_networks(settings.trusted_proxies))],
    )
    app.state.redeemer = redeemer
    return runtime
