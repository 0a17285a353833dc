"""A Hypothesis state machine over the life of codes and credentials, driven through the real
services (processes) on real PostgreSQL and the real broker: issue (and so supersede), revoke,
expire, redeem (right or wrong), deauthorise, rotate, upload. After every step:

- at most one active token per scanner (token-issuer's tokens and the redeemer's view);
- at most one valid credential per scanner outside a rotation grace period (the redeemer's
  credentials and scan-ingest's gate);
- a code redeems at most once;
- every answer is the one a model of the contract predicts (201 or the uniform 400, 201 or 403
  for a rotation, 202 or 403 at the gate once it caught up).

Design, for speed without leaving the real system: all four services run as processes for the
whole suite; each Hypothesis example gets two fresh scanners (no restart, no fresh database);
after a state change a step waits until the services that must learn of it have (the
redeemer's view, through the broker), as a person typing a code would. Expiry is the one
shortcut: a token's `expires_at` is moved into the past in the token-issuer's database (a clock
jump); its expiry sweeper, the TokenExpired event and the redeemer's view do the rest.

The runs are derandomized, so that CI is repeatable (the same sequences every run);
FUZZ_RANDOM=1 explores other sequences, and a failure prints the steps that led to it.
FUZZ_MACHINE_EXAMPLES and FUZZ_MACHINE_STEPS set how many.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx
import pytest
from fault_kit import ROTATION_GRACE_SECONDS, Rig, Scanner, eventually, new_scanners
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from scanner_auth_shared.crypto import generate_code

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES = int(os.environ.get("FUZZ_MACHINE_EXAMPLES", "6"))
STEPS = int(os.environ.get("FUZZ_MACHINE_STEPS", "20"))
SERIAL_LOCKOUT = 5  # consecutive failures that lock a serial number (redeemer default)
MARGIN = 1.0  # seconds around the end of a grace period in which the gate may say either

T = TypeVar("T")


@dataclass
class TokenM:
    token_id: str
    scanner: Scanner
    code: str
    status: str = "active"  # active | redeemed | revoked | expired
    redemptions: int = 0


@dataclass
class CredentialM:
    credential: str = field(repr=False)
    credential_id: str
    scanner: Scanner
    status: str = "current"  # current | grace | ended
    valid_until: float | None = None  # monotonic clock, for grace

    def standing(self, now: float) -> str:
        if self.status == "grace" and self.valid_until is not None and now >= self.valid_until:
            return "ended"
        return self.status


STATS: dict[str, int] = {}


class Lifecycle(RuleBasedStateMachine):
    rig: ClassVar[Rig]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.scanners: list[Scanner] = []
        self.tokens: list[TokenM] = []
        self.credentials: list[CredentialM] = []
        self.failures: dict[str, int] = {}  # consecutive failed redemptions per serial
        self.http = httpx.Client(timeout=30)

    def run(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def teardown(self) -> None:
        self.http.close()
        self.loop.close()

    def count(self, what: str) -> None:
        STATS[what] = STATS.get(what, 0) + 1

    # ------------------------------------------------------------------ helpers

    def active_token(self, scanner: Scanner) -> TokenM | None:
        return next((t for t in self.tokens if t.scanner is scanner and t.status == "active"), None)

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.rig.token_for('u-alice')}"}

    def redeemer_token_status(self, token_id: str) -> str | None:
        return self.run(
            self.rig.fetchval(  # type: ignore[no-any-return]
                "redeemer",
                "SELECT status FROM tokens WHERE token_id = $1 AND code_digest IS NOT NULL",
                token_id,
            )
        )

    def until_redeemer_says(self, token_id: str, status: str) -> None:
        deadline = time.monotonic() + 30
        while self.redeemer_token_status(token_id) != status:
            assert time.monotonic() < deadline, f"the redeemer never saw {token_id} {status}"
            time.sleep(0.05)

    def redeem_request(self, code: str, serial: str) -> httpx.Response:
        address = f"198.18.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"
        return self.http.post(
            self.rig.url("redeemer") + "/v1/authorisations",
            json={"code": code, "serial_number": serial},
            headers={"X-Forwarded-For": address},
        )

    # ------------------------------------------------------------------ rules

    @initialize()
    def scanners_registered(self) -> None:
        self.scanners = new_scanners(2, "sc-sm")
        self.run(self.rig.register(self.scanners))

    @rule(data=st.data())
    def issue(self, data: st.DataObject) -> None:
        scanner = data.draw(st.sampled_from(self.scanners), label="scanner")
        superseded = self.active_token(scanner)
        r = self.http.post(
            self.rig.url("token-issuer") + f"/v1/scanners/{scanner.scanner_id}/authorisation-token",
            headers=self.admin(),
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "active" and body["code"]
        if superseded is not None:
            superseded.status = "revoked"
        self.tokens.append(TokenM(body["token_id"], scanner, body["code"]))
        self.until_redeemer_says(body["token_id"], "active")
        if superseded is not None:
            self.until_redeemer_says(superseded.token_id, "revoked")
        self.count("issue" if superseded is None else "issue (superseding)")

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        active = [t for t in self.tokens if t.status == "active"]
        # Mostly a live code (what people type), sometimes a dead one.
        pool = active if active and data.draw(st.integers(0, 3), label="live?") else self.tokens
        token = data.draw(st.sampled_from(pool), label="token")
        serial = token.scanner.serial_number
        if token.status != "active" and self.failures.get(serial, 0) >= SERIAL_LOCKOUT - 1:
            return  # one more failure would lock the serial number for 15 minutes
        r = self.redeem_request(token.code, serial)
        if token.status != "active":
            assert r.status_code == 400, (token.status, r.status_code, r.text)
            self.failures[serial] = self.failures.get(serial, 0) + 1
            self.count(f"redeem a {token.status} code: 400")
            return
        assert r.status_code == 201, r.text
        body = r.json()
        token.status, token.redemptions = "redeemed", token.redemptions + 1
        self.failures[serial] = 0
        for c in self.credentials:
            if c.scanner is token.scanner:
                c.status = "ended"  # replaced
        self.credentials.append(
            CredentialM(body["credential"], body["credential_id"], token.scanner)
        )
        self.count("redeem: 201")

    @rule(data=st.data())
    def redeem_wrongly(self, data: st.DataObject) -> None:
        """A known code for another scanner's serial number, or a code nobody issued."""
        if self.tokens and data.draw(st.booleans(), label="a known code"):
            token = data.draw(st.sampled_from(self.tokens), label="token")
            code, serial = token.code, f"SN-NOT-{uuid.uuid4().hex[:12]}"
        else:
            code, serial = generate_code(), f"SN-NOBODY-{uuid.uuid4().hex[:12]}"
        r = self.redeem_request(code, serial)
        assert r.status_code == 400, r.text
        self.count("redeem wrongly: 400")

    @precondition(lambda self: any(t.status == "active" for t in self.tokens))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        active = [s for s in self.scanners if self.active_token(s) is not None]
        scanner = data.draw(st.sampled_from(active), label="scanner")
        token = self.active_token(scanner)
        r = self.http.delete(
            self.rig.url("token-issuer") + f"/v1/scanners/{scanner.scanner_id}/authorisation-token",
            headers=self.admin(),
        )
        assert r.status_code == 204, r.text
        if token is not None:
            token.status = "revoked"
            self.until_redeemer_says(token.token_id, "revoked")
        self.count("revoke")

    @precondition(lambda self: any(t.status == "active" for t in self.tokens))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        token = data.draw(
            st.sampled_from([t for t in self.tokens if t.status == "active"]), label="token"
        )
        self.run(
            self.rig.fetchval(
                "token-issuer",
                "UPDATE tokens SET expires_at = now() - interval '1 second' "
                "WHERE token_id = $1 AND status = 'active' RETURNING 1",
                token.token_id,
            )
        )
        token.status = "expired"
        self.until_redeemer_says(token.token_id, "expired")
        self.count("expire")

    @precondition(lambda self: any(c.status != "ended" for c in self.credentials))
    @rule(data=st.data())
    def deauthorise(self, data: st.DataObject) -> None:
        authorised = sorted({c.scanner.scanner_id for c in self.credentials if c.status != "ended"})
        scanner_id = data.draw(st.sampled_from(authorised), label="scanner")
        scanner = next(s for s in self.scanners if s.scanner_id == scanner_id)
        r = self.http.delete(
            self.rig.url("token-issuer") + f"/v1/scanners/{scanner.scanner_id}/authorisation",
            headers=self.admin(),
        )
        assert r.status_code == 204, r.text
        for c in self.credentials:
            if c.scanner is scanner:
                c.status = "ended"

        async def revoked() -> bool:
            live = await self.rig.fetchval(
                "redeemer",
                "SELECT count(*) FROM credentials WHERE scanner_id = $1 "
                "AND status IN ('active', 'rotating')",
                scanner.scanner_id,
            )
            return bool(live == 0)

        self.run(eventually(revoked, 30, "the redeemer revoked the scanner's credentials"))
        self.count("deauthorise")

    @precondition(lambda self: self.credentials)
    @rule(data=st.data())
    def rotate(self, data: st.DataObject) -> None:
        credential = data.draw(st.sampled_from(self.credentials), label="credential")
        standing = credential.standing(time.monotonic())
        r = self.http.post(
            self.rig.url("redeemer") + "/v1/credentials/rotate",
            headers={"Authorization": f"Bearer {credential.credential}"},
        )
        if standing != "current":
            assert r.status_code == 403, (standing, r.status_code, r.text)
            self.count(f"rotate a {standing} credential: 403")
            return
        assert r.status_code == 201, r.text
        body = r.json()
        credential.status = "grace"
        credential.valid_until = time.monotonic() + ROTATION_GRACE_SECONDS
        self.credentials.append(
            CredentialM(body["credential"], body["credential_id"], credential.scanner)
        )
        self.count("rotate: 201")

    @precondition(lambda self: self.credentials)
    @rule(data=st.data())
    def upload(self, data: st.DataObject) -> None:
        """The gate agrees with the model once it caught up (within a second, per the
        contract; a little more here, on a busy machine)."""
        credential = data.draw(st.sampled_from(self.credentials), label="credential")
        deadline = time.monotonic() + 5
        while True:
            now = time.monotonic()
            if credential.valid_until is not None and abs(now - credential.valid_until) < MARGIN:
                return  # at the end of its grace period: either answer is right
            expected = 202 if credential.standing(now) in ("current", "grace") else 403
            r = self.http.post(
                self.rig.url("scan-ingest") + "/v1/scans",
                json={"machine": True},
                headers={"Authorization": f"Bearer {credential.credential}"},
            )
            if r.status_code == expected:
                self.count(f"upload: {expected}")
                return
            assert time.monotonic() < deadline, (credential.standing(now), r.status_code, r.text)
            time.sleep(0.1)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def one_active_token_per_scanner(self) -> None:
        ids = [s.scanner_id for s in self.scanners]
        if not ids:
            return
        for service in ("token-issuer", "redeemer"):
            doubled = self.run(
                self.rig.fetch(
                    service,
                    "SELECT scanner_id FROM tokens WHERE status = 'active' "
                    "AND scanner_id = ANY($1) GROUP BY scanner_id HAVING count(*) > 1",
                    ids,
                )
            )
            assert not doubled, f"{service}: two active tokens for {doubled}"

    @invariant()
    def one_valid_credential_per_scanner_outside_grace(self) -> None:
        ids = [s.scanner_id for s in self.scanners]
        if not ids:
            return
        rows = self.run(
            self.rig.fetch(
                "redeemer",
                "SELECT scanner_id, count(*) FILTER (WHERE status = 'active') AS current, "
                "count(*) FILTER (WHERE status = 'rotating' AND valid_until > now()) AS grace "
                "FROM credentials WHERE scanner_id = ANY($1) GROUP BY scanner_id",
                ids,
            )
        )
        for row in rows:
            assert row["current"] <= 1, f"redeemer: two current credentials for {row}"
        gate = self.run(
            self.rig.fetch(
                "scan-ingest",
                "SELECT scanner_id, count(*) AS n FROM gate_credentials "
                "WHERE state = 'active' AND scanner_id = ANY($1) GROUP BY scanner_id "
                "HAVING count(*) > 1",
                ids,
            )
        )
        assert not gate, f"scan-ingest: two active credentials for {gate}"

    @invariant()
    def a_code_redeems_at_most_once(self) -> None:
        assert all(t.redemptions <= 1 for t in self.tokens)


def test_lifecycle_state_machine(rig: Rig) -> None:
    Lifecycle.rig = rig
    started = time.monotonic()
    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=not os.environ.get("FUZZ_RANDOM"),
            phases=[Phase.explicit, Phase.generate],  # real services: no shrinking
            suppress_health_check=list(HealthCheck),
        ),
    )
    steps = sum(STATS.values())
    print(
        f"state machine: {EXAMPLES} examples of up to {STEPS} steps, {steps} steps run in "
        f"{time.monotonic() - started:.1f}s"
    )
    for what, n in sorted(STATS.items()):
        print(f"  {what}: {n}")
