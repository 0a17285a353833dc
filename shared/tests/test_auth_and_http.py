"""User JWT verification and the client address behind proxies."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scanner_auth_shared.auth import InvalidToken, JwtVerifier, bearer_token
from scanner_auth_shared.http import client_address, parse_networks
from scanner_auth_shared.testing.identity import TestIdentity

pytestmark = pytest.mark.unit


@pytest.fixture
def idp() -> TestIdentity:
    return TestIdentity()


@pytest.fixture
def verifier(idp: TestIdentity) -> JwtVerifier:
    return JwtVerifier(issuer=idp.issuer, audience=idp.audience, public_key_pem=idp.public_pem)


async def test_a_good_token_gives_the_principal(idp, verifier):
    p = await verifier.verify(idp.mint("u1", "org-a", ["admin"], "a@x.test"))
    assert (p.user_id, p.org_id, p.is_admin, p.is_support, p.email) == (
        "u1",
        "org-a",
        True,
        False,
        "a@x.test",
    )


def _unsigned(idp: TestIdentity) -> str:
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    good = idp.mint("u1", "org-a", ["support"])
    return f"{header}.{good.split('.')[1]}."


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda i: _unsigned(i), id="alg-none"),
        pytest.param(
            lambda i: i.mint("u1", "o", key=ec.generate_private_key(ec.SECP256R1())), id="wrong-key"
        ),
        pytest.param(lambda i: i.mint("u1", "o", lifetime=timedelta(minutes=-5)), id="expired"),
        pytest.param(lambda i: i.mint("u1", "o", iss="https://evil.test/"), id="wrong-issuer"),
        pytest.param(lambda i: i.mint("u1", "o", aud="another-service"), id="wrong-audience"),
        pytest.param(
            lambda i: i.mint("u1", "o", key=rsa.generate_private_key(65537, 2048), alg="RS256"),
            id="other-alg",
        ),
        pytest.param(
            lambda i: jwt.encode(
                {"sub": "u1", "org_id": "o", "iss": i.issuer, "aud": i.audience, "exp": 9999999999},
                i.public_pem,
                algorithm="HS256",
            ),
            id="hs256-with-public-key",
        ),
        pytest.param(lambda i: i.mint("u1", "o", org_id=None), id="no-org"),
        pytest.param(lambda i: i.mint("u1", "o", roles="admin"), id="roles-not-a-list"),
        pytest.param(lambda i: "not-a-jwt", id="garbage"),
    ],
)
async def test_bad_tokens_are_refused(idp, verifier, make):
    try:
        token = make(idp)
    except Exception:  # PyJWT itself refuses to make some of them: equally refused
        return
    with pytest.raises(InvalidToken):
        await verifier.verify(token)


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    trusted = parse_networks("10.0.0.0/8, 127.0.0.1")
    assert client_address("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"
    assert client_address("10.1.2.3", "198.51.100.7", trusted) == "198.51.100.7"
    assert client_address("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9", trusted) == "198.51.100.7"
    assert client_address("10.1.2.3", "garbage", trusted) == "10.1.2.3"
    assert client_address("10.1.2.3", None, trusted) == "10.1.2.3"
    assert client_address("10.1.2.3", "198.51.100.7", ()) == "10.1.2.3"


async def test_an_outage_answers_503_and_a_bug_500_and_neither_says_more():
    import httpx
    from starlette.routing import Route

    from scanner_auth_shared.api import starlette_app
    from scanner_auth_shared.messaging import create_broker
    from scanner_auth_shared.runtime import ServiceRuntime
    from scanner_auth_shared.settings import ServiceSettings

    async def outage(_):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("db at 10.0.0.5 refused YD20-66YF-H255")

    async def bug(_):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret detail sac1_abcdefghijklmnop")

    settings = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:9092")  # never reached
    runtime = ServiceRuntime(name="t", settings=settings, broker=create_broker(settings, "t"))
    app = starlette_app(runtime, [Route("/outage", outage), Route("/bug", bug)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/outage")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.headers["content-type"] == "application/problem+json"
        assert "10.0.0.5" not in r.text and "YD20" not in r.text
        r = await client.get("/bug")
        assert r.status_code == 500 and "sac1_" not in r.text and "secret" not in r.text


# ------------------------------------------------------------------------------ JWKS


class _Jwks:
    """A JWKS endpoint on loopback, serving whatever keys a test gives it."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        import http.server
        import json
        import threading

        body = json.dumps({"keys": keys}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.unit
async def test_a_jwks_key_of_another_type_is_a_401_not_a_500() -> None:
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    jwk = json.loads(pyjwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "okp-1", "use": "sig"})
    server = _Jwks([jwk])
    try:
        verifier = JwtVerifier(issuer="i", audience="a", jwks_url=server.url)
        token = pyjwt.encode(
            {"sub": "u", "org_id": "o", "iss": "i", "aud": "a", "exp": 4102444800},
            key,
            algorithm="EdDSA",
            headers={"kid": "okp-1"},
        )
        with pytest.raises(InvalidToken, match="not an ES256 or RS256 key"):
            await verifier.verify(token)
    finally:
        server.close()


@pytest.mark.unit
async def test_an_unreachable_jwks_is_an_outage_not_a_bad_token() -> None:
    import jwt as pyjwt

    from scanner_auth_shared.auth import KeysUnavailable
    from scanner_auth_shared.outages import is_infrastructure_error

    verifier = JwtVerifier(issuer="i", audience="a", jwks_url="http://127.0.0.1:9/jwks.json")
    token = pyjwt.encode({"sub": "u"}, "x" * 32, algorithm="HS256", headers={"kid": "k"})
    with pytest.raises(KeysUnavailable) as caught:
        await verifier.verify(token)
    assert is_infrastructure_error(caught.value)  # answered 503 with Retry-After


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://id.myscanner.example/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks.json", True),
        ("http://localhost/jwks.json", True),
        ("http://id.myscanner.example/jwks.json", False),
        ("ftp://id.myscanner.example/jwks.json", False),
        ("https:///jwks.json", False),
    ],
)
def test_the_jwks_url_must_be_https_outside_loopback(url: str, ok: bool) -> None:
    from scanner_auth_shared.auth import check_jwks_url

    if ok:
        assert check_jwks_url(url) == url
    else:
        with pytest.raises(ValueError, match="https"):
            check_jwks_url(url)
