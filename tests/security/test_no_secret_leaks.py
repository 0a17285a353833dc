"""Across a full end-to-end run (all four services as processes), no issued code, credential,
JWT or service key appears in any log line, in any record of any topic (every topic on the
broker, dead-letter queues included, headers included), or in any error body or header.

The run goes through the paths where a secret is at hand: codes generated, shown, emailed,
typed sloppily, typed with a typo, sent for the wrong scanner, sent in malformed bodies, sent as
a bearer token, sent in a path; credentials redeemed, used, rotated, replaced, deauthorised, sent
to the wrong service; a code and a credential inside poison messages; a brute-force lockout.
Positive controls: the mails do carry the code, the logs and topics are not empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from fault_kit import Rig, eventually

from scanner_auth_shared.events import PUBLIC_TOPIC
from scanner_auth_shared.testing.kafka import publish_raw, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def forms_of_code(code: str) -> set[str]:
    flat = code.replace("-", "")
    return {code, flat, code.lower(), flat.lower(), " ".join([flat[:4], flat[4:8], flat[8:]])}


def with_typo(code: str) -> str:
    return code[:-1] + ("0" if code[-1] != "0" else "1")


class Recorder:
    """Every HTTP exchange of the run; the answers that are not 2xx are scanned."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []  # (what was asked, headers and body)
        self.count = 0

    async def send_may_close(
        self, client: httpx.AsyncClient, method: str, path: str, **kw: Any
    ) -> None:
        """The server may answer before the body is sent and close the connection (413 on a
        declared Content-Length): then the answer may be lost to the client."""
        with contextlib.suppress(httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            await self.send(client, method, path, **kw)

    async def send(
        self, client: httpx.AsyncClient, method: str, path: str, **kw: Any
    ) -> httpx.Response:
        r = await client.request(method, path, **kw)
        self.count += 1
        if r.status_code >= 300:
            headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
            self.errors.append(
                (f"{method} {path.split('/')[1:3]} -> {r.status_code}", f"{headers}\n{r.text}")
            )
        return r


async def all_topics(bootstrap: str) -> list[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        return sorted(await consumer.topics())
    finally:
        await consumer.stop()


async def test_no_secret_in_logs_topics_or_error_bodies(rig: Rig) -> None:
    rec = Recorder()
    codes: list[str] = []
    credentials: list[str] = []
    injected: set[bytes] = set()  # poison we put on topics ourselves: its bytes are ours
    admin_jwt = rig.token_for("u-alice")
    viewer_jwt_of: dict[str, str] = {}
    authorised, other = await rig.scanners(2, "sc-sec")
    identity = rig.stack.identity
    for s in (authorised, other):
        viewer_jwt_of[s.scanner_id] = identity.mint(s.viewer_id, "org-quarry", [], s.viewer_email)
    issuer = httpx.AsyncClient(
        base_url=rig.url("token-issuer"),
        timeout=30,
        headers={"Authorization": f"Bearer {admin_jwt}"},
    )
    redeemer = httpx.AsyncClient(base_url=rig.url("redeemer"), timeout=30)
    ingest = httpx.AsyncClient(base_url=rig.url("scan-ingest"), timeout=30)
    sid = authorised.scanner_id
    serial = authorised.serial_number

    async def redeem(code: Any, serial_number: Any, address: str, **kw: Any) -> httpx.Response:
        return await rec.send(
            redeemer,
            "POST",
            "/v1/authorisations",
            json={"code": code, "serial_number": serial_number},
            headers={"X-Forwarded-For": address},
            **kw,
        )

    try:
        # A code: generated, superseded, shown to the viewer, emailed.
        first = (await rec.send(issuer, "POST", f"/v1/scanners/{sid}/authorisation-token")).json()
        token = (await rec.send(issuer, "POST", f"/v1/scanners/{sid}/authorisation-token")).json()
        codes += [first["code"], token["code"]]
        code = token["code"]
        viewer = {"Authorization": f"Bearer {viewer_jwt_of[sid]}"}
        shown = await rec.send(
            issuer, "GET", f"/v1/scanners/{sid}/authorisation-token", headers=viewer
        )
        assert shown.json()["code"] == code
        await rec.send(
            issuer,
            "POST",
            f"/v1/scanners/{sid}/authorisation-token/email",
            json={"recipient_user_id": authorised.viewer_id},
        )
        await rig.redeemer_knows_tokens([token["token_id"]])

        async def mailed() -> bool:
            return bool(rig.stack.mail.to(authorised.viewer_email))  # type: ignore[union-attr]

        # Sent before the code is redeemed: the notifier cancels the email of a code that is
        # no longer active, and on a busy machine the redemption can reach it first.
        await eventually(mailed, 30, "the email")

        # The code where it does not belong: every answer is an error that must not repeat it.
        await redeem(with_typo(code), serial, "203.0.113.1")  # 422 typo
        await redeem(code, "SN-SOMEONE-ELSE", "203.0.113.2")  # 400
        await redeem(first["code"], serial, "203.0.113.3")  # 400 superseded
        await redeem(code, 12345, "203.0.113.4")  # 422 malformed
        await redeem([code], serial, "203.0.113.5")  # 422
        await rec.send(
            redeemer,
            "POST",
            "/v1/authorisations",
            content=b"code=" + code.encode(),
            headers={"X-Forwarded-For": "203.0.113.6"},
        )
        await rec.send(
            redeemer,
            "POST",
            "/v1/authorisations",
            content=orjson.dumps({"code": code, "pad": "x" * 10_000}),
            headers={"content-type": "application/json"},
        )  # 413
        await rec.send(
            redeemer, "POST", "/v1/credentials/rotate", headers={"Authorization": f"Bearer {code}"}
        )  # 401
        await rec.send(
            issuer,
            "POST",
            f"/v1/scanners/{sid}/authorisation-token/email",
            json={"recipient_user_id": code},
        )  # 422: no such recipient
        await rec.send(
            issuer,
            "POST",
            f"/v1/scanners/{sid}/authorisation-token/email",
            json={"recipient_user_id": 5, "note": code},
        )  # 422 validation
        await rec.send(
            issuer,
            "POST",
            f"/v1/scanners/{sid}/authorisation-token/email",
            content=b'{"recipient_user_id": "' + code.encode() + b'"',
            headers={"content-type": "application/json"},
        )  # 422 invalid JSON
        await rec.send(
            issuer, "GET", "/v1/scanners", headers={"Authorization": f"Bearer {code}"}
        )  # 401
        await rec.send(issuer, "GET", f"/v1/scanners/{code}/authorisation-token")  # 404
        await rec.send(
            ingest, "POST", "/v1/scans", json={"x": 1}, headers={"Authorization": f"Bearer {code}"}
        )  # 401

        # Redeemed, sloppily typed; a credential used, rotated, replaced, deauthorised.
        r = await redeem(code.lower().replace("-", " "), serial, "203.0.113.7")
        assert r.status_code == 201, r.text
        credential = r.json()["credential"]
        credentials.append(credential)
        await redeem(code, serial, "203.0.113.8")  # 400 used

        async def gate_open() -> bool:
            r = await ingest.post(
                "/v1/scans", json={"probe": 1}, headers={"Authorization": f"Bearer {credential}"}
            )
            return r.status_code == 202

        await eventually(gate_open, 30, "the gate opened")
        rotated = await rec.send(
            redeemer,
            "POST",
            "/v1/credentials/rotate",
            headers={"Authorization": f"Bearer {credential}"},
        )
        credentials.append(rotated.json()["credential"])
        await rec.send(
            redeemer,
            "POST",
            "/v1/credentials/rotate",
            headers={"Authorization": f"Bearer {credential}"},
        )  # 403 rotated out
        await rec.send(
            issuer, "GET", "/v1/scanners", headers={"Authorization": f"Bearer {credential}"}
        )  # 401
        await rec.send(
            redeemer,
            "POST",
            "/v1/authorisations",
            json={"code": credential, "serial_number": serial},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )  # 422
        await rec.send(
            ingest,
            "POST",
            "/v1/scans",
            content=b"not json " + credential.encode(),
            headers={"Authorization": f"Bearer {credentials[-1]}"},
        )  # 422
        await rec.send_may_close(
            ingest,
            "POST",
            "/v1/scans",
            content=b"x" * 2_000_000,
            headers={"Authorization": f"Bearer {credentials[-1]}"},
        )  # 413
        await rec.send(issuer, "DELETE", f"/v1/scanners/{sid}/authorisation")

        async def gate_closed() -> bool:
            r = await ingest.post(
                "/v1/scans",
                json={"probe": 2},
                headers={"Authorization": f"Bearer {credentials[-1]}"},
            )
            return r.status_code == 403

        await eventually(gate_closed, 30, "the gate closed")
        for c in credentials:
            await rec.send(
                ingest,
                "POST",
                "/v1/scans",
                json={"after": "deauthorisation"},
                headers={"Authorization": f"Bearer {c}"},
            )  # 403
            await rec.send(
                redeemer, "POST", "/v1/credentials/rotate", headers={"Authorization": f"Bearer {c}"}
            )  # 403

        # Re-authorised; then a brute-force lockout on the other scanner's serial number.
        again = (await rec.send(issuer, "POST", f"/v1/scanners/{sid}/authorisation-token")).json()
        codes.append(again["code"])
        await rig.redeemer_knows_tokens([again["token_id"]])
        r = await redeem(again["code"], serial, "203.0.113.10")
        credentials.append(r.json()["credential"])
        victim = (
            await rec.send(issuer, "POST", f"/v1/scanners/{other.scanner_id}/authorisation-token")
        ).json()
        codes.append(victim["code"])
        for n in range(7):  # five failures lock the serial; then 429 even for the right code
            await redeem(codes[n % 3], other.serial_number, f"203.0.113.{20 + n}")
        await redeem(victim["code"], other.serial_number, "203.0.113.30")
        await rec.send(issuer, "DELETE", f"/v1/scanners/{other.scanner_id}/authorisation-token")

        # Poison carrying a code and a credential: the DLQ keeps the bytes (ours), but its
        # headers (the error, the reason) must not repeat them.
        for poison in (
            orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "p-1",
                    "type": "TokenIssued",
                    "source": "x",
                    "data": {"token_id": code, "code_digest": credential},
                }
            ),
            orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "p-2",
                    "type": "ScannerAuthorised",
                    "source": "x",
                    "data": {"credential_digest": credential, "serial_number": code},
                }
            ),
            b"\x00 " + code.encode() + b" " + credential.encode(),
        ):
            injected.add(poison)
            await publish_raw(rig.bootstrap, PUBLIC_TOPIC, sid, poison)

        async def dead_lettered() -> bool:
            records = await read_topic(rig.bootstrap, PUBLIC_TOPIC + ".dlq")
            return sum(1 for r in records if r.value in injected) >= 3 * 3

        await eventually(dead_lettered, 30, "the poison in the DLQ")

        await asyncio.gather(
            *(rig.outbox_empty(s) for s in ("token-issuer", "redeemer", "notifier"))
        )
    finally:
        for client in (issuer, redeemer, ingest):
            await client.aclose()

    # ---------------------------------------------------------------- the scan
    jwts = [admin_jwt, *viewer_jwt_of.values()]
    keys = [
        v
        for svc in rig.stack.services.values()
        for k, v in svc.env.items()
        if k in ("TOKEN_PEPPER", "SEALING_KEY", "CODE_ENCRYPTION_KEY")
    ]
    secrets: dict[str, str] = {}
    for c in codes:
        for form in forms_of_code(c) | {with_typo(c)}:
            secrets[form] = f"code {c[:4]}…"
    for c in credentials:
        secrets[c] = f"credential {c[:9]}…"
    for j in jwts:
        secrets[j] = "a JWT"
    for k in set(keys):
        secrets[k] = "a service key"

    places: dict[str, str] = {}
    for name, svc in rig.stack.services.items():
        places[f"log of {name}"] = svc.log_path.read_text(errors="replace")
    topics = await all_topics(rig.bootstrap)
    records_scanned = 0
    for topic in topics:
        for record in await read_topic(rig.bootstrap, topic, timeout=15):
            records_scanned += 1
            where = f"{topic}@{record.partition}:{record.offset}"
            if record.value not in injected:
                places[f"record {where}"] = (record.value or b"").decode(errors="replace")
            places[f"headers of {where}"] = " ".join(
                f"{k}={v.decode(errors='replace')}" for k, v in record.headers
            )
            places[f"key of {where}"] = (record.key or b"").decode(errors="replace")
    for n, (asked, answer) in enumerate(rec.errors):
        places[f"error answer {n} ({asked})"] = answer

    leaks = sorted(
        {
            (what, where)
            for secret, what in secrets.items()
            for where, text in places.items()
            if secret in text
        }
    )
    mails = rig.stack.mail.to(authorised.viewer_email)  # type: ignore[union-attr]
    log_lines = sum(t.count("\n") for w, t in places.items() if w.startswith("log of"))
    print(
        f"secret scan: secrets={len(secrets)} (codes={len(codes)}, credentials={len(credentials)}, "
        f"JWTs={len(jwts)}, keys={len(set(keys))}); log lines={log_lines}; topics={len(topics)} "
        f"records={records_scanned}; requests={rec.count} error answers={len(rec.errors)}; "
        f"leaks={len(leaks)}"
    )
    # Positive controls: the places were really looked at, and the mail does carry the code.
    assert log_lines > 50 and records_scanned > 20 and len(rec.errors) > 20
    assert any(t.endswith(".dlq") for t in topics)
    assert mails and code in mails[0].parts()["text/plain"]
    assert not leaks, "\n".join(f"{what} in {where}" for what, where in leaks)
