"""The use cases in memory (adapters/memory.py), for the unit tests: a store, a clock the test
moves, the keys, and the directory and redeemer events applied as the consumers apply them."""

from __future__ import annotations

import copy
import dataclasses
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from token_issuer_support import Who

from scanner_auth_shared.auth import Principal
from scanner_auth_shared.crypto import SecretBox
from scanner_auth_shared.events import CloudEvent, EventData, new_event
from token_issuer import consumers, handlers
from token_issuer.adapters.memory import MemoryUnitOfWork, Store
from token_issuer.domain import (
    AuthorisationView,
    RecentPrincipals,
    ScannerSummary,
    TokenView,
    Viewer,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TTL = 259200


@dataclass
class FakeClock:
    now: datetime = T0
    monotonic: float = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.monotonic

    def advance(self, **delta: float) -> None:
        step = timedelta(**delta)
        self.now += step
        self.monotonic += step.total_seconds()


def principal(who: Who) -> Principal:
    return Principal(who.sub, who.org_id, frozenset(who.roles), who.email)


def make_context(clock: FakeClock, **overrides: Any) -> handlers.Context:
    keys = handlers.Keys(
        pepper=secrets.token_urlsafe(48).encode(),
        at_rest=SecretBox(secrets.token_bytes(32)),
        for_notifier=SecretBox(secrets.token_bytes(32)),
    )
    values: dict[str, Any] = {
        "keys": keys,
        "ttl_seconds": TTL,
        "principals": RecentPrincipals(60.0),
        "sweep_batch": 500,
        "clock": clock,
        "monotonic": clock.seconds,
    }
    values.update(overrides)
    return handlers.Context(**values)


@dataclass
class World:
    clock: FakeClock = field(default_factory=FakeClock)
    store: Store = field(default_factory=Store)
    ctx: handlers.Context = field(init=False)

    def __post_init__(self) -> None:
        self.ctx = make_context(self.clock)
        # event type -> (its model, its handler), as consumers.py wires them (on this clock)
        self.routes: dict[str, tuple[type[EventData], Any]] = {
            model.event_type: (model, handler)
            for consumer in (consumers.directory(self.clock), consumers.authorisations(self.clock))
            for model, handler in consumer.handlers.items()
        }

    def fork(self) -> World:
        """A world of its own with a copy of this one's state (and the same keys)."""
        twin = World(clock=dataclasses.replace(self.clock), store=copy.deepcopy(self.store))
        twin.ctx = dataclasses.replace(
            self.ctx, clock=twin.clock, monotonic=twin.clock.seconds,
            principals=copy.deepcopy(self.ctx.principals),
        )  # fmt: skip
        return twin

    def uow(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self.store)

    # ---------------------------------------------------------------- events in

    async def apply(self, *datas: EventData | CloudEvent, source: str = "test") -> None:
        """Each event in a unit of work of its own, through its consumer's handler."""
        for data in datas:
            await self.apply_batch(data, source=source)

    async def apply_batch(self, *datas: EventData | CloudEvent, source: str = "test") -> None:
        """All in one unit of work, as the consumer runner applies a batch."""
        async with self.uow() as uow:
            for data in datas:
                event = data if isinstance(data, CloudEvent) else new_event(data, source=source)
                model, handler = self.routes[event.type]
                await handler(uow, event, model.model_validate(event.data))
            await uow.commit()

    # ---------------------------------------------------------------- use cases

    async def generate(self, who: Who, scanner_id: str) -> TokenView:
        command = handlers.GenerateToken(by=principal(who), scanner_id=scanner_id)
        return await handlers.generate_token(self.uow(), self.ctx, command)

    async def latest(self, who: Who, scanner_id: str) -> TokenView:
        return await handlers.show_latest_token(self.uow(), self.ctx, principal(who), scanner_id)

    async def revoke(self, who: Who, scanner_id: str) -> None:
        command = handlers.RevokeToken(by=principal(who), scanner_id=scanner_id)
        await handlers.revoke_token(self.uow(), self.ctx, command)

    async def email(self, who: Who, scanner_id: str, recipient: str | None = None) -> str:
        command = handlers.EmailCode(principal(who), scanner_id, recipient)
        return await handlers.email_code(self.uow(), self.ctx, command)

    async def deauthorise(self, who: Who, scanner_id: str) -> None:
        command = handlers.Deauthorise(by=principal(who), scanner_id=scanner_id)
        await handlers.deauthorise(self.uow(), self.ctx, command)

    async def list_for(self, who: Who) -> list[ScannerSummary]:
        return await handlers.list_scanners(self.uow(), self.ctx, principal(who))

    async def viewers(self, who: Who, scanner_id: str) -> list[Viewer]:
        return await handlers.list_viewers(self.uow(), self.ctx, principal(who), scanner_id)

    async def authorisation(self, who: Who, scanner_id: str) -> AuthorisationView:
        return await handlers.show_authorisation(self.uow(), principal(who), scanner_id)

    async def authenticated(self, *whos: Who) -> None:
        """What the API does for every authenticated request (throttled per user)."""
        for who in whos:
            await handlers.record_principal(self.uow(), self.ctx, principal(who))

    async def sweep(self) -> int:
        return await handlers.expire_due_tokens(self.uow(), self.ctx)

    # ---------------------------------------------------------------- what came out

    def published(self) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) of every committed event, in order."""
        return [(e.type, e.data) for e in self.store.events()]

    def stored_status(self, token_id: str) -> str:
        return self.store.tokens[token_id].token.status
