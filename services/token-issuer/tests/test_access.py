"""Who may do what: the access matrix over two organisations, and bearer JWT verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from token_issuer_support import (
    A1,
    A2,
    ADMIN_A,
    ADMIN_B,
    B1,
    CROSS_B,
    PLAIN_A,
    SCANNERS,
    SUPPORT,
    USER_A,
    Harness,
    Who,
)

pytestmark = pytest.mark.integration

PRINCIPALS = {
    "admin A": ADMIN_A,
    "support": SUPPORT,
    "user A with access": USER_A,
    "user A without access": PLAIN_A,
    "admin B": ADMIN_B,
    "user B with a cross-org grant on A1": CROSS_B,
}
MISSING = "sc-never-registered"

# What each principal may do with each scanner.
LEVEL = {
    (ADMIN_A, A1): "manage",
    (SUPPORT, A1): "manage",
    (USER_A, A1): "view",
    (PLAIN_A, A1): "none",
    (ADMIN_B, A1): "none",
    (CROSS_B, A1): "none",
    (ADMIN_A, B1): "none",
    (SUPPORT, B1): "manage",
    (USER_A, B1): "none",
    (PLAIN_A, B1): "none",
    (ADMIN_B, B1): "manage",
    (CROSS_B, B1): "none",
    **{(who, MISSING): "none" for who in PRINCIPALS.values()},
}
# A user who can view each scanner, to whom a manager may email the code.
OTHER_RECIPIENT = {A1: ADMIN_A.sub, B1: ADMIN_B.sub, MISSING: ADMIN_A.sub}

# endpoint -> (method, path, body, expected status per level); in this order (state matters:
# emails need an active token, deletions come last).
ENDPOINTS: list[tuple[str, str, str, Any, dict[str, int]]] = [
    (
        "GET token",
        "GET",
        "/v1/scanners/{s}/authorisation-token",
        None,
        {"manage": 200, "view": 200, "none": 404},
    ),
    (
        "email self",
        "POST",
        "/v1/scanners/{s}/authorisation-token/email",
        None,
        {"manage": 202, "view": 202, "none": 404},
    ),
    (
        "email other",
        "POST",
        "/v1/scanners/{s}/authorisation-token/email",
        "other",
        {"manage": 202, "view": 403, "none": 404},
    ),
    ("GET users", "GET", "/v1/scanners/{s}/users", None, {"manage": 200, "view": 403, "none": 404}),
    (
        "GET authorisation",
        "GET",
        "/v1/scanners/{s}/authorisation",
        None,
        {"manage": 200, "view": 200, "none": 404},
    ),
    (
        "POST token",
        "POST",
        "/v1/scanners/{s}/authorisation-token",
        None,
        {"manage": 201, "view": 403, "none": 404},
    ),
    (
        "DELETE token",
        "DELETE",
        "/v1/scanners/{s}/authorisation-token",
        None,
        {"manage": 204, "view": 403, "none": 404},
    ),
    (
        "DELETE authorisation",
        "DELETE",
        "/v1/scanners/{s}/authorisation",
        None,
        {"manage": 204, "view": 403, "none": 404},
    ),
]

VISIBLE = {
    ADMIN_A: {A1: True, A2: True},
    SUPPORT: {A1: True, A2: True, B1: True},
    USER_A: {A1: False},
    PLAIN_A: {},
    ADMIN_B: {B1: True},
    CROSS_B: {},
}


def foreign_markers(who: Who) -> set[str]:
    """Strings that must never appear in an answer to `who`: identifiers, names and serial
    numbers of scanners they cannot view, and people of other organisations."""
    if who is SUPPORT:
        return set()
    markers = set()
    for scanner_id, registered in SCANNERS.items():
        if scanner_id not in VISIBLE[who]:
            markers |= {scanner_id, registered.name, registered.serial_number}
    for other in PRINCIPALS.values():
        if other.org_id != who.org_id and other is not SUPPORT:
            markers |= {other.sub, other.email or ""}
            markers.add(other.org_id)
    return markers - {""}


async def test_access_matrix_over_two_organisations(two_orgs: Harness) -> None:
    h = two_orgs
    await h.generate(SUPPORT, A1)
    await h.generate(SUPPORT, B1)
    mismatches, leaks = [], []
    not_found_bodies: dict[str, set[str]] = {}
    for name, method, template, body, expected_by_level in ENDPOINTS:
        for label, who in PRINCIPALS.items():
            for scanner in (A1, B1, MISSING):
                kwargs: dict[str, Any] = {}
                if body == "other":
                    kwargs["json"] = {"recipient_user_id": OTHER_RECIPIENT[scanner]}
                response = await h.call(who, method, template.format(s=scanner), **kwargs)
                level = LEVEL[(who, scanner)]
                if response.status_code != expected_by_level[level]:
                    mismatches.append(
                        f"{name} by {label} on {scanner} ({level}): "
                        f"{response.status_code}, expected "
                        f"{expected_by_level[level]} {response.text[:200]}"
                    )
                if found := [m for m in foreign_markers(who) if m in response.text]:
                    leaks.append(f"{name} by {label} on {scanner}: {found}")
                if response.status_code == 404:
                    assert response.headers["content-type"] == "application/problem+json"
                    not_found_bodies.setdefault(name, set()).add(response.text)
    assert not mismatches, "\n".join(mismatches)
    assert not leaks, "\n".join(leaks)
    # A scanner of another organisation is indistinguishable from one that does not exist.
    assert all(len(bodies) == 1 for bodies in not_found_bodies.values()), not_found_bodies

    # The list: exactly what each caller can view, with what they can do.
    for label, who in PRINCIPALS.items():
        response = await h.call(who, "GET", "/v1/scanners")
        assert response.status_code == 200
        listed = {s["scanner_id"]: s["can_manage"] for s in response.json()}
        assert listed == VISIBLE[who], label
        if found := [m for m in foreign_markers(who) if m in response.text]:
            leaks.append(f"list by {label}: {found}")
    assert not leaks, "\n".join(leaks)


async def test_scanner_list_carries_token_and_authorisation_status(two_orgs: Harness) -> None:
    h = two_orgs
    token = await h.generate(ADMIN_A, A1)
    response = await h.call(USER_A, "GET", "/v1/scanners")
    assert response.json() == [
        {
            "scanner_id": A1,
            "org_id": "org-a",
            "name": SCANNERS[A1].name,
            "serial_number": SCANNERS[A1].serial_number,
            "model": "LVS",
            "token_status": "active",
            "token_expires_at": token["expires_at"],
            "authorisation_status": "unauthorised",
            "authorised_at": None,
            "can_manage": False,
        }
    ]
    assert "code" not in response.text
    listed = {s["scanner_id"]: s for s in (await h.call(ADMIN_A, "GET", "/v1/scanners")).json()}
    assert listed[A2]["token_status"] is None and listed[A2]["token_expires_at"] is None
    assert (
        await h.call(ADMIN_A, "DELETE", f"/v1/scanners/{A1}/authorisation-token")
    ).status_code == 204
    listed = {s["scanner_id"]: s for s in (await h.call(ADMIN_A, "GET", "/v1/scanners")).json()}
    assert listed[A1]["token_status"] == "revoked"


# ------------------------------------------------------------------------------------ JWTs


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(h: Harness, who: Who) -> str:
    """The classic algorithm confusion: HMAC-signed with the public key as the secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {
        "sub": who.sub,
        "org_id": who.org_id,
        "roles": list(who.roles),
        "iss": h.identity.issuer,
        "aud": h.identity.audience,
        "exp": 4102444800,
    }
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(
        h.identity.public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256
    ).digest()
    return f"{header}.{payload}.{_b64(signature)}"


