"""Composition root of the token-issuer."""

from __future__ import annotations

from pathlib import Path

from scanner_auth_shared.api import fastapi_app
from scanner_auth_shared.auth import JwtVerifier
from scanner_auth_shared.events import (
    ScannerDeauthorised,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
)
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime

from . import api, consumers, ui
from .handlers import SERVICE, TokenIssuer
from .settings import Settings

DESCRIPTION = (
    "Generates, shows, revokes, expires and emails the authorisation codes that scanners "
    "redeem, with role- and organisation-checked access, and deauthorises scanners."
)
# What it publishes through its outbox (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (TokenIssued, TokenRevoked, TokenExpired, ScannerDeauthorised, TokenEmailRequested)


def build(settings: Settings) -> ServiceRuntime:
    broker = create_broker(settings, SERVICE)
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker)
    database = runtime.use_database(Path(__file__).parent / "migrations")
    runtime.use_outbox_relay()

    issuer = TokenIssuer(database, settings)
    consumers.subscribe(broker, settings, issuer)
    runtime.background["expiry-sweeper"] = issuer.run_expiry_sweeper

    verifier = JwtVerifier(
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        public_key_pem=settings.auth_public_key_pem,
        jwks_url=settings.auth_jwks_url,
    )
    app = fastapi_app(
        runtime, title="scanner-auth token-issuer", description=DESCRIPTION, routers=[api.router]
    )
    api.install(app, issuer=issuer, authenticator=api.Authenticator(verifier, issuer))
    ui.mount(app, settings)  # the reference web page at /ui/
    return runtime
