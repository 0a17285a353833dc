"""No code and no credential in a log record, on any topic, in any answer that is not the one
handing the credential out, or in the database. Real PostgreSQL, the real broker."""

from __future__ import annotations

import logging

import pytest

from scanner_auth_shared.crypto import generate_code
from scanner_auth_shared.events import ALL_TOPICS, dlq_topic
from scanner_auth_shared.testing.kafka import read_topic

from .conftest import Start

pytestmark = pytest.mark.integration


def _shapes(code: str) -> set[str]:
    flat = code.replace("-", "")
    return {code, flat, code.lower(), flat.lower(), code.replace("-", " ")}


async def test_codes_and_credentials_appear_in_no_log_event_answer_or_table(
    start: Start,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
):
    caplog.set_level(logging.DEBUG)
    secrets: set[str] = set()
    async with start(serial_lockout_failures=2) as h:
        await h.register("sc-1", "LVS-0001")
        await h.register("sc-2", "LVS-0002")
        good = await h.issue("sc-1")
        other = await h.issue("sc-2")
        wrong = generate_code()
        typo = good.code[:-1] + ("0" if good.code[-1] != "0" else "1")
        for code in (good.code, other.code, wrong, typo):
            secrets |= _shapes(code)
        secrets.add(h.pepper)

        answers = [
            await h.redeem(typo, "LVS-0001"),  # 422
            await h.redeem(other.code, "LVS-0001"),  # 400 serial mismatch
            await h.redeem(good.code, "LVS-0001"),  # 201
            await h.redeem(good.code, "LVS-0001"),  # 400 already used
            await h.redeem(wrong, "LVS-0002"),  # 400 invalid
            await h.redeem(wrong, "LVS-0002"),  # 400 invalid: locks LVS-0002
            await h.redeem(other.code, "LVS-0002"),  # 429
        ]
        assert [a.status_code for a in answers] == [422, 400, 201, 400, 400, 400, 429]
        credential = answers[2].json()["credential"]
        rotated = await h.rotate(credential)
        assert rotated.status_code == 201
        new_credential = rotated.json()["credential"]
        assert (await h.rotate(credential)).status_code == 403
        secrets |= {credential, new_credential}

        await h.wait_events("CredentialRotated", 1)
        await h.wait_events("AuthorisationRejected", 5)

        # Answers: only the two that hand a credential out carry one, and nothing else.
        for answer in [*answers[:2], *answers[3:], await h.rotate(credential)]:
            assert not any(s in answer.text for s in secrets)

        # Every topic, dead-letter queues included, as raw bytes.
        for topic in [*ALL_TOPICS, *map(dlq_topic, ALL_TOPICS)]:
            for record in await read_topic(h.bootstrap, topic):
                raw = (record.value or b"").decode("utf-8", "replace")
                assert not any(s in raw for s in secrets), topic

        # The database: every row of every table as text.
        tables = [
            r[0]
            for r in await h.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        for table in tables:
            for row in await h.query(f"SELECT row_to_json(t)::text FROM {table} t"):
                assert not any(s in row[0] for s in secrets), table

    # Logs: every record, its arguments and extra fields; and whatever reached the terminal.
    assert caplog.records, "nothing was logged at all: the capture is not working"
    for record in caplog.records:
        rendered = f"{record.getMessage()} {vars(record)!r}"
        assert not any(s in rendered for s in secrets), record.name
    out, err = capfd.readouterr()
    assert not any(s in out + err for s in secrets)
    assert any(r.name.startswith("scanner_auth.redeemer") for r in caplog.records)
