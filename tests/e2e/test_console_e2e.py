"""The VM console in Chromium: the vendored noVNC asks the portal for a token and draws the
guest's screen through the console proxy, with the portal's CSP (no inline script; the
proxy's origin added to connect-src on this page only)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from apps.audit.models import AuditEvent
from apps.vms.collector import domain_refresh
from apps.vms.models import ConsoleSession

from .conftest import login, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]


def test_an_operator_sees_the_guest_screen_in_the_browser(live_server, operator, vm, page, console_proxy_url,
                                                           settings):  # fmt: skip
    settings.CONSOLE_PUBLIC_URL = console_proxy_url
    domain_refresh(vm.host, vm.name, str(vm.uuid), "started")  # as the collector does on the start event
    login(page, live_server, operator.username)
    page.goto(f"/vms/{vm.host.name}/{vm.name}/")
    expect(page.get_by_test_id("security-summary")).to_be_visible()
    screenshot(page, "vm-security")
    page.get_by_test_id("console-button").click()
    try:
        expect(page.get_by_test_id("console-status")).to_have_text("Connected.")
    except AssertionError as exc:  # say how far it got: token minted, redeemed by the proxy, audited
        sessions = list(ConsoleSession.objects.values("pk", "created_at", "redeemed_at", "ended_at"))
        events = list(AuditEvent.objects.filter(action__startswith="vms.console.").values_list("action", "outcome",
                                                                                              "error"))  # fmt: skip
        raise AssertionError(f"{exc}\nsessions: {sessions}\naudit: {events}") from None
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
