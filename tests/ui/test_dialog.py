"""The "Authorise scanner" dialog and its pages, used in a real browser as MyScanner's users use
them, against the four services as processes: a manager generates, copies and emails a code; a
user with access sees it without the cog menu; another organisation sees nothing; the page
follows a redemption; every error reads clearly; the host application hands the page its token.
The last test writes the README's screenshots into docs/screenshots/."""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from scanner_auth.devstack import System
from scanner_auth_shared.events import PUBLIC_TOPIC
from scanner_auth_shared.testing.kafka import wait_for_events
from scanner_auth_shared.testing.waiting import wait_until

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set"),
]

CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SLOW = 30_000  # ms: events crossing Kafka on a busy two-core machine


def latest(system: System, sid: str, user: str = "ADMIN_JWT") -> dict[str, Any]:
    with system.as_user(user) as client:
        r = client.get(f"/v1/scanners/{sid}/authorisation-token")
        assert r.status_code == 200, r.text
        return dict(r.json())


def generate(system: System, sid: str) -> str:
    with system.as_user("ADMIN_JWT") as admin:
        r = admin.post(f"/v1/scanners/{sid}/authorisation-token")
        assert r.status_code == 201, r.text
        return str(r.json()["code"])


def redeem(system: System, sid: str, code: str, serial: str) -> httpx.Response:
    """What the person at the scanner does, once the redeemer knows of the code (it learns
    of it from TokenIssued; a person takes longer to type it)."""
    token_id = latest(system, sid)["token_id"]
    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    in_thread(
        wait_for_events(
            system.bootstrap,
            PUBLIC_TOPIC,
            "TokenIssued",
            match=lambda e: e.data["token_id"] == token_id,
        )
    )
    time.sleep(1.0)
    with system.device("redeemer") as device:
        return device.post("/v1/authorisations", json={"code": code, "serial_number": serial})


