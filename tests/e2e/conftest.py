"""Browser end-to-end harness: Debian's Chromium driven by Playwright (sync API) against
pytest-django's live server, with the real Celery worker and the real libvirtd of
tests/conftest.py.

Every page a test opens fails the test on a browser console error or a Content Security
Policy violation (the portal's CSP forbids inline script and style): both reach us as
console messages of type "error", and uncaught script exceptions as page errors."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import PASSWORD, ROOT, totp_code

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = ROOT / "var" / "e2e-screenshots"
TIMEOUT_MS = 30_000  # generous waits, never a timed assertion

# Chromium fails every request still waiting for a connection when the host's IP addresses
# change (net::ERR_NETWORK_CHANGED): on this host a VM's tap interface getting its IPv6
# link-local address, ~1-2 s after the VM starts. That is the machine, not the page: such a
# "Failed to load resource" is kept in the page log (page_log) but is not a browser problem;
# the page must still recover (or say what failed), which the test's own checks see.
_NETWORK_CHANGED = re.compile(r"net::ERR_NETWORK_CHANGED")
IFA_F_TENTATIVE = 0x40
SETTLE_SECONDS = 10


def tentative_ipv6_addresses() -> list[str]:
    """Interfaces of this host whose IPv6 address is still in duplicate address detection
    (/proc/net/if_inet6: address, index, prefix length, scope, flags, name)."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:  # no IPv6 here: nothing will change
        return []
    return [f[5] for f in (line.split() for line in lines) if len(f) == 6 and int(f[4], 16) & IFA_F_TENTATIVE]


def wait_for_settled_network(timeout: float = SETTLE_SECONDS) -> None:
    """Wait (at most `timeout` s, then go on) until no IPv6 address of the host is
    tentative: the kernel announces it once detection ends, and Chromium then drops the
    page's queued requests with net::ERR_NETWORK_CHANGED."""
    deadline = time.monotonic() + timeout
    while tentative_ipv6_addresses() and time.monotonic() < deadline:
        time.sleep(0.1)


# Chromium reports CSP violations on the console; this makes sure each one is reported
# even where Chromium would stay quiet (e.g. report-only or a swallowed eval).
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
                " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="package")
def browser() -> Browser:
    """One Chromium for the tests of this package. Playwright's sync API keeps an asyncio
    loop running in this thread while it is started, and Django's ORM (which the tests use
    between browser steps) refuses to run under a running loop unless told it may: that
    permission lasts exactly as long as the browser, never into the rest of the suite."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if before is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture
def vm(vm):
    """The running VM of tests/conftest.py, once its tap interface has its IPv6 address
    (see wait_for_settled_network): the browser's requests are not cut by it."""
    wait_for_settled_network()
    return vm


class BrowserProblems(list):
    """Console errors, CSP violations and uncaught exceptions seen by a test's pages."""

    def expect(self, pattern: str, page: Page) -> None:
        """Wait for a problem matching pattern and take it off the list (for a test that
        provokes one on purpose)."""
        for _ in range(int(TIMEOUT_MS / 50)):
            for i, problem in enumerate(self):
                if re.search(pattern, problem):
                    del self[i]
                    return
            page.wait_for_timeout(50)  # lets Playwright deliver the browser's events
        raise AssertionError(f"expected a browser error matching {pattern!r}; saw {list(self)}")


@pytest.fixture
def browser_problems() -> BrowserProblems:
    return BrowserProblems()


