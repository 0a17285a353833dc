"""User JWT verification: signature, exp, iss, aud. The algorithm comes from the key, never
from the token."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# Verified tokens remembered per verifier: how many, and for how long at most (a JWKS key
# withdrawn stops a token remembered with it within this time).
VERIFIED_CACHE_SIZE = 4096
VERIFIED_CACHE_SECONDS = 60.0


class InvalidToken(Exception):
    """The bearer token is missing, malformed, badly signed, expired or not for us."""


class KeysUnavailable(ConnectionError):
    """The identity provider's JWKS could not be fetched: an outage (503), not a bad token."""


_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_jwks_url(url: str) -> str:
    """AUTH_JWKS_URL must be https: keys fetched over plain HTTP could be replaced on the way,
    and whoever replaces them signs in as anyone. Plain HTTP is accepted on loopback only (a
    sidecar or a dev identity provider on the same host). ValueError otherwise."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url
    raise ValueError("must be an https:// URL (plain http only on loopback)")


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller."""

    user_id: str
    org_id: str
    roles: frozenset[str]
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_support(self) -> bool:
        return "support" in self.roles


def _alg_for(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise ValueError("only P-256 elliptic-curve keys (ES256) are accepted")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused")
        return "RS256"
    raise ValueError("the public key must be an EC P-256 (ES256) or RSA (RS256) key")


class JwtVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        public_key_pem: str | None = None,
        jwks_url: str | None = None,
        leeway_seconds: int = 30,
        jwks_cache_seconds: int = 300,
    ) -> None:
        if not public_key_pem and not jwks_url:
            raise ValueError("either AUTH_PUBLIC_KEY_PEM or AUTH_JWKS_URL is required")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self._static: tuple[Any, str] | None = None
        if public_key_pem:
            key = load_pem_public_key(public_key_pem.strip().encode())
            self._static = (key, _alg_for(key))
        self._jwks = (
            jwt.PyJWKClient(check_jwks_url(jwks_url), cache_keys=True, lifespan=jwks_cache_seconds)
            if jwks_url
            else None
        )
        self._jwks_checked = 0.0
        # Tokens already verified (the exact string) -> (principal, exp, verified until). A
        # browser sends the same JWT with every request: its signature is checked once per
        # `VERIFIED_CACHE_SECONDS`, its expiry on every use.
        self._verified: dict[str, tuple[Principal, float, float]] = {}

    async def _key_for(self, token: str) -> tuple[Any, str]:
        if self._static is not None:
            return self._static
        assert self._jwks is not None
        try:
            # PyJWKClient fetches with urllib: keep that off the event loop.
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeysUnavailable("the identity provider's keys could not be fetched") from exc
        except jwt.PyJWKClientError as exc:
            raise InvalidToken("no matching signing key") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken("malformed token") from exc
        self._jwks_checked = time.monotonic()
        key = signing.key
        try:
            return key, _alg_for(key)
        except ValueError:
            # A key of another type (or size) in the JWKS: not one we verify with.
            raise InvalidToken("the signing key is not an ES256 or RS256 key") from None

    async def verify(self, token: str) -> Principal:
        if not token or token.count(".") != 2:
            raise InvalidToken("malformed token")
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            principal, exp, until = cached
            if now < exp + self.leeway and time.monotonic() < until:
                return principal
            del self._verified[token]
        principal, exp = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, exp, time.monotonic() + VERIFIED_CACHE_SECONDS)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        key, alg = await self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        sub, org_id, roles = claims.get("sub"), claims.get("org_id"), claims.get("roles", [])
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("sub claim missing")
        if not isinstance(org_id, str) or not org_id:
            raise InvalidToken("org_id claim missing")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("roles claim must be a list of strings")
        email = claims.get("email")
        principal = Principal(
            user_id=sub,
            org_id=org_id,
            roles=frozenset(roles),
            email=email if isinstance(email, str) else None,
        )
        return principal, float(claims["exp"])


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
