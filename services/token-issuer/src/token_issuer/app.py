"""Composition root of the token-issuer: `build(settings)` wires the database, the unit of
work, the consumers, the outbox relay, the expiry sweeper and the HTTP app (with the reference
web page). Nothing connects here: `ServiceRuntime.start()` does."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from scanner_auth_shared.api import fastapi_app
from scanner_auth_shared.auth import JwtVerifier
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.crypto import SecretBox
from scanner_auth_shared.events import (
    ScannerDeauthorised,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    utcnow,
)
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import aes_key_bytes

from . import SERVICE, api, consumers, handlers, ui
from .adapters.postgres import PostgresUnitOfWork
from .domain import EmailQuota, RecentPrincipals
from .settings import Settings

DESCRIPTION = (
    "Generates, shows, revokes, expires and emails the authorisation codes that scanners "
    "redeem, with role- and organisation-checked access, and deauthorises scanners."
)
# What it publishes through its outbox (the AsyncAPI document: `scanner-auth contracts`).
# How often the email requests older than the quotas' hour are deleted.
EMAIL_PURGE_INTERVAL_SECONDS = 300.0
PUBLISHES = (TokenIssued, TokenRevoked, TokenExpired, ScannerDeauthorised, TokenEmailRequested)


def context(settings: Settings) -> handlers.Context:
    """The use cases' keys, token lifetime, throttle and batch size, from the settings."""
    keys = handlers.Keys(
        pepper=settings.token_pepper.get_secret_value().encode(),
        at_rest=SecretBox(aes_key_bytes(settings.code_encryption_key)),
        for_notifier=SecretBox(aes_key_bytes(settings.sealing_key)),
    )
    return handlers.Context(
        keys=keys,
        ttl_seconds=settings.token_ttl_seconds,
        principals=RecentPrincipals(settings.principal_record_interval_seconds),
        sweep_batch=settings.expiry_sweep_batch_size,
        clock=clock(settings.test_clock_offset_seconds),
        email_quota=EmailQuota(
            per_code=settings.email_limit_per_code_per_hour,
            per_recipient=settings.email_limit_per_recipient_per_hour,
        ),
        admin_flag_ttl=timedelta(hours=settings.admin_flag_ttl_hours),
        support_org_id=settings.support_org_id,
    )


def clock(offset_seconds: float) -> handlers.Clock:
    """The use cases' clock: the machine's, or (tests only) skewed by `offset_seconds`."""
    if not offset_seconds:
        return utcnow
    logging.getLogger("scanner_auth.token_issuer").warning(
        "TEST_CLOCK_OFFSET_SECONDS: this token-issuer's clock is skewed",
        extra={"offset_seconds": offset_seconds},
    )
    offset = timedelta(seconds=offset_seconds)

    def skewed() -> datetime:
        return utcnow() + offset

    return skewed


def build(settings: Settings) -> ServiceRuntime:
    broker = create_broker(settings, SERVICE)
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker)
    database = runtime.use_postgres(Path(__file__).parent / "migrations")
    runtime.use_outbox_relay()

    def unit_of_work() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(database)

    ctx = context(settings)
    for consumer in (consumers.directory(ctx.clock), consumers.authorisations(ctx.clock)):
        subscribe(broker, settings, consumer, unit_of_work)

    async def sweep() -> None:
        await handlers.expire_due_tokens(unit_of_work(), ctx)

    runtime.periodically("expiry-sweeper", settings.expiry_sweep_interval_seconds, sweep)

    async def purge_email_requests() -> None:
        await handlers.purge_email_requests(unit_of_work(), ctx)

    runtime.periodically("email-request-purge", EMAIL_PURGE_INTERVAL_SECONDS, purge_email_requests)

    verifier = JwtVerifier(
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        public_key_pem=settings.auth_public_key_pem,
        jwks_url=settings.auth_jwks_url,
    )
    app = fastapi_app(
        runtime,
        title="scanner-auth token-issuer",
        description=DESCRIPTION,
        routers=[api.router],
        max_body_bytes=settings.max_request_body_bytes,
    )
    authenticator = api.Authenticator(verifier, unit_of_work, ctx)
    api.install(app, api.Services(unit_of_work, ctx, authenticator))
    ui.mount(app, settings)  # the reference web page at /ui/
    return runtime
