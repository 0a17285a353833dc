"""`POST /v1/scans` on real PostgreSQL and a real broker: bodies, limits, memory, Kafka outages."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from scanner_auth_shared.events import SCANS_TOPIC, ScanIngested, parse_data
from scanner_auth_shared.testing.kafka import events_on, wait_for_events

from .conftest import Ingest, Scanner, World, eventually

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
CHUNK = 64 * 1024


class Feed:
    """A request body produced on demand, counting what the server actually pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0
        self.block = b" " * CHUNK  # one object, yielded again and again: the client holds 64 KiB

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield self.block


async def _authorised(world: World, ingest: Ingest) -> str:
    credential, _, authorised = Scanner().authorised()
    await world.announce(authorised)
    await ingest.until_status(credential, 202)
    return credential


def _bearer(credential: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", **more}


async def test_oversized_bodies_are_refused_without_being_read_into_memory(world: World) -> None:
    async with world.ingest() as ingest:
        credential = await _authorised(world, ingest)
        limit = MiB  # INGEST_MAX_BODY_BYTES' default

        # Up to the limit: accepted, and Kafka takes it (with its envelope, more than 1 MiB).
        body = orjson.dumps({"scan_id": "at-the-limit", "points": ""})
        body = orjson.dumps({"scan_id": "at-the-limit", "points": "x" * (limit - len(body))})
        assert len(body) == limit
        accepted = await ingest.client.post("/v1/scans", content=body, headers=_bearer(credential))
        assert accepted.status_code == 202
        [event] = await wait_for_events(
            world.bootstrap,
            SCANS_TOPIC,
            "ScanIngested",
            timeout=20,
            match=lambda e: e.data["scan_id"] == "at-the-limit",
        )
        data = parse_data(event)
        assert isinstance(data, ScanIngested) and data.size_bytes == limit

        # One byte more, declared: 413 at once, not a byte of the body read.
        declared = Feed(100 * MiB)
        response = await ingest.client.post(
            "/v1/scans",
            content=declared,
            headers=_bearer(credential, **{"Content-Length": str(100 * MiB)}),
        )
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert declared.pulled == 0
        over = await ingest.client.post(
            "/v1/scans", content=body + b" ", headers=_bearer(credential)
        )
        assert over.status_code == 413

        # 100 MB streamed without a length: refused once past the limit; the rest never read,
        # and the process never held more than about the limit.
        streamed = Feed(100 * MiB)
        tracemalloc.start()
        try:
            response = await ingest.client.post(
                "/v1/scans", content=streamed, headers=_bearer(credential)
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413
        assert response.headers.get("connection") == "close"
        assert streamed.pulled <= limit + CHUNK
        assert peak < 4 * limit, f"peak {peak} bytes while refusing a 100 MB body"

        # Nothing refused reached Kafka (besides the probes that waited for the authorisation).
        scans = await events_on(world.bootstrap, SCANS_TOPIC, "ScanIngested")
        assert [e.data["scan_id"] for e in scans if "probe" not in e.data["scan"]] == [
            "at-the-limit"
        ]


async def test_bodies_that_are_not_a_json_object_are_422_and_malformed_requests_4xx(
    world: World,
) -> None:
    limit = 256
    async with world.ingest(ingest_max_body_bytes=limit) as ingest:
        credential = await _authorised(world, ingest)

        async def post(content: bytes, **headers: str) -> Any:
            return await ingest.client.post(
                "/v1/scans", content=content, headers=_bearer(credential, **headers)
            )

        for content in (
            b"",
            b"not json",
            b'{"a": 1',
            b"[1, 2]",
            b'"text"',
            b"42",
            b"null",
            b"\xef\xbb\xbf{}",
            b'{"a": "\xff"}',
            b'{"a": NaN}',
        ):
            response = await post(content)
            assert response.status_code == 422, content
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == 422

        assert (await post(b"{}", **{"Content-Length": "abc"})).status_code == 400
        assert (await post(b"x" * (limit + 1))).status_code == 413
        exactly = orjson.dumps({"p": "y" * (limit - 8)})
        assert len(exactly) == limit
        assert (await post(exactly)).status_code == 202
        assert (await post(b' {"volume_m3": 7} ')).status_code == 202  # any JSON object
        # A scan_id the document forbids (not a string of 1 to 200 characters) is refused, not
        # replaced by a fresh one; a missing one is made up (above).
        for content in (
            b'{"scan_id": 7}',
            b'{"scan_id": null}',
            b'{"scan_id": ""}',
            b'{"scan_id": "' + b"s" * 201 + b'"}',
        ):
            response = await post(content)
            assert response.status_code == 422, content
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"] == "scan_id must be a string of 1 to 200 characters"

        # Malformed Authorization headers: 401 before the body is even looked at.
        for value in (
            "Bearer",
            "Bearer ",
            "bearer",
            "Token abc",
            credential,
            "Bearer \xe9t\xe9".encode("latin-1"),
        ):
            response = await ingest.client.post(
                "/v1/scans", content=b"{}", headers={"Authorization": value}
            )
            assert response.status_code == 401, value
            assert response.headers["www-authenticate"].startswith("Bearer")


async def test_while_kafka_is_unreachable_uploads_get_503_and_never_202(
    database_url: str, private_kafka: Any
) -> None:
    kafka = private_kafka  # a broker of its own, to pause
    world = World(database_url, kafka.bootstrap)
    async with world.ingest(publish_timeout_seconds=1.0) as ingest:
        credential = await _authorised(world, ingest)
        accepted: list[str] = []

        async def upload(scan_id: str) -> int:
            response = await ingest.upload(credential, {"scan_id": scan_id})
            if response.status_code == 202:
                accepted.append(scan_id)
            return response.status_code

        assert await upload("before") == 202
        kafka.pause()
        try:
            for n in range(3):
                response = await ingest.upload(credential, {"scan_id": f"during-{n}"})
                assert response.status_code == 503
                assert int(response.headers["retry-after"]) >= 1
                assert response.headers["content-type"] == "application/problem+json"
        finally:
            kafka.resume()

        attempt = iter(range(1000))
        assert await eventually(lambda: _is_202(upload(f"after-{next(attempt)}")), 40, every=0.2)

        # Every 202 is on the topic: an accepted scan is never lost.
        stored = await wait_for_events(
            world.bootstrap,
            SCANS_TOPIC,
            "ScanIngested",
            count=len(accepted),
            timeout=20,
            match=lambda e: e.data["scan_id"] in accepted,
        )
        assert {e.data["scan_id"] for e in stored} == set(accepted)


async def _is_202(status: Any) -> bool:
    return await status == 202
