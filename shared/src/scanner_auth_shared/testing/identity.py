"""A stand-in for MyScanner's identity provider: an ES256 key pair that mints user JWTs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class TestIdentity:
    __test__ = False  # not a test class, whatever pytest thinks of the name
    issuer = "https://id.myscanner.test/"
    audience = "scanner-auth"

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_pem = (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def mint(
        self,
        sub: str,
        org_id: str,
        roles: list[str] | None = None,
        email: str | None = None,
        *,
        lifetime: timedelta = timedelta(minutes=30),
        key: Any = None,
        alg: str = "ES256",
        **claims: Any,
    ) -> str:
        now = datetime.now(UTC)
        body: dict[str, Any] = {
            "sub": sub,
            "org_id": org_id,
            "roles": roles or [],
            "email": email or f"{sub}@example.test",
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + lifetime,
        }
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm=alg)
