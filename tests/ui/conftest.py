"""The reference web page (/ui/) in a real browser: Debian's Chromium (`apt-get install -y
chromium`), driven by Playwright for Python with its executable path set (Playwright's own
browser downloads are never used), against the whole system as processes."""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from scanner_auth.devstack import Stack, System
from scanner_auth_shared.testing.waiting import wait_until

CHROMIUM = os.environ.get("UI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}

# The host page of the postMessage test: MyScanner framing the dialog and handing it a token.
HOST_PAGE = """<!doctype html><meta charset="utf-8"><title>MyScanner host</title>
<iframe id="ui" title="Scanners" allow="clipboard-write" style="width:1200px;height:700px"></iframe>
<script>
  const params = new URLSearchParams(location.hash.slice(1));
  const frame = document.getElementById("ui");
  const target = new URL(params.get("ui")).origin;
  window.addEventListener("message", (event) => {
    if (event.origin !== target || event.source !== frame.contentWindow) return;
    document.body.dataset.last = event.data.type;
    if (event.data.type === "scanner-auth:ready") {
      frame.contentWindow.postMessage({type: "scanner-auth:token", token: params.get("token")},
                                      target);
    }
  });
  frame.src = params.get("ui");
</script>"""


class _HostHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = HOST_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@dataclass
class HostApp:
    server: http.server.ThreadingHTTPServer

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def host_app() -> Iterator[HostApp]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HostApp(server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def system(private_tmp: Any, host_app: HostApp) -> Iterator[System]:
    stack = Stack(
        private_tmp("ui-stack"),
        extra_env={
            "token-issuer": {
                "UI_HOST_ORIGINS": host_app.origin,
                # The tests email the demo admin's own address from several of them: only the
                # per-code quota (the default, 5) is reached, on purpose, by one test.
                "EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR": "1000",
            }
        },
    )
    try:
        stack.start_infrastructure()
        sys_ = System(stack)
        stack.enable_ui_dev_identities(sys_.demo)
        stack.start_services()
        stack.publish(*sys_.demo.events())
        with sys_.as_user("ADMIN_JWT") as admin, sys_.as_user("USER_JWT") as user:
            wait_until(
                lambda: (
                    len(admin.get("/v1/scanners").json()) == 3
                    and len(user.get("/v1/scanners").json()) == 1
                ),
                30,
                "the demo directory reached the token-issuer",
            )
        yield sys_
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (uv sync)"
    )
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    with sync_api.sync_playwright() as playwright:
        # launch() gives every browser a fresh, temporary user-data directory of its own.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Pages:
    """Opens pages as demo users and watches them for script errors and CSP refusals."""

    browser: Any
    system: System
    problems: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)

    @property
    def ui(self) -> str:
        return self.system.url("token-issuer") + "/ui/"

    def context(self, viewport: dict[str, int] = DESKTOP, **options: Any) -> Any:
        context = self.browser.new_context(
            viewport=viewport, locale="en-GB", timezone_id="UTC", **options
        )
        context.set_default_timeout(15_000)
        context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=self.system.url("token-issuer")
        )
        self.contexts.append(context)
        return context

    def watch(self, page: Any) -> Any:
        def on_console(message: Any) -> None:
            # A refused fetch (404 for "no code yet", or a test's injected error) is expected;
            # a script error or anything the Content-Security-Policy refused is not.
            text = message.text
            if message.type == "error" and "Failed to load resource" not in text:
                self.problems.append(f"console: {text}")
            if "Content Security Policy" in text or "Trusted Type" in text:
                self.problems.append(f"csp: {text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        return page

    def open(
        self,
        user_id: str | None,
        route: str = "",
        viewport: dict[str, int] = DESKTOP,
        setup: Callable[[Any], None] | None = None,
    ) -> Any:
        """A new tab signed in through the dev picker as `user_id`, at `#/<route>`."""
        page = self.watch(self.context(viewport).new_page())
        if setup is not None:
            setup(page)
        page.goto(self.ui)
        page.wait_for_selector("html[data-ready]")
        if user_id is not None:
            page.select_option("#acting-as", user_id)
            page.wait_for_selector("main h1")
        if route:
            page.evaluate("route => { location.hash = route }", f"#/{route}")
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.contexts.clear()


@pytest.fixture
def pages(browser: Any, system: System) -> Iterator[Pages]:
    pages = Pages(browser, system)
    try:
        yield pages
    finally:
        pages.close()
    assert pages.problems == [], pages.problems