def in_thread(coroutine: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def authorised(system: System, sid: str) -> bool:
    with system.as_user("ADMIN_JWT") as admin:
        return bool(admin.get(f"/v1/scanners/{sid}/authorisation").json()["status"] == "authorised")


def open_dialog(page: Any) -> Any:
    page.get_by_role("button", name="Scanner actions").click()
    page.get_by_role("menuitem", name="Authorise scanner…").click()
    dialog = page.get_by_role("dialog", name="Authorise scanner")
    expect(dialog).to_be_visible()
    return dialog


def focus_is_in_dialog(page: Any) -> bool:
    return bool(page.evaluate("document.activeElement?.closest('#authorise-dialog') != null"))


# ------------------------------------------------------------------------------------ managers


def test_a_manager_generates_copies_emails_replaces_and_revokes(system: System, pages: Any) -> None:
    page = pages.open("u-alice")
    page.get_by_role("link", name=re.compile("Quarry gate")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Quarry gate")

    # The cog menu, by keyboard: Enter opens it on its first option.
    cog = page.get_by_role("button", name="Scanner actions")
    cog.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("menuitem", name="Authorise scanner…")).to_be_focused()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Authorise scanner")
    expect(dialog).to_be_visible()
    assert focus_is_in_dialog(page)

    dialog.get_by_role("button", name="Generate code").click()
    shown = page.locator("#dialog-code")
    expect(shown).to_have_text(CODE)
    code = shown.text_content()
    assert latest(system, "sc-quarry-1")["code"] == code
    expect(page.locator("#page-code")).to_have_text(code)  # the page behind follows

    # Copy: the clipboard holds the code, and the dialog says so.
    dialog.get_by_role("button", name="Copy to clipboard").click()
    expect(page.locator("#dialog-notice")).to_have_text("Code copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == code

    # Email it to Bob, chosen among those who can view the scanner: it reaches the SMTP sink.
    page.locator("#recipient option[value='u-bob']").wait_for(state="attached")
    page.select_option("#recipient", "u-bob")
    dialog.get_by_role("button", name="Send").click()
    expect(page.locator("#dialog-notice")).to_contain_text("Email on its way to Bob Operator")
    assert system.stack.mail is not None
    mail = system.stack.mail
    wait_until(
        lambda: [m for m in mail.to("bob@quarry.example") if code in m.parts()["text/plain"]],
        SLOW / 1000,
        "the email with the code",
    )

    # Focus stays in the dialog, both ways round.
    for key in ["Tab"] * 10 + ["Shift+Tab"] * 10:
        page.keyboard.press(key)
        assert focus_is_in_dialog(page), key

    # Replacing an active code asks first; keeping it changes nothing.
    dialog.get_by_role("button", name="Generate new code").click()
    confirm = page.get_by_role("alertdialog", name="Replace the active code?")
    expect(confirm).to_be_visible()
    expect(confirm.get_by_role("button", name="Keep current code")).to_be_focused()
    confirm.get_by_role("button", name="Keep current code").click()
    expect(shown).to_have_text(code)
    assert latest(system, "sc-quarry-1")["code"] == code
    dialog.get_by_role("button", name="Generate new code").click()
    confirm.get_by_role("button", name="Replace code").click()
    expect(shown).not_to_have_text(code)
    expect(shown).to_have_text(CODE)
    replacement = shown.text_content()
    assert latest(system, "sc-quarry-1")["code"] == replacement

    # Revoke, after confirming.
    dialog.get_by_role("button", name="Revoke code").click()
    page.get_by_role("alertdialog", name="Revoke this code?").get_by_role(
        "button", name="Revoke code"
    ).click()
    expect(page.locator("#dialog-notice")).to_have_text("The code was revoked.")
    expect(shown).to_have_count(0)
    assert latest(system, "sc-quarry-1")["status"] == "revoked"

    # Escape closes the dialog and gives focus back to the cog.
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(cog).to_be_focused()
    expect(page.locator("main")).to_contain_text("The last code was revoked")


# ------------------------------------------------------------------------------------ viewers


def test_a_user_with_access_sees_the_code_but_no_cog_menu(system: System, pages: Any) -> None:
    code = generate(system, "sc-quarry-1")
    page = pages.open("u-bob")
    rows = page.locator(".scanner-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Quarry gate")
    expect(rows.first).to_contain_text("Code active")
    rows.first.click()

    expect(page.locator("#page-code")).to_have_text(code)
    expect(page.locator(".time-left")).to_have_text(re.compile(r"^2 days 23 hours left$"))
    expect(page.get_by_role("button", name="Scanner actions")).to_have_count(0)
    expect(page.get_by_role("dialog")).to_have_count(0)
    # The code is spelt out for screen readers.
    expect(page.locator("main")).to_contain_text(
        "Code: " + ", ".join(" ".join(group) for group in code.split("-"))
    )

    page.get_by_role("button", name="Copy code").click()
    expect(page.locator("#page-notice")).to_have_text("Code copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == code
    page.get_by_role("button", name="Email me the code").click()
    expect(page.locator("#page-notice")).to_have_text(
        "Email on its way to you (bob@quarry.example)."
    )


def test_a_user_of_another_organisation_sees_nothing(system: System, pages: Any) -> None:
    code = generate(system, "sc-quarry-1")
    page = pages.open("u-olga")
    rows = page.locator(".scanner-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Harbour loader")

    page.evaluate("location.hash = '#/scanners/sc-quarry-1'")
    expect(page.get_by_role("alert")).to_contain_text(
        "does not exist, was removed, or you do not have access to it"
    )
    expect(page.locator("[data-code]")).to_have_count(0)
    expect(page.get_by_role("button", name="Scanner actions")).to_have_count(0)
    text = page.locator("body").inner_text()
    assert code not in text and "Quarry gate" not in text and "LVS-10001" not in text


# ------------------------------------------------------------------------------------ following


def test_the_page_shows_the_scanner_authorised_once_it_redeems(system: System, pages: Any) -> None:
    page = pages.open("u-alice", route="scanners/sc-quarry-3")
    expect(page.locator("#authorisation-status")).to_have_text("Not authorised")
    dialog = open_dialog(page)
    dialog.get_by_role("button", name="Generate code").click()
    expect(page.locator("#dialog-code")).to_have_text(CODE)
    code = page.locator("#dialog-code").text_content()
    page.evaluate("window.sameDocument = true")

    # The person at the scanner types it in.
    r = redeem(system, "sc-quarry-3", code.lower().replace("-", " "), "LVS-10003")
    assert r.status_code == 201, r.text

    expect(page.locator("#dialog-notice")).to_have_text(
        "Weighbridge is now authorised.", timeout=SLOW
    )
    expect(page.locator("#authorisation-status")).to_have_text("Authorised")
    expect(page.locator("[data-code]")).to_have_count(0)
    assert page.evaluate("window.sameDocument") is True  # no reload
    page.keyboard.press("Escape")
    expect(page.locator("main")).to_contain_text("The last code was entered on the scanner")

    # …and a manager can deauthorise it from the same cog menu.
    page.get_by_role("button", name="Scanner actions").click()
    page.get_by_role("menuitem", name="Deauthorise scanner…").click()
    page.get_by_role("alertdialog", name="Deauthorise Weighbridge?").get_by_role(
        "button", name="Deauthorise"
    ).click()
    expect(page.locator("#authorisation-status")).to_have_text("Not authorised")
    assert not authorised(system, "sc-quarry-3")


# ------------------------------------------------------------------------------------ errors


def answer(status: int | None, method: str | None = None) -> Any:
    """A route handler: an RFC 9457 problem with `status` (None: the network fails) for
    requests of `method` (any when None); other requests go through."""

    def handle(route: Any) -> None:
        if method is not None and route.request.method != method:
            route.continue_()
        elif status is None:
            route.abort("internetdisconnected")
        else:
            route.fulfill(
                status=status,
                content_type="application/problem+json",
                body=json.dumps({"type": "about:blank", "title": "Error", "status": status}),
            )

    return handle


def test_every_error_the_api_can_give_reads_clearly(system: System, pages: Any) -> None:
    generate(system, "sc-quarry-2")
    page = pages.open("u-alice")

    # Loading the list.
    for status, words in [
        (401, "sign-in is missing or has expired"),
        (500, "had a problem and could not load this page (error 500)"),
        (503, "(error 503)"),
        (None, "could not be reached"),
    ]:
        page.route("**/v1/scanners", answer(status))
        page.evaluate("location.hash = '#/?' + Math.random()")
        expect(page.get_by_role("alert")).to_contain_text(words)
        page.unroute("**/v1/scanners")

    # A scanner that is not there.
    page.evaluate("location.hash = '#/scanners/sc-nowhere'")
    expect(page.get_by_role("alert")).to_contain_text("This scanner does not exist")

    # Actions in the dialog.
    page.evaluate("location.hash = '#/scanners/sc-quarry-2'")
    dialog = open_dialog(page)
    alert = page.locator("#dialog-error")
    cases = [
        (
            "**/authorisation-token",
            "POST",
            403,
            "Generate new code",
            "you cannot generate a code. An organisation admin or Loadscan support can",
        ),
        ("**/authorisation-token", "POST", 404, "Generate new code", "This scanner does not exist"),
        ("**/authorisation-token", "POST", 502, "Generate new code", "(error 502)"),
        ("**/authorisation-token", "POST", None, "Generate new code", "could not be reached"),
        ("**/authorisation-token/email", "POST", 409, "Send", "There is no active code to email"),
        (
            "**/authorisation-token/email",
            "POST",
            422,
            "Send",
            "That person cannot receive the code",
        ),
        ("**/authorisation-token", "DELETE", 403, "Revoke code", "you cannot revoke the code"),
    ]
    for pattern, method, status, button, words in cases:
        page.route(pattern, answer(status, method))
        dialog.get_by_role("button", name=button, exact=True).click()
        confirm = page.get_by_role("alertdialog")
        if button in ("Generate new code", "Revoke code"):
            confirm.get_by_role("button", name=re.compile("^(Replace|Revoke) code$")).click()
        expect(alert).to_be_visible()
        expect(alert).to_contain_text(words)
        page.unroute(pattern)
    expect(page.locator("#dialog-code")).to_have_text(CODE)  # nothing really changed


# ------------------------------------------------------------------------------------ the host


def test_outside_dev_the_page_uses_the_token_the_host_gives_it(
    system: System, pages: Any, host_app: Any
) -> None:
    token = system.stack.identity.mint("u-bob", "org-quarry", [], "bob@quarry.example")

    # A #token= fragment: out of the address bar at once; used only once the user confirms who
    # it signs them in as; then in sessionStorage.
    page = pages.watch(pages.context().new_page())
    page.goto(pages.ui + f"#token={token}&next=/scanners/sc-quarry-1")
    confirm = page.get_by_role("alertdialog", name="Sign in from this link?")
    expect(confirm).to_contain_text("bob@quarry.example (user u-bob) from organisation org-quarry")
    assert "token" not in page.url
    confirm.get_by_role("button", name="Sign in as bob@quarry.example").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Quarry gate")
    assert "token" not in page.url and page.url.endswith("#/scanners/sc-quarry-1")
    assert page.evaluate("sessionStorage.getItem('scanner-auth.bearer')") == token
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Quarry gate")

    # Framed by the host application (an origin in UI_HOST_ORIGINS), which posts the token.
    host = pages.watch(pages.context().new_page())
    host.goto(f"{host_app.origin}/#ui={quote(pages.ui, safe='')}&token={token}")
    frame = host.frame_locator("#ui")
    expect(frame.locator(".scanner-row")).to_have_count(1)
    expect(frame.locator(".scanner-row")).to_contain_text("Quarry gate")
    ui_frame = next(f for f in host.frames if f.url.startswith(pages.ui))
    assert ui_frame.evaluate("sessionStorage.getItem('scanner-auth.bearer')") is None


def test_a_sign_in_link_from_someone_else_is_not_used_without_asking(
    system: System, pages: Any
) -> None:
    """Issue 18: /ui/#token=<the attacker's JWT> sent to a victim signed them in as the attacker
    at once (login CSRF: the victim then emails codes or works in the attacker's account)."""
    attacker = system.stack.identity.mint(
        "u-olga", "org-harbour", ["admin"], "olga@harbour.example"
    )
    page = pages.watch(pages.context().new_page())
    page.goto(pages.ui + f"#token={attacker}&next=/scanners/sc-harbour-1")
    confirm = page.get_by_role("alertdialog", name="Sign in from this link?")
    expect(confirm).to_contain_text(
        "olga@harbour.example (user u-olga) from organisation org-harbour"
    )
    # Nothing was asked of the API and nothing stored while the question is open.
    assert page.evaluate("sessionStorage.getItem('scanner-auth.bearer')") is None
    expect(page.locator("main h1")).to_have_count(0)
    expect(confirm.get_by_role("button", name="Don't sign in")).to_be_focused()  # the safe one
    confirm.get_by_role("button", name="Don't sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Choose a demo user")  # dev picker
    assert page.evaluate("sessionStorage.getItem('scanner-auth.bearer')") is None
    assert "token" not in page.url
    expect(page.locator(".scanner-row")).to_have_count(0)  # nothing of the sender's account


def test_an_email_over_the_hourly_quota_says_when_to_try_again(system: System, pages: Any) -> None:
    """Issue 18: EMAIL_LIMIT_PER_CODE_PER_HOUR (5) emails of one code, then 429 with Retry-After:
    the page says so, and when the code can be emailed again."""
    generate(system, "sc-quarry-2")
    with system.as_user("ADMIN_JWT") as admin:
        for _ in range(5):
            r = admin.post("/v1/scanners/sc-quarry-2/authorisation-token/email", json={})
            assert r.status_code == 202, r.text
    page = pages.open("u-alice", "scanners/sc-quarry-2")
    expect(page.locator("#page-code")).to_have_text(CODE)
    page.get_by_role("button", name="Email me the code").click()
    expect(page.locator("main")).to_contain_text(
        "This code was emailed too many times in the last hour, so MyScanner did not send it again."
    )
    expect(page.locator("main")).to_contain_text(
        re.compile(r"You can email it again in (59|60) minutes \(at \d\d:\d\d\)")
    )
    # In the dialog too, sending it to someone else.
    dialog = open_dialog(page)
    dialog.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("#dialog-error")).to_contain_text("You can email it again in")


def test_the_page_is_served_with_a_strict_policy(system: System) -> None:
    ui = system.url("token-issuer") + "/ui/"
    for path in ("", "app.js", "styles.css", "config.json"):
        r = httpx.get(ui + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "'unsafe-inline'" not in csp
        assert "require-trusted-types-for 'script'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    index = httpx.get(ui).text
    assert re.findall(r"<script[^>]*>", index) == ['<script type="module" src="app.js">']
    assert not re.search(r"\sstyle=|\son[a-z]+=", index)  # no inline style or handler


# ------------------------------------------------------------------------------------ screenshots

NOW = datetime(2025, 3, 11, 9, 30, tzinfo=UTC)
ISSUED = NOW - timedelta(hours=1, minutes=18)
EXAMPLE_CODE = "YD20-66YF-H255"  # the contract's example: no real code in a committed file


def _normalise(value: Any) -> Any:
    """The real answers, with the example code and fixed times: stable screenshots."""
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if v is not None and key == "code":
            out[key] = EXAMPLE_CODE
        elif v is not None and key == "issued_at":
            out[key] = ISSUED.isoformat()
        elif v is not None and key in ("expires_at", "token_expires_at"):
            out[key] = (ISSUED + timedelta(days=3)).isoformat()
        elif v is not None and key in ("authorised_at", "redeemed_at"):
            out[key] = (NOW - timedelta(days=2, hours=3)).isoformat()
        else:
            out[key] = _normalise(v)
    return out


def _stable(page: Any) -> None:
    def handle(route: Any) -> None:
        response = route.fetch()
        headers = {**response.headers, "date": format_datetime(NOW, usegmt=True)}
        body = response.body()
        if body and "json" in headers.get("content-type", ""):
            body = json.dumps(_normalise(json.loads(body))).encode()
            headers.pop("content-length", None)
        route.fulfill(status=response.status, headers=headers, body=body)

    page.route("**/v1/**", handle)
    page.clock.set_fixed_time(NOW)


def _save(page: Any, name: str, **options: Any) -> None:
    # Nothing sticks out sideways, on a phone either.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name
    page.evaluate("document.activeElement?.blur()")
    page.mouse.move(0, 0)
    png = page.screenshot(animations="disabled", caret="hide", **options)
    path = SCREENSHOTS / name
    if not path.exists() or path.read_bytes() != png:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)


def test_screenshots_of_the_list_the_properties_page_and_the_dialog(
    system: System, pages: Any
) -> None:
    # One scanner with an active code, one authorised, one with neither.
    code = generate(system, "sc-quarry-2")
    assert redeem(system, "sc-quarry-2", code, "MPS-20002").status_code == 201
    with system.as_user("ADMIN_JWT") as admin:
        admin.delete("/v1/scanners/sc-quarry-3/authorisation-token").raise_for_status()
        if authorised(system, "sc-quarry-3"):
            admin.delete("/v1/scanners/sc-quarry-3/authorisation").raise_for_status()
    generate(system, "sc-quarry-1")
    wait_until(lambda: authorised(system, "sc-quarry-2"), SLOW / 1000, "sc-quarry-2 authorised")

    for size, viewport in (("desktop", {"width": 1200, "height": 640}), ("phone", PHONE)):
        page = pages.open("u-alice", viewport=viewport, setup=_stable)
        expect(page.locator(".scanner-row")).to_have_count(3)
        expect(page.locator(".scanner-row").first).to_contain_text("2 days 22 hours left")
        _save(page, f"list-{size}.png", full_page=size == "phone")

        page.get_by_role("link", name=re.compile("Quarry gate")).click()
        expect(page.locator("#page-code")).to_have_text(EXAMPLE_CODE)
        _save(page, f"scanner-{size}.png", full_page=size == "phone")

        page.set_viewport_size({**viewport, "height": max(viewport["height"], 780)})
        dialog = open_dialog(page)
        page.locator("#recipient option[value='u-bob']").wait_for(state="attached")
        page.select_option("#recipient", "u-bob")
        dialog.get_by_role("button", name="Copy to clipboard").click()
        expect(page.locator("#dialog-notice")).to_have_text("Code copied to the clipboard.")
        expect(page.locator("#recipient")).to_have_value("u-bob")  # kept when redrawn
        _save(page, f"dialog-{size}.png")
