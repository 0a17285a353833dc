"""Shared helpers of the token-issuer's tests (imported by conftest.py and the test modules):
the people and scanners of a two-organisation directory, and a harness around a running service."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    CloudEvent,
    EventData,
    ScannerAccessGranted,
    ScannerRegistered,
    UserUpserted,
)
from scanner_auth_shared.postgres import asyncpg_dsn
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.testing.identity import TestIdentity
from scanner_auth_shared.testing.kafka import publish_events
from scanner_auth_shared.testing.waiting import eventually
from token_issuer.settings import Settings

CODE_SHAPE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


# ------------------------------------------------------------------------------------ people


@dataclass(frozen=True)
class Who:
    sub: str
    org_id: str
    roles: tuple[str, ...] = ()
    email: str | None = None


ADMIN_A = Who("u-admin-a", "org-a", ("admin",), "admin.a@a.example")
SUPPORT = Who("u-support", "org-loadscan", ("support",), "support@loadscan.example")
USER_A = Who("u-user-a", "org-a", (), "user.a@a.example")  # granted scanner A1
PLAIN_A = Who("u-plain-a", "org-a", (), "plain.a@a.example")  # no grant
ADMIN_B = Who("u-admin-b", "org-b", ("admin",), "admin.b@b.example")
CROSS_B = Who("u-cross-b", "org-b", (), "cross.b@b.example")  # org B, with a grant on A1

A1, A2, B1 = "sc-a1", "sc-a2", "sc-b1"

SCANNERS = {
    A1: ScannerRegistered(
        scanner_id=A1,
        org_id="org-a",
        serial_number="LVS-A1-0001",
        name="Alpha quarry loader",
        model="LVS",
    ),
    A2: ScannerRegistered(
        scanner_id=A2, org_id="org-a", serial_number="MPS-A2-0002", name="Alpha pit", model="MPS"
    ),
    B1: ScannerRegistered(
        scanner_id=B1, org_id="org-b", serial_number="LVS-B1-0003", name="Bravo mine", model="LVS"
    ),
}


def directory_of_two_orgs() -> list[EventData]:
    users = [
        UserUpserted(user_id=w.sub, org_id=w.org_id, email=w.email or "", display_name=name)
        for w, name in (
            (ADMIN_A, "Ada Admin"),
            (USER_A, "Uma User"),
            (PLAIN_A, "Pia Plain"),
            (ADMIN_B, "Ben Admin"),
            (CROSS_B, "Cai Cross"),
        )
    ]
    grants = [
        ScannerAccessGranted(scanner_id=A1, user_id=USER_A.sub),
        ScannerAccessGranted(scanner_id=A1, user_id=CROSS_B.sub),
    ]
    return [*grants, *SCANNERS.values(), *users]  # grants first: order must not matter


# ------------------------------------------------------------------------------------ harness


@dataclass
class Harness:
    runtime: ServiceRuntime
    settings: Settings
    identity: TestIdentity
    bootstrap: str
    database_url: str
    client: httpx.AsyncClient = field(init=False)
    codes: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        assert self.runtime.app is not None
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.runtime.app, client=("203.0.113.7", 5000)),
            base_url="http://test",
        )

    def auth(self, who: Who) -> dict[str, str]:
        token = self.identity.mint(who.sub, who.org_id, list(who.roles), who.email)
        return {"Authorization": f"Bearer {token}"}

    async def call(self, who: Who | None, method: str, path: str, **kw: Any) -> httpx.Response:
        """An HTTP request as `who`; every code seen in an answer is remembered."""
        headers = self.auth(who) if who is not None else {}
        response = await self.client.request(method, path, headers=headers, **kw)
        self.remember(response)
        return response

    def remember(self, response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            for item in body if isinstance(body, list) else [body]:
                if isinstance(item, dict) and isinstance(item.get("code"), str):
                    self.codes.add(item["code"])

    async def generate(self, who: Who, scanner_id: str) -> dict[str, Any]:
        response = await self.call(who, "POST", f"/v1/scanners/{scanner_id}/authorisation-token")
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def publish(
        self, topic: str, *datas: EventData | CloudEvent, source: str = "myscanner/directory"
    ) -> list[CloudEvent]:
        return await publish_events(self.bootstrap, topic, *datas, source=source)

    async def applied(self, consumer: str, events: list[CloudEvent], timeout: float = 20) -> None:
        """Wait until `consumer` has processed every one of `events`."""
        ids = [e.id for e in events]
        await eventually(lambda: self._processed(consumer, ids), timeout)

    async def _processed(self, consumer: str, ids: list[str]) -> bool:
        rows = await self.fetch(
            "SELECT count(*) AS n FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
            consumer,
            ids,
        )
        return bool(rows[0]["n"] == len(set(ids)))

    async def drained(self, timeout: float = 20) -> None:
        """Wait until the relay has published everything committed so far (it deletes an outbox
        row once the broker acknowledged it): what is not on the topic then was never written."""

        async def empty() -> bool:
            rows = await self.fetch("SELECT count(*) AS n FROM outbox")
            return bool(rows[0]["n"] == 0)

        await eventually(empty, timeout)

    async def directory(self, *datas: EventData | CloudEvent) -> list[CloudEvent]:
        events = await self.publish(DIRECTORY_TOPIC, *datas)
        await self.applied("token-issuer.directory", events)
        return events


def code_forms(code: str) -> list[str]:
    """The ways a code could be written down: formatted, flat, either case."""
    flat = code.replace("-", "")
    return [code, flat, code.lower(), flat.lower()]
