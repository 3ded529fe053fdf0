"""The VM console in Chromium: the vendored noVNC asks the portal for a token and draws the
guest's screen through the console proxy, with the portal's CSP (no inline script; the
proxy's origin added to connect-src on this page only)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from playwright.sync_api import expect

from apps.audit.models import AuditEvent
from apps.vms.collector import domain_refresh
from apps.vms.models import ConsoleSession

from .conftest import login, page_log, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]


@contextmanager
def explained(page):
    """On a failed check, say how far the console got: token minted, redeemed by the proxy,
    audited; and what the page saw (console messages, requests and their failures)."""
    try:
        yield
    except AssertionError as exc:
        sessions = list(ConsoleSession.objects.values("pk", "created_at", "redeemed_at", "ended_at"))
        events = list(AuditEvent.objects.filter(action__startswith="vms.console.").values_list("action", "outcome",
                                                                                              "error"))  # fmt: skip
        raise AssertionError(f"{exc}\nsessions: {sessions}\naudit: {events}\n{page_log(page)}") from None


def test_an_operator_sees_the_guest_screen_in_the_browser(live_server, operator, vm, page, console_proxy_url,
                                                           settings, browser_problems):  # fmt: skip
    settings.CONSOLE_PUBLIC_URL = console_proxy_url
    domain_refresh(vm.host, vm.name, str(vm.uuid), "started")  # as the collector does on the start event
    login(page, live_server, operator.username)
    page.goto(f"/vms/{vm.host.name}/{vm.name}/")
    expect(page.get_by_test_id("security-summary")).to_be_visible()
    screenshot(page, "vm-security")
    # The network fails twice on the way (as Chromium's net::ERR_NETWORK_CHANGED does when the
    # host's interfaces change): a module file of noVNC once, which the page loads again, then
    # every token request, which the page reports with "Try again" instead of hanging.
    cut: list[str] = []

    def fail_once(route):
        if route.request.url in cut:
            route.continue_()
        else:
            cut.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/vendor/novnc/core/websock.js", fail_once)
    page.route("**/console/token/", lambda route: route.abort("internetdisconnected"))
    page.get_by_test_id("console-button").click()
    with explained(page):
        expect(page.get_by_test_id("console-status")).to_contain_text("Could not ask for a console")
        expect(page.get_by_test_id("console-retry")).to_be_visible()
    screenshot(page, "console-failed")
    assert len(cut) == 1 and not ConsoleSession.objects.exists()
    for _ in range(3):  # websock.js once, the token request twice (sent again once on a network error)
        browser_problems.expect("ERR_INTERNET_DISCONNECTED", page)
    page.unroute("**/console/token/")
    page.get_by_test_id("console-retry").click()
    with explained(page):
        expect(page.get_by_test_id("console-status")).to_have_text("Connected.")
    canvas = page.locator("#console-screen canvas")
    expect(canvas).to_be_visible()
    # SeaBIOS' text on black: more than one colour on the canvas once the first frame is drawn
    page.wait_for_function(
        """() => { const c = document.querySelector('#console-screen canvas');
                   if (!c || !c.width || !c.height) return false;
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   const seen = new Set();
                   for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]);
                   return seen.size > 1; }"""
    )
    screenshot(page, "console")
    page.locator("#console-disconnect").click()
    expect(page.get_by_test_id("console-status")).to_have_text("Disconnected.")
    events = AuditEvent.objects.filter(action__startswith="vms.console.").order_by("id")
    actions = list(events.values_list("action", flat=True))
    assert actions[:2] == ["vms.console.open", "vms.console.start"]