async def test_bad_bearer_tokens_are_refused_with_401(two_orgs: Harness) -> None:
    h = two_orgs
    who = SUPPORT
    roles = list(who.roles)
    other_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(65537, 2048)
    unsigned = jwt.encode(
        {
            "sub": who.sub,
            "org_id": who.org_id,
            "roles": roles,
            "iss": h.identity.issuer,
            "aud": h.identity.audience,
            "exp": 4102444800,
        },
        None,
        algorithm="none",
    )
    bad = {
        "alg none": unsigned,
        "wrong key": h.identity.mint(who.sub, who.org_id, roles, key=other_key),
        "RS256 by an unknown key": h.identity.mint(
            who.sub, who.org_id, roles, key=rsa_key, alg="RS256"
        ),
        "HS256 with the public key": hs256_with_public_key(h, who),
        "expired": h.identity.mint(who.sub, who.org_id, roles, lifetime=timedelta(minutes=-5)),
        "wrong issuer": h.identity.mint(who.sub, who.org_id, roles, iss="https://evil.example/"),
        "wrong audience": h.identity.mint(who.sub, who.org_id, roles, aud="another-service"),
        "no organisation": h.identity.mint(who.sub, "", roles),
        "garbage": "not.a.jwt",
    }
    good = h.identity.mint(who.sub, who.org_id, roles)
    paths = [("GET", "/v1/scanners"), *[(m, t.format(s=A1)) for _, m, t, _, _ in ENDPOINTS]]
    for method, path in paths:
        response = await h.client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"] == "application/problem+json"
        response = await h.client.request(method, path, headers={"Authorization": f"Basic {good}"})
        assert response.status_code == 401
    for label, token in bad.items():
        response = await h.client.get("/v1/scanners", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, label
        assert response.headers["www-authenticate"].startswith("Bearer"), label
        response = await h.client.post(
            f"/v1/scanners/{A1}/authorisation-token", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, label
    for open_path in ("/healthz", "/readyz", "/metrics"):  # operations need no JWT
        assert (await h.client.get(open_path)).status_code == 200, open_path
    ok = await h.client.get("/v1/scanners", headers={"Authorization": f"Bearer {good}"})
    assert ok.status_code == 200 and len(ok.json()) == 3
    # nothing was issued by the refused requests
    assert await h.fetch("SELECT 1 FROM tokens") == []
