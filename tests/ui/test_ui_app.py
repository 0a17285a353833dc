"""How the token-issuer serves /ui/: headers, its two JSON documents, the dev identities only
when configured and only to this machine, and the settings that drive it. No browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from scanner_auth_shared.settings import ConfigurationError, load_settings
from scanner_auth_shared.testing.identity import TestIdentity
from token_issuer import ui
from token_issuer.settings import Settings

pytestmark = pytest.mark.unit

LOOPBACK = ("127.0.0.1", 50000)
ELSEWHERE = ("203.0.113.7", 50000)


def client(
    *, origins: str = "", identities: str | None = None, peer: tuple[str, int] = LOOPBACK
) -> httpx.AsyncClient:
    app = Starlette()
    app.mount("/ui", ui.ui_app(origins=ui.host_origins(origins), dev_identities_file=identities))
    transport = httpx.ASGITransport(app=app, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001")


async def test_every_answer_carries_the_strict_policy_and_nosniff() -> None:
    async with client() as http:
        for path in ("/ui/", "/ui/app.js", "/ui/styles.css", "/ui/config.json", "/ui/nothing"):
            r = await http.get(path)
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self';" in csp, path
            assert "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert (await http.get("/ui/app.js")).headers["content-type"].startswith("text/javascript")
        assert (await http.get("/ui/config.json")).headers["cache-control"] == "no-store"
        assert (await http.get("/ui/nothing")).status_code == 404


async def test_host_origins_may_frame_the_page_and_are_told_to_it() -> None:
    async with client(origins="https://my.myscanner.com, https://eu.myscanner.com/") as http:
        r = await http.get("/ui/config.json")
        assert r.json() == {
            "host_origins": ["https://my.myscanner.com", "https://eu.myscanner.com"],
            "dev_identities": False,
        }
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors https://my.myscanner.com https://eu.myscanner.com;" in csp
        assert "x-frame-options" not in r.headers


@pytest.mark.parametrize(
    "bad",
    [
        "my.myscanner.com",
        "https://",
        "javascript:alert(1)",
        "https://a.com/path",
        "https://*.myscanner.com",
        "https://a.com; script-src *",
    ],
)
def test_a_malformed_host_origin_stops_start_up_naming_the_variable(
    bad: str, monkeypatch: pytest.MonkeyPatch, test_secrets: Any
) -> None:
    identity = TestIdentity()
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://ti@db.invalid:5432/token_issuer")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.invalid:9092")
    monkeypatch.setenv("AUTH_PUBLIC_KEY_PEM", identity.public_pem)
    monkeypatch.setenv("AUTH_ISSUER", identity.issuer)
    monkeypatch.setenv("AUTH_AUDIENCE", identity.audience)
    monkeypatch.setenv("TOKEN_PEPPER", test_secrets.pepper)
    monkeypatch.setenv("SEALING_KEY", test_secrets.sealing_key)
    monkeypatch.setenv("CODE_ENCRYPTION_KEY", test_secrets.code_key)
    monkeypatch.setenv("UI_HOST_ORIGINS", f"https://ok.example,{bad}")
    with pytest.raises(ConfigurationError, match="UI_HOST_ORIGINS"):
        load_settings(Settings)
    monkeypatch.setenv("UI_HOST_ORIGINS", "https://ok.example")
    assert load_settings(Settings).ui_dev_identities_file is None


async def test_dev_identities_only_when_configured_and_only_to_this_machine(tmp_path: Path) -> None:
    document = {"users": [{"user_id": "u-alice", "label": "admin", "token": "a.b.c"}]}
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(document))

    async with client() as http:
        assert (await http.get("/ui/config.json")).json()["dev_identities"] is False
        assert (await http.get("/ui/dev/identities.json")).status_code == 404
    async with client(identities=str(path)) as http:
        assert (await http.get("/ui/config.json")).json()["dev_identities"] is True
        r = await http.get("/ui/dev/identities.json")
        assert r.status_code == 200 and r.json() == document
        assert r.headers["cache-control"] == "no-store"
    async with client(identities=str(path), peer=ELSEWHERE) as http:
        assert (await http.get("/ui/dev/identities.json")).status_code == 404
    async with client(identities=str(tmp_path / "missing.json")) as http:
        assert (await http.get("/ui/dev/identities.json")).status_code == 404


async def test_the_page_can_be_turned_off() -> None:
    class Off:
        ui_enabled = False
        ui_host_origins = ""
        ui_dev_identities_file = None

    app = Starlette()
    ui.mount(app, Off())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8001"
    ) as http:
        assert (await http.get("/ui/")).status_code == 404


def test_no_script_or_style_is_inline_and_no_html_is_built_from_strings() -> None:
    static = Path(ui.__file__).parent / "static"
    index = (static / "index.html").read_text()
    assert "<script>" not in index and " style=" not in index
    for script in static.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (script.name, sink)
        # The code stays in the page's memory: never logged, never stored.
        assert "console." not in text, script.name
        assert "localStorage" not in text, script.name
