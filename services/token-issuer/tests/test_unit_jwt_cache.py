"""The verifier remembers tokens it verified (one signature check per token, not per request)
without ever accepting what it would refuse: an expired token, or another token string."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scanner_auth_shared.auth import InvalidToken, JwtVerifier, Principal

pytestmark = pytest.mark.unit

ISSUER, AUDIENCE = "https://id.example.test", "scanner-auth"


class CountingVerifier(JwtVerifier):
    """Counts the full verifications (signature and claims) it makes."""

    checks = 0

    async def _verify(self, token: str) -> tuple[Principal, float]:
        self.checks += 1
        return await super()._verify(token)


def _setup() -> tuple[ec.EllipticCurvePrivateKey, CountingVerifier]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, CountingVerifier(
        issuer=ISSUER, audience=AUDIENCE, public_key_pem=pem, leeway_seconds=0
    )


def _mint(key: ec.EllipticCurvePrivateKey, exp: float) -> str:
    return jwt.encode(
        {
            "sub": "u-1",
            "org_id": "org-a",
            "roles": ["admin"],
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(exp),
        },
        key,
        algorithm="ES256",
    )


def test_a_remembered_token_stops_working_at_its_expiry() -> None:
    key, verifier = _setup()
    token = _mint(key, time.time() + 2)

    async def scenario() -> None:
        first = await verifier.verify(token)
        assert await verifier.verify(token) == first
        assert verifier.checks == 1  # the second came from the cache
        assert first.user_id == "u-1" and first.roles == frozenset({"admin"})
        await asyncio.sleep(max(0.0, int(time.time() + 2) - time.time()) + 0.2)
        with pytest.raises(InvalidToken):
            await verifier.verify(token)

    asyncio.run(scenario())


def test_only_the_exact_token_string_is_remembered() -> None:
    key, verifier = _setup()
    token = _mint(key, time.time() + 600)
    other_key, _ = _setup()
    forged = _mint(other_key, time.time() + 600)  # same claims, another key

    async def scenario() -> None:
        await verifier.verify(token)
        header, payload, _ = token.split(".")
        with pytest.raises(InvalidToken):
            await verifier.verify(f"{header}.{payload}.{forged.split('.')[2]}")
        with pytest.raises(InvalidToken):
            await verifier.verify(forged)

    asyncio.run(scenario())
