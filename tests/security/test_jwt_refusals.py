"""Bearer JWTs the token-issuer must refuse, sent to the real process on every route it serves:
`alg: none`, a wrong key, an RS256 or HS256 token where the key is ES256, expired, not yet
valid, without `exp`, a wrong issuer or audience, claims changed after signing, a cut signature,
garbage; and no token, or another scheme. Each gets 401 with `WWW-Authenticate: Bearer` as a
problem document that does not repeat the token, and none has an effect."""

from __future__ import annotations

import pytest
from fault_kit import Rig, forged_jwts

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCANNER = "sc-quarry-1"  # a demo scanner the demo admin manages
ROUTES = [
    ("GET", "/v1/scanners", None),
    ("POST", f"/v1/scanners/{SCANNER}/authorisation-token", None),
    ("GET", f"/v1/scanners/{SCANNER}/authorisation-token", None),
    ("DELETE", f"/v1/scanners/{SCANNER}/authorisation-token", None),
    ("POST", f"/v1/scanners/{SCANNER}/authorisation-token/email", {"recipient_user_id": "u-bob"}),
    ("GET", f"/v1/scanners/{SCANNER}/users", None),
    ("GET", f"/v1/scanners/{SCANNER}/authorisation", None),
    ("DELETE", f"/v1/scanners/{SCANNER}/authorisation", None),
]


async def issuer_events(rig: Rig) -> int:
    """Events the token-issuer published about the scanner the refused requests named."""
    events = [*await rig.events(PUBLIC_TOPIC), *await rig.events(NOTIFICATIONS_TOPIC)]
    return sum(
        1 for e in events if e.source == "scanner-auth/token-issuer" and e.subject == SCANNER
    )


async def tokens_of(rig: Rig) -> int:
    return int(
        await rig.fetchval(
            "token-issuer", "SELECT count(*) FROM tokens WHERE scanner_id = $1", SCANNER
        )
    )


async def test_bad_bearer_tokens_get_401_on_every_route_and_change_nothing(rig: Rig) -> None:
    alice = next(u for u in rig.system.demo.users if u.user_id == "u-alice")
    forged = forged_jwts(rig.stack.identity, alice.user_id, alice.org_id, list(alice.roles))
    good = rig.token_for("u-alice")
    headers: dict[str, dict[str, str]] = {
        label: {"Authorization": f"Bearer {token}"} for label, token in forged.items()
    }
    headers |= {
        "no Authorization header": {},
        "bearer scheme without a token": {"Authorization": "Bearer"},
        "Basic scheme with a valid JWT": {"Authorization": f"Basic {good}"},
        "the JWT alone, without a scheme": {"Authorization": good},
    }
    events_before = await issuer_events(rig)
    tokens_before = await tokens_of(rig)
    async with rig.device("token-issuer") as client:
        outcomes: dict[str, list[int]] = {}
        problems = []
        for label, header in headers.items():
            statuses = []
            for method, path, body in ROUTES:
                r = await client.request(method, path, headers=header, json=body)
                statuses.append(r.status_code)
                if r.status_code != 401:
                    continue
                if not r.headers.get("www-authenticate", "").startswith("Bearer"):
                    problems.append(f"{label} {method} {path}: no Bearer challenge")
                if r.headers.get("content-type") != "application/problem+json":
                    problems.append(f"{label} {method} {path}: {r.headers.get('content-type')}")
                token = header.get("Authorization", "").partition(" ")[2] or "-"
                if len(token) > 8 and token in r.text:
                    problems.append(f"{label} {method} {path}: the token is in the body")
            outcomes[label] = statuses
        ok = await client.get("/v1/scanners", headers={"Authorization": f"Bearer {good}"})
    await rig.outbox_empty("token-issuer")
    tokens_after = await tokens_of(rig)
    events_after = await issuer_events(rig)
    refused = sum(s.count(401) for s in outcomes.values())
    print(
        f"bad JWTs: {len(headers)} kinds x {len(ROUTES)} routes: refused with 401={refused} "
        f"of {len(headers) * len(ROUTES)}; tokens issued={tokens_after - tokens_before} "
        f"events={events_after - events_before}; the valid JWT: {ok.status_code}"
    )
    wrong = {label: s for label, s in outcomes.items() if set(s) != {401}}
    assert not wrong, f"not refused with 401: {wrong}"
    assert not problems, problems
    assert tokens_after == tokens_before and events_after == events_before
    assert ok.status_code == 200  # the same request with a good token works
