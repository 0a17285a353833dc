"""Parsing the redeem request: never echoing what was sent."""

from __future__ import annotations

import orjson
import pytest
from starlette.responses import Response

from redeemer.api import UNIFORM_REFUSAL, _parse

pytestmark = pytest.mark.unit


def test_the_uniform_refusal_is_the_documented_problem():
    assert UNIFORM_REFUSAL == (
        b'{"type":"about:blank","title":"Bad Request","status":400,'
        b'"detail":"the code was not accepted for this scanner"}'
    )


def test_a_good_body_gives_the_code_as_typed_and_the_trimmed_serial():
    assert _parse(b'{"code": "yd20 66yf h255", "serial_number": " LVS-1 "}') == (
        "yd20 66yf h255",
        "LVS-1",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"YD20-66YF-H255"',
        b"{",
        b'{"serial_number": "LVS-1"}',
        b'{"code": "YD20-66YF-H255"}',
        b'{"code": null, "serial_number": "LVS-1"}',
        b'{"code": ["YD20-66YF-H255"], "serial_number": "LVS-1"}',
        b'{"code": "YD20-66YF-H255", "serial_number": 7}',
        b'{"code": "YD20-66YF-H255", "serial_number": ""}',
        b'{"code": "YD20-66YF-H255", "serial_number": "' + b"x" * 65 + b'"}',
        b'{"code": "' + b"Y" * 65 + b'", "serial_number": "LVS-1"}',
    ],
)
def test_a_malformed_body_is_a_422_that_repeats_nothing(body):
    answer = _parse(body)
    assert isinstance(answer, Response) and answer.status_code == 422
    problem = orjson.loads(bytes(answer.body))
    assert problem["status"] == 422 and problem["title"] == "Unprocessable Content"
    assert b"YD20" not in bytes(answer.body) and b"LVS-1" not in bytes(answer.body)
