"""Use cases of scan-ingest's gate writer.

One consumer group (`scanner-auth.scan-ingest.gate`) applies the public authorisation events to
`gate_credentials` in one transaction each: record the fact (idempotently), derive the standing
of every credential of that scanner again from all its facts, store what changed, and
`NOTIFY scan_ingest_gate, '<scanner_id>'` so that every replica reloads that scanner at commit.
"""

from __future__ import annotations

import logging

from scanner_auth_shared.db import Database
from scanner_auth_shared.events import (
    CloudEvent,
    CredentialRotated,
    EventData,
    ScannerAuthorised,
    ScannerDeauthorised,
)
from scanner_auth_shared.outbox import first_time

from .adapters.store import GateStore
from .domain import CredentialFact, derive_standings

log = logging.getLogger("scanner_auth.scan_ingest.gate")

GATE_CONSUMER = "scan-ingest.gate"
GATE_GROUP = "scanner-auth.scan-ingest.gate"
GATE_EVENT_TYPES = frozenset(
    {ScannerAuthorised.event_type, CredentialRotated.event_type, ScannerDeauthorised.event_type}
)


class GateWriter:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def apply(self, event: CloudEvent, data: EventData) -> None:
        if not isinstance(data, ScannerAuthorised | CredentialRotated | ScannerDeauthorised):
            return
        async with self.database.transaction() as session:
            if not await first_time(session, GATE_CONSUMER, event.id):
                return
            store = GateStore(session)
            scanner_id = data.scanner_id
            await store.lock_scanner(scanner_id)
            if isinstance(data, ScannerAuthorised):
                await self._add(
                    store,
                    data,
                    CredentialFact(
                        digest=bytes.fromhex(data.credential_digest),
                        credential_id=data.credential_id,
                        issued_at=data.authorised_at,
                    ),
                )
            elif isinstance(data, CredentialRotated):
                await self._add(
                    store,
                    data,
                    CredentialFact(
                        digest=bytes.fromhex(data.credential_digest),
                        credential_id=data.credential_id,
                        issued_at=data.rotated_at,
                        previous_credential_id=data.previous_credential_id,
                        previous_valid_until=data.previous_valid_until,
                    ),
                )
            else:
                await store.record_deauthorisation(scanner_id, data.deauthorised_at)

            facts = await store.facts(scanner_id)
            derived = derive_standings(facts.credentials, facts.deauthorised_at)
            for digest, standing in derived.items():
                if facts.standings.get(digest) != standing:
                    await store.set_standing(digest, standing)
            await store.notify(scanner_id)
        log.info(
            "gate event applied",
            extra={"event_type": event.type, "event_id": event.id, "scanner_id": scanner_id},
        )

    @staticmethod
    async def _add(
        store: GateStore, data: ScannerAuthorised | CredentialRotated, fact: CredentialFact
    ) -> None:
        if not await store.add_credential(fact, scanner_id=data.scanner_id, org_id=data.org_id):
            # The same credential announced twice under two event ids (a producer's retry):
            # the first announcement stands.
            log.warning(
                "credential already known; announcement ignored",
                extra={"scanner_id": data.scanner_id, "credential_id": data.credential_id},
            )
