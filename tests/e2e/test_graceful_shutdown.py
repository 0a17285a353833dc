"""SIGTERM during load, to each service in turn (as Kubernetes does on a rollout): no accepted
request is lost, no 5xx comes from a stopping service, the outbox is flushed before the process
exits, consumed events are not lost across the restart, and the process exits 0 within its
grace period.

The load, from threads, on every service at once, each request on a fresh connection:
- scan uploads of an authorised scanner (202 → its scan_id must reach myscanner.scans.v1);
- token generation (201 → its TokenIssued), supersession churn on one scanner;
- credential rotations (201 → its CredentialRotated);
- redemptions of unknown codes, each from its own client address (400 → its
  AuthorisationRejected, carrying that address);
- emails of a code (202 → exactly one email, and its NotificationSent).

A refused connection (the service has stopped listening) or one closed before any answer is
fine: the client retries such a request, and it had no effect that the system acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from scanner_auth.devstack import System
from scanner_auth_shared.crypto import generate_code
from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC, SCANS_TOPIC, CloudEvent
from scanner_auth_shared.testing.kafka import events_on, wait_for_events
from scanner_auth_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

GRACE_SECONDS = 10.0  # SHUTDOWN_GRACE_SECONDS of the stack's services
LOAD_BEFORE_SIGTERM = 1.0  # seconds of load before each SIGTERM
UPLOADER = "sc-quarry-1"  # uploads scans
ROTATOR = "sc-quarry-2"  # rotates its credential again and again
CHURNED = "sc-quarry-3"  # a new token again and again
EMAILED = "sc-harbour-1"  # its code emailed to its organisation's admin again and again
EMAIL_TO = "olga@harbour.example"


# ------------------------------------------------------------------------------ recording


@dataclass
class Outcome:
    service: str
    action: str
    phase: str  # the target's phase when the request was sent: up or stopping
    status: int | None  # None: refused, or closed before any answer
    error: str = ""
    ref: str = ""  # what must show up on a topic if accepted


@dataclass
class Load:
    system: System
    phase: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.phase = dict.fromkeys(self.system.stack.services, "up")

    def client(self, service: str, token: str | None) -> httpx.Client:
        # A fresh connection per request: no keep-alive race with a closing server.
        return httpx.Client(
            base_url=self.system.url(service),
            timeout=30,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def send(
        self,
        service: str,
        action: str,
        request: Callable[[], httpx.Response],
        accepted: int,
        ref: Callable[[httpx.Response], str],
        phase: str | None = None,
    ) -> httpx.Response | None:
        phase = phase or self.phase[service]
        try:
            response = request()
        except httpx.TransportError as exc:
            self.record(Outcome(service, action, phase, None, type(exc).__name__))
            return None
        outcome = Outcome(service, action, phase, response.status_code, response.text[:200])
        if response.status_code == accepted:
            outcome.ref = ref(response)
        self.record(outcome)
        return response

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def accepted(self, action: str) -> list[str]:
        with self.lock:
            return [o.ref for o in self.outcomes if o.action == action and o.ref]

    def loop(self, service: str, step: Callable[[], None], pause: float) -> None:
        def run() -> None:
            deadline = time.monotonic() + 300  # bounded, whatever happens
            while not self.stop.is_set() and time.monotonic() < deadline:
                if self.phase[service] == "down":
                    time.sleep(0.05)
                    continue
                step()
                time.sleep(pause)

        thread = threading.Thread(target=run, name=f"load-{service}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def in_flight(
        self,
        service: str,
        action: str,
        path: str,
        token: str | None,
        body: bytes,
        accepted: int,
        ref: Callable[[httpx.Response], str],
        headers: dict[str, str] | None = None,
    ) -> threading.Event:
        """A request whose body trickles in for about 3 s: SIGTERM finds it in flight. The
        event is set once its headers and first bytes are sent (the server has accepted the
        connection; the caller then gives a busy server time to read them)."""
        sending = threading.Event()

        def trickle() -> Iterator[bytes]:
            step = max(1, len(body) // 10)
            for i in range(0, len(body), step):
                yield body[i : i + step]
                sending.set()
                time.sleep(0.3)

        def run() -> None:
            with self.client(service, token) as c:
                self.send(
                    service,
                    action,
                    lambda: c.post(path, content=trickle(), headers=headers),
                    accepted,
                    ref,
                    phase="in flight at SIGTERM",
                )

        thread = threading.Thread(target=run, name=f"in-flight-{service}", daemon=True)
        thread.start()
        return sending

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


# ------------------------------------------------------------------------------ helpers


def published(system: System, *wanted: tuple[str, str, str]) -> dict[str, set[str]]:
    """For each (topic, event type, data field): the field's values on the topic now. Each
    topic is read once."""
    topics = {topic for topic, _, _ in wanted}
    on: dict[str, list[CloudEvent]] = {
        t: asyncio.run(events_on(system.bootstrap, t)) for t in sorted(topics)
    }
    return {
        f"{type_}.{key}": {str(e.data[key]) for e in on[topic] if e.type == type_}
        for topic, type_, key in wanted
    }


def jwt(system: System, env_name: str) -> str:
    user = next(u for u in system.demo.users if u.env_name == env_name)
    return system.stack.identity.mint(user.user_id, user.org_id, list(user.roles), user.email)


def authorise(system: System, admin: str, scanner_id: str, serial: str) -> str:
    """Generate a code and redeem it, as a person and a scanner do; the credential."""
    with system.as_user(admin) as user:
        wait_until(
            lambda: user.get(f"/v1/scanners/{scanner_id}/authorisation").status_code == 200,
            30,
            f"the directory reached the token-issuer ({scanner_id})",
        )
        r = user.post(f"/v1/scanners/{scanner_id}/authorisation-token")
        assert r.status_code == 201, r.text
        token = r.json()
    asyncio.run(
        wait_for_events(
            system.bootstrap,
            PUBLIC_TOPIC,
            "TokenIssued",
            match=lambda e: e.data["token_id"] == token["token_id"],
        )
    )
    for _ in range(3):  # fewer than the 5 failures that lock a serial number
        time.sleep(1.0)  # the redeemer learns of the code from TokenIssued
        with system.device("redeemer") as device:
            r = device.post(
                "/v1/authorisations", json={"code": token["code"], "serial_number": serial}
            )
        if r.status_code == 201:
            return str(r.json()["credential"])
    raise AssertionError(f"{scanner_id} could not redeem its code: {r.status_code} {r.text}")


def serial_of(system: System, scanner_id: str) -> str:
    return next(s.serial_number for s in system.demo.scanners if s.scanner_id == scanner_id)


# ------------------------------------------------------------------------------ the test


def test_sigterm_during_load_loses_nothing_and_exits_cleanly(system: System) -> None:
    stack = system.stack
    assert stack.mail is not None

    # Setup: two scanners authorised, a code to email, the email path proven once.
    upload_credential = authorise(system, "ADMIN_JWT", UPLOADER, serial_of(system, UPLOADER))
    rotating = [authorise(system, "ADMIN_JWT", ROTATOR, serial_of(system, ROTATOR))]
    with system.device("scan-ingest", upload_credential) as device:
        wait_until(
            lambda: device.post("/v1/scans", json={"warm": 1}).status_code == 202,
            10,
            "the gate opened",
        )
    with system.as_user("OTHER_ADMIN_JWT") as olga:
        wait_until(
            lambda: olga.get(f"/v1/scanners/{EMAILED}/authorisation").status_code == 200,
            30,
            "the directory reached the token-issuer (harbour)",
        )
        assert olga.post(f"/v1/scanners/{EMAILED}/authorisation-token").status_code == 201
        time.sleep(1.0)  # the notifier learns of the code from TokenIssued
        assert olga.post(f"/v1/scanners/{EMAILED}/authorisation-token/email").status_code == 202
    wait_until(lambda: stack.mail.to(EMAIL_TO), 20, "the first email")  # type: ignore[union-attr]
    mails_before = len(stack.mail.to(EMAIL_TO))

    load = Load(system)
    admin, olga_jwt = jwt(system, "ADMIN_JWT"), jwt(system, "OTHER_ADMIN_JWT")
    counter = itertools.count(1)

    def upload() -> None:
        n = next(counter)
        with load.client("scan-ingest", upload_credential) as c:
            load.send(
                "scan-ingest",
                "upload",
                lambda: c.post("/v1/scans", json={"scan_id": f"scan-{n:06d}", "volume_m3": n}),
                202,
                lambda r: str(r.json()["scan_id"]),
            )

    def generate() -> None:
        with load.client("token-issuer", admin) as c:
            load.send(
                "token-issuer",
                "generate",
                lambda: c.post(f"/v1/scanners/{CHURNED}/authorisation-token"),
                201,
                lambda r: str(r.json()["token_id"]),
            )

    def email() -> None:
        with load.client("token-issuer", olga_jwt) as c:
            load.send(
                "token-issuer",
                "email",
                lambda: c.post(f"/v1/scanners/{EMAILED}/authorisation-token/email"),
                202,
                lambda r: str(r.json()["notification_id"]),
            )

    def rotate() -> None:
        with load.client("redeemer", rotating[-1]) as c:
            r = load.send(
                "redeemer",
                "rotate",
                lambda: c.post("/v1/credentials/rotate"),
                201,
                lambda r: str(r.json()["credential_id"]),
            )
        if r is not None and r.status_code == 201:
            rotating.append(r.json()["credential"])

    def reject() -> None:
        n = next(counter)
        # Its own /64 each (the redeemer throttles IPv6 by /64), in the documentation range:
        # a header value, never a target.
        address = f"2001:db8:0:{n:x}::1"
        with load.client("redeemer", None) as c:
            load.send(
                "redeemer",
                "reject",
                lambda: c.post(
                    "/v1/authorisations",
                    json={"code": generate_code(), "serial_number": f"LVS-LOAD-{n}"},
                    headers={"X-Forwarded-For": address},
                ),
                400,
                lambda r: address,
            )

    load.loop("scan-ingest", upload, 0.02)
    load.loop("token-issuer", generate, 0.1)
    load.loop("token-issuer", email, 0.25)
    load.loop("redeemer", rotate, 0.1)
    load.loop("redeemer", reject, 0.05)

    def in_flight(service: str) -> threading.Event:
        n = next(counter)
        if service == "token-issuer":
            return load.in_flight(
                service,
                "email",
                f"/v1/scanners/{EMAILED}/authorisation-token/email",
                olga_jwt,
                b'{"recipient_user_id": "u-olga"}',
                202,
                lambda r: str(r.json()["notification_id"]),
                {"Content-Type": "application/json"},
            )
        if service == "redeemer":
            address = f"2001:db8:1:{n:x}::1"  # a header value, never a target
            return load.in_flight(
                service,
                "reject",
                "/v1/authorisations",
                None,
                json.dumps({"code": generate_code(), "serial_number": f"LVS-SLOW-{n}"}).encode(),
                400,
                lambda r: address,
                {"Content-Type": "application/json", "X-Forwarded-For": address},
            )
        return load.in_flight(
            service,
            "upload",
            "/v1/scans",
            upload_credential,
            json.dumps({"scan_id": f"slow-{n}", "readings": list(range(50))}).encode(),
            202,
            lambda r: str(r.json()["scan_id"]),
            {"Content-Type": "application/json"},
        )

    exits: dict[str, tuple[int | None, float]] = {}
    tracked_emails: list[str] = []
    unflushed: dict[str, list[str]] = {}
    try:
        for name in ("token-issuer", "redeemer", "scan-ingest", "notifier"):
            service = stack.services[name]
            time.sleep(LOAD_BEFORE_SIGTERM)
            if name == "notifier":  # requested just before its SIGTERM
                tracked_emails.append(request_email(system))
            else:
                assert in_flight(name).wait(10), "the in-flight request did not start"
                # A request the server has not read yet when SIGTERM comes is refused, not in
                # flight: on a busy machine the event loop may take a while to read it.
                time.sleep(0.6)
            load.phase[name] = "stopping"
            started = time.monotonic()
            code = service.stop(signal.SIGTERM, timeout=GRACE_SECONDS)
            exits[name] = (code, time.monotonic() - started)
            load.phase[name] = "down"
            time.sleep(0.2)  # the load threads record the last answers
            unflushed[name] = flushed_before_exit(system, load, name)
            if name == "notifier":  # requested while it is down
                tracked_emails.append(request_email(system))
            service.start()
            wait_until(service.ready, 60, f"{name} ready again")
            load.phase[name] = "up"
        time.sleep(LOAD_BEFORE_SIGTERM)
    finally:
        load.finish()

    expected = {
        "upload": {202},
        "generate": {201},
        "email": {202},
        "rotate": {201},
        "reject": {400},
    }
    refused = collections.Counter(o.error for o in load.outcomes if o.status is None)
    answered = {a: sum(1 for o in load.outcomes if o.action == a and o.status) for a in expected}
    print(f"\nexits (code, seconds): {exits}\nanswered: {answered}; no answer: {refused}")
    # Each stopped gracefully: exit 0, within the grace period (else it was killed: -9).
    assert all(code == 0 for code, _ in exits.values()), exits

    # No 5xx, from a stopping service or any other.
    errors = [o for o in load.outcomes if o.status is not None and o.status >= 500]
    assert not errors, errors[:5]
    # Every request got an answer that was expected of it, or none at all (refused / closed).
    odd = [o for o in load.outcomes if o.status is not None and o.status not in expected[o.action]]
    assert not odd, odd[:5]
    by_action = {a: len(load.accepted(a)) for a in expected}
    assert all(by_action.values()), by_action  # the load did reach every service
    # A request in flight when SIGTERM came was finished, and answered as usual.
    finished = [o for o in load.outcomes if o.phase == "in flight at SIGTERM"]
    assert {o.service: o.status for o in finished} == {
        "token-issuer": 202,
        "redeemer": 400,
        "scan-ingest": 202,
    }, finished

    # The outbox was flushed before each process exited.
    assert not any(unflushed.values()), unflushed

    # Nothing accepted was lost: every event is on its topic (the restarted services included).
    def all_there() -> bool:
        on = published(
            system,
            (SCANS_TOPIC, "ScanIngested", "scan_id"),
            (PUBLIC_TOPIC, "TokenIssued", "token_id"),
            (PUBLIC_TOPIC, "CredentialRotated", "credential_id"),
            (PUBLIC_TOPIC, "AuthorisationRejected", "client_ip"),
            (NOTIFICATIONS_TOPIC, "NotificationSent", "notification_id"),
        )
        missing = {
            "upload": set(load.accepted("upload")) - on["ScanIngested.scan_id"],
            "generate": set(load.accepted("generate")) - on["TokenIssued.token_id"],
            "rotate": set(load.accepted("rotate")) - on["CredentialRotated.credential_id"],
            "reject": set(load.accepted("reject")) - on["AuthorisationRejected.client_ip"],
            "email": (set(load.accepted("email")) | set(tracked_emails))
            - on["NotificationSent.notification_id"],
        }
        all_there.missing = missing  # type: ignore[attr-defined]
        return not any(missing.values())

    try:
        wait_until(all_there, 60, "every accepted request's event")
    except AssertionError:
        raise AssertionError(f"lost: {all_there.missing}") from None  # type: ignore[attr-defined]

    # One email per request, never two (the emailer's 202s, the two tracked, the setup's one).
    emails = len(load.accepted("email")) + len(tracked_emails)
    wait_until(
        lambda: len(stack.mail.to(EMAIL_TO)) >= mails_before + emails,  # type: ignore[union-attr]
        30,
        "every email",
    )
    time.sleep(1.0)
    assert len(stack.mail.to(EMAIL_TO)) == mails_before + emails

    # A stop is clean: no traceback in any service's log.
    for svc in stack.services.values():
        log = svc.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"{svc.name}: {svc.log_path}"


def request_email(system: System) -> str:
    with system.as_user("OTHER_ADMIN_JWT") as olga:
        r = olga.post(f"/v1/scanners/{EMAILED}/authorisation-token/email")
        assert r.status_code == 202, r.text
        return str(r.json()["notification_id"])


def flushed_before_exit(system: System, load: Load, service: str) -> list[str]:
    """What the service had acknowledged, but whose event was not published when it exited."""
    checks: dict[str, list[tuple[str, str, str, str]]] = {
        "token-issuer": [
            ("generate", PUBLIC_TOPIC, "TokenIssued", "token_id"),
            ("email", NOTIFICATIONS_TOPIC, "TokenEmailRequested", "notification_id"),
        ],
        "redeemer": [
            ("rotate", PUBLIC_TOPIC, "CredentialRotated", "credential_id"),
            ("reject", PUBLIC_TOPIC, "AuthorisationRejected", "client_ip"),
        ],
        "scan-ingest": [("upload", SCANS_TOPIC, "ScanIngested", "scan_id")],
    }
    wanted = checks.get(service, [])
    on = published(system, *((topic, type_, key) for _, topic, type_, key in wanted))
    return [
        f"{action}:{ref}"
        for action, _, type_, key in wanted
        for ref in sorted(set(load.accepted(action)) - on[f"{type_}.{key}"])
    ]
