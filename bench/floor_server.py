"""The floor of the scan-ingest figures: the same server with an empty handler.

Same `serve()` (HTTP server and its settings), same process model (`scanner-auth serve`'s
event loop and logging), same `ServiceRuntime` with a started Kafka broker, same Starlette app
with the same middleware and ops routes. Only `POST /v1/scans` differs: it answers a constant
202 without reading the body, checking a credential or publishing anything.

Run by bench/run.py as its own process, configured from the environment like scan-ingest.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scanner_auth.cli import _run
from scanner_auth_shared.api import starlette_app
from scanner_auth_shared.logs import configure_logging
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime, serve
from scanner_auth_shared.settings import ServiceSettings, load_settings

_BODY = (
    b'{"scan_id":"00000000-0000-4000-8000-000000000000",'
    b'"received_at":"2026-01-01T00:00:00.000000Z"}'
)


async def empty(_: Request) -> Response:
    return Response(_BODY, status_code=202, media_type="application/json")


def main() -> None:
    configure_logging("bench-floor", os.environ.get("LOG_LEVEL", "INFO"))
    settings = load_settings(ServiceSettings)
    runtime = ServiceRuntime(
        name="bench-floor", settings=settings, broker=create_broker(settings, "bench-floor")
    )
    starlette_app(runtime, routes=[Route("/v1/scans", empty, methods=["POST"])])
    _run(serve(runtime))


if __name__ == "__main__":
    main()