@pytest.fixture
def new_page(browser, live_server, browser_problems):
    """Open a page in a fresh browser context (its own cookies): one per user of a test."""
    contexts = []

    def make(viewport: dict | None = None) -> Page:
        context = browser.new_context(base_url=live_server.url, viewport=viewport or DESKTOP)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(_CSP_LISTENER)
        contexts.append(context)
        page = context.new_page()

        def on_console(msg):
            if msg.type == "error" and not _NETWORK_CHANGED.search(msg.text):
                loc = msg.location or {}
                browser_problems.append(f"console error on {page.url}: {msg.text} ({loc.get('url', '')})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: browser_problems.append(f"uncaught exception on {page.url}: {exc}"))
        pending: set = set()
        page.on("request", lambda r: pending.add(r))
        page.on("requestfinished", lambda r: pending.discard(r))
        page.on("requestfailed", lambda r: pending.discard(r))
        _PAGE_LOGS[page] = PageLog(page, pending)
        pages.append((page, pending))
        return page

    pages: list = []
    yield make
    # Let the pages fall quiet before the database is flushed for the next test: stop
    # their htmx polling timers, then wait for requests already on their way to the live
    # server (a request still running after the flush would write into the next test).
    for page, pending in pages:
        if page.is_closed():
            continue
        page.evaluate(
            "() => { const last = setTimeout(() => {}, 0);"
            " for (let id = 0; id <= last; id++) { clearTimeout(id); clearInterval(id); } }"
        )
        for _ in range(int(TIMEOUT_MS / 50)):
            if not pending:
                break
            page.wait_for_timeout(50)
    for context in contexts:
        context.close()
    for page, _pending in pages:
        _PAGE_LOGS.pop(page, None)


class PageLog:
    """What one page did, for the message of a failing test: its console messages, its
    requests (status, or the reason they failed) and those still unanswered."""

    LIMIT = 200

    def __init__(self, page: Page, pending: set):
        self.start = time.monotonic()
        self.lines: list[str] = []
        self.pending = pending
        page.on("console", lambda m: self._add(f"console {m.type}: {m.text}"))
        page.on("pageerror", lambda exc: self._add(f"uncaught exception: {exc}"))
        page.on("response", lambda r: self._add(f"{r.status} {r.request.method} {r.url}"))
        page.on("requestfailed", lambda r: self._add(f"FAILED {r.method} {r.url}: {r.failure}"))
        page.on("websocket", self._websocket)

    def _add(self, line: str) -> None:
        if len(self.lines) < self.LIMIT:
            self.lines.append(f"{time.monotonic() - self.start:7.2f}s {line}")

    def _websocket(self, ws) -> None:
        self._add(f"websocket open {ws.url.split('?', 1)[0]}")
        ws.on("socketerror", lambda err: self._add(f"websocket error: {err}"))
        ws.on("close", lambda _ws: self._add("websocket closed"))

    def report(self) -> str:
        waiting = [f"{r.method} {r.url}" for r in list(self.pending)]
        return "\n    ".join(["page log:", *self.lines, f"requests still unanswered: {waiting or 'none'}"])


_PAGE_LOGS: dict = {}


def page_log(page: Page) -> str:
    """The page's console messages and network requests so far (see PageLog)."""
    log = _PAGE_LOGS.get(page)
    return log.report() if log else "no page log"


@pytest.fixture
def page(new_page) -> Page:
    return new_page()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test passes only if its pages saw no console error nor CSP violation."""
    result = yield
    problems = item.funcargs.get("browser_problems")
    if problems:
        raise AssertionError("the browser reported problems:\n  " + "\n  ".join(problems))
    return result


expect.set_options(timeout=TIMEOUT_MS)


def login(page: Page, live_server, username: str, password: str = PASSWORD) -> None:
    """Sign in through the login form (and the code step, for a user with two-factor
    sign-in: admins) and wait until the portal has let us in."""
    from django.contrib.auth import get_user_model

    from apps.accounts.mfa_status import mfa_enabled

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))
    user = get_user_model().objects.get(username=username)
    if mfa_enabled(user):
        expect(page).to_have_url(re.compile(r"/users/two-factor/verify/"))
        page.fill("input[name=code]", totp_code(user))
        page.click("main form button[type=submit]")
        expect(page).not_to_have_url(re.compile(r"/users/two-factor/verify/"))
    expect(page.locator("header nav")).to_contain_text(f"Sign out {username}")


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}-{page.viewport_size['width']}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def check_phone_layout(page: Page, name: str | None = None) -> None:
    """Re-lay the current page out at phone size (390x844) and check it still fits: no
    sideways scrolling of the page itself (wide tables scroll inside .table-wrap), the
    heading and the navigation are on screen."""
    page.set_viewport_size(PHONE)
    page.wait_for_function("window.innerWidth === 390")
    overflow = page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const out = [];
            for (const el of document.querySelectorAll("body *")) {
                if (el.closest(".table-wrap")) continue;
                const r = el.getBoundingClientRect();
                if (r.width && (r.right > width + 1 || r.left < -1)) out.push(el.tagName + (el.id ? "#" + el.id : "")
                    + (el.className && typeof el.className === "string" ? "." + el.className : "")
                    + " " + Math.round(r.left) + ".." + Math.round(r.right));
            }
            return {scroll: document.documentElement.scrollWidth, width: width, out: out.slice(0, 10)};
        }"""
    )
    assert overflow["scroll"] <= overflow["width"] and not overflow["out"], (
        f"{page.url} is wider than a phone ({overflow['scroll']}px > {overflow['width']}px): {overflow['out']}"
    )
    heading = page.locator("main h1, main h2").first
    expect(heading).to_be_visible()
    box = heading.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1, f"heading off screen: {box}"
    if name:
        screenshot(page, name)
