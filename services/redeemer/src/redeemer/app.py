"""Composition root of the redeemer: `build(settings)` wires everything into a ServiceRuntime."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from scanner_auth_shared.api import Refusal, fastapi_app, refusals
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.events import (
    AuthorisationRejected,
    CredentialRotated,
    CredentialsRevoked,
    ScannerAuthorised,
)
from scanner_auth_shared.http import parse_networks
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime

from . import api, consumers, domain, handlers
from .adapters.postgres import PostgresUnitOfWork
from .settings import Settings

NAME = "redeemer"
SOURCE = "scanner-auth/redeemer"  # of its events
# What it publishes through its outbox (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (ScannerAuthorised, CredentialRotated, CredentialsRevoked, AuthorisationRejected)
MIGRATIONS = Path(__file__).parent / "migrations"


def config(settings: Settings) -> handlers.Config:
    return handlers.Config(
        pepper=settings.token_pepper.get_secret_value().encode(),
        throttle=domain.ThrottlePolicy(
            serial_failures=settings.serial_lockout_failures,
            serial_lock=timedelta(seconds=settings.serial_lockout_seconds),
            address_failures=settings.address_lockout_failures,
            address_window=timedelta(seconds=settings.address_window_seconds),
        ),
        rotation_grace=timedelta(seconds=settings.credential_rotation_grace_seconds),
        rotation_limit_per_hour=settings.rotation_limit_per_hour,
    )


def build(settings: Settings) -> ServiceRuntime:
    runtime = ServiceRuntime(name=NAME, settings=settings, broker=create_broker(settings, NAME))
    database = runtime.use_postgres(MIGRATIONS)
    runtime.use_outbox_relay()

    def unit_of_work() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(database, source=SOURCE)

    for consumer in consumers.CONSUMERS:
        subscribe(runtime.broker, settings, consumer, unit_of_work)

    async def forget_stale_throttles() -> None:
        await handlers.forget_stale_throttles(unit_of_work(), settings.throttle_retention_seconds)

    runtime.periodically(
        "throttle-housekeeping", settings.throttle_cleanup_interval_seconds, forget_stale_throttles
    )
    configured = config(settings)

    async def report_refusals() -> None:
        await handlers.report_refusals_while_locked(unit_of_work(), configured)

    runtime.periodically("rejection-report", settings.rejection_report_seconds, report_refusals)
    runtime.on_stop.append(report_refusals)  # before the relay's last drain
    services = api.Services(
        unit_of_work=unit_of_work,
        config=configured,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        max_body_bytes=settings.max_request_body_bytes,
    )
    http_app(runtime, services)
    return runtime


def http_app(runtime: ServiceRuntime, services: api.Services) -> FastAPI:
    """The HTTP app of `runtime` (also `runtime.app`), its routes reading `services`."""
    app = fastapi_app(
        runtime,
        title="scanner-auth redeemer",
        description="Scanners redeem the code a person typed for their own credential, and "
        "rotate that credential.",
        routers=[api.routes],
        max_body_bytes=services.max_body_bytes,  # MAX_REQUEST_BODY_BYTES, before anything parses
    )
    app.add_exception_handler(Refusal, refusals(api.STATUSES))
    app.state.services = services
    return app
