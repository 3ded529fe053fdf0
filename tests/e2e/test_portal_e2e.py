"""The portal in a real browser: sign in, VM lifecycle jobs watched to the end, the audit
trail, refusals, confirmations, and every page of the navigation at desktop and phone
width. Real Chromium, live server, Celery worker and libvirtd."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from tests.conftest import PASSWORD

from .conftest import DESKTOP, check_phone_layout, login, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]


def vm_url(vm) -> str:
    return f"/vms/{vm.host.name}/{vm.name}/"


def open_vm_from_list(page, vm):
    page.goto("/vms/")
    row = page.locator(f"#vm-table tr[data-vm='{vm.name}']")
    expect(row.get_by_test_id("state")).to_have_text("running")
    row.get_by_role("link", name=vm.name).click()
    expect(page).to_have_url(re.compile(re.escape(vm_url(vm)) + "$"))
    expect(page.get_by_test_id("vm-state")).to_have_text("running")


def action_button(page, action: str):
    return page.locator(f"#vm-summary button[data-action='{action}']")


def offered_actions(page) -> list[str]:
    return sorted(page.locator("#vm-summary button[data-action]").evaluate_all("bs => bs.map(b => b.dataset.action)"))


def watch_job(page, count: int, new_state: str) -> int:
    """The newest job's progress partial polls until it says 'succeeded'; then the VM
    summary (state badge and buttons) is refreshed for the new state."""
    jobs = page.locator("#vm-jobs .job")
    expect(jobs).to_have_count(count)
    job = jobs.first  # newest on top
    expect(job).to_have_attribute("data-state", "succeeded")
    expect(job.locator(".badge")).to_have_text("succeeded")
    expect(job.locator("progress")).to_have_attribute("value", "100")
    expect(page.get_by_test_id("vm-state")).to_have_text(new_state)
    return int(job.get_attribute("data-job"))


def csrf_token(page) -> str:
    """The token the page's own htmx requests send (hx-headers on <body>), checked
    against the CSRF cookie."""
    token = json.loads(page.locator("body").get_attribute("hx-headers"))["X-CSRFToken"]
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert cookies.get("csrftoken"), "no CSRF cookie"
    return token


def test_operator_suspends_and_resumes_a_vm_and_the_auditor_sees_it(
    live_server, worker, operator, auditor, vm, page, new_page
):
    login(page, live_server, operator.username)
    open_vm_from_list(page, vm)
    assert offered_actions(page) == ["force_off", "shutdown", "suspend"]  # what a running VM allows

    action_button(page, "suspend").click()
    suspend_job = watch_job(page, 1, "paused")
    assert gw.domain_state(vm.host.uri, vm.name) == "paused"
    assert offered_actions(page) == ["force_off", "resume", "shutdown"]

    action_button(page, "resume").click()
    resume_job = watch_job(page, 2, "running")
    assert gw.domain_state(vm.host.uri, vm.name) == "running"
    assert offered_actions(page) == ["force_off", "shutdown", "suspend"]
    assert Job.objects.get(pk=suspend_job).kind == "vms.vm.suspend"
    assert Job.objects.get(pk=resume_job).kind == "vms.vm.resume"

    # the job page shows the finished job and its log
    page.locator(f"#job-{suspend_job} a", has_text=f"#{suspend_job}").click()
    expect(page).to_have_url(re.compile(rf"/jobs/{suspend_job}/$"))
    expect(page.locator(f"#job-{suspend_job}")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("main")).to_contain_text("finished")

    audit = new_page()
    login(audit, live_server, auditor.username)
    audit.goto("/audit/")
    audit.fill("input[name=target]", vm.name)
    audit.locator("input[name=target]").press("Enter")
    success = audit.locator("#audit-table tr[data-action='vms.vm.suspend'][data-outcome='success']")
    expect(success).to_have_count(1)
    expect(success).to_contain_text(vm.name)
    expect(success).to_contain_text(operator.username)
    expect(success.get_by_role("link", name=f"job {suspend_job}")).to_be_visible()
    expect(audit.locator("#audit-table tr[data-action='vms.vm.resume'][data-outcome='success']")).to_have_count(1)
    # the filter is applied (htmx swaps the table in): every row left is about this VM
    expect(audit.locator("#audit-table tbody tr").filter(has_not_text=vm.name)).to_have_count(0)
    targets = audit.locator("#audit-table tbody tr td:nth-child(5)").all_inner_texts()
    assert targets and set(targets) == {vm.name}


def test_viewer_sees_no_actions_and_a_forged_post_is_refused(live_server, worker, viewer, vm, page):
    login(page, live_server, viewer.username)
    page.goto(vm_url(vm))
    expect(page.get_by_test_id("vm-state")).to_have_text("running")
    expect(page.locator("#vm-summary h3").first).to_be_visible()  # the summary did render
    expect(page.locator("button[data-action], .actions, #vm-summary form")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Suspend|Force|Shutdown|snapshot", re.I))).to_have_count(0)

    # the viewer's own browser session, with a valid CSRF token, forges the POST
    response = page.request.post(
        f"{live_server.url}{vm_url(vm)}action/",
        form={"action": "suspend"},
        headers={"X-CSRFToken": csrf_token(page), "Referer": page.url},
    )
    assert response.status == 403, response.text()
    assert "permission" in response.text()  # refused by the portal's RBAC, not by the CSRF check
    assert gw.domain_state(vm.host.uri, vm.name) == "running"
    assert not Job.objects.exists()
    denied = AuditEvent.objects.filter(actor_name=viewer.username, outcome="denied")
    assert denied.exists(), "the refusal was not audited"
    page.reload()
    expect(page.get_by_test_id("vm-state")).to_have_text("running")


def test_force_off_asks_first_dismissing_changes_nothing_accepting_runs_the_job(
    live_server, worker, operator, vm, page
):
    login(page, live_server, operator.username)
    page.goto(vm_url(vm))
    expect(page.get_by_test_id("vm-state")).to_have_text("running")

    dialogs: list[str] = []
    answers = iter([False, True, True])

    def answer(dialog):
        dialogs.append(dialog.message)
        dialog.accept() if next(answers) else dialog.dismiss()

    page.on("dialog", answer)

    action_button(page, "force_off").click()  # dismissed
    assert len(dialogs) == 1, dialogs
    assert vm.name in dialogs[0] and "unsaved work" in dialogs[0]
    expect(page.locator("#vm-jobs .job")).to_have_count(0)
    expect(page.get_by_test_id("vm-state")).to_have_text("running")

    action_button(page, "force_off").click()  # accepted, but the session alone is not enough
    assert len(dialogs) == 2, dialogs  # one question per click, never two
    expect(page).to_have_url(re.compile(r"/users/reauth/\?next="))  # htmx followed HX-Redirect
    assert gw.domain_state(vm.host.uri, vm.name) == "running" and not Job.objects.exists()
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(vm_url(vm)) + "$"))  # back where the action was

    action_button(page, "force_off").click()  # accepted, recently re-authenticated
    assert len(dialogs) == 3, dialogs
    watch_job(page, 1, "shut off")
    assert gw.domain_state(vm.host.uri, vm.name) == "shut off"
    assert offered_actions(page) == ["start"]
    # the dismissed click sent nothing: one job, and only the accepted request was audited
    assert Job.objects.filter(kind="vms.vm.force_off").count() == 1
    events = list(AuditEvent.objects.filter(action="vms.vm.force_off").order_by("id").values_list("outcome", flat=True))
    assert events == ["requested", "success"]


def test_login_refuses_a_wrong_password(live_server, operator, page):
    page.goto("/vms/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/vms/$"))
    page.fill("input[name=username]", operator.username)
    page.fill("input[name=password]", "not-the-password")
    page.click("form button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("correct username and password")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    expect(page.locator("header nav")).not_to_contain_text("Sign out")
    expect(page.locator("input[name=username]")).to_have_value(operator.username)
    page.goto("/vms/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))  # still not signed in
    assert AuditEvent.objects.filter(action="auth.login", outcome="failed").exists()

    login(page, live_server, operator.username)  # the right password does let us in
    expect(page.locator("h1")).to_be_visible()


def test_every_page_of_the_navigation_loads_cleanly_on_desktop_and_phone(live_server, admin, vm, new_page):
    page = new_page(DESKTOP)
    login(page, live_server, admin.username)
    links = page.locator("header nav ul.menu a")
    nav = dict(
        zip(links.all_inner_texts(), links.evaluate_all("as => as.map(a => a.getAttribute('href'))"), strict=True)
    )
    names = {re.sub(r"\s+\d+$", "", k).strip() for k in nav}
    assert {"Dashboard", "VMs", "Storage", "Network", "Jobs", "Audit", "Access review", "Users"} <= names, nav
    pages = [*nav.values(), vm_url(vm)]

    for url in pages:
        slug = "vm-detail" if url == vm_url(vm) else url.strip("/").replace("/", "_") or "dashboard"
        page.set_viewport_size(DESKTOP)
        response = page.goto(url)
        assert response.status == 200, (url, response.status, page.locator("main").inner_text())
        expect(page.locator("main h1").first).to_be_visible()
        current = page.locator("header nav a[aria-current='page']")
        if url != vm_url(vm):
            expect(current.first).to_have_attribute("href", url)
        screenshot(page, slug)
        check_phone_layout(page, slug)
        # the navigation is still reachable on a phone
        expect(page.get_by_role("button", name=f"Sign out {admin.username}")).to_be_visible()

    page.set_viewport_size(DESKTOP)
    page.context.clear_cookies()
    page.goto("/accounts/login/")
    check_phone_layout(page, "login")


def test_the_harness_catches_csp_violations_and_console_errors(live_server, operator, page, browser_problems):
    """The guard every test relies on: an inline style (forbidden by the portal's CSP), a
    console.error and an uncaught exception are all reported."""
    login(page, live_server, operator.username)
    assert not browser_problems
    page.evaluate(
        """() => {
            const style = document.createElement("style");
            style.textContent = "body { background: red; }";
            document.head.appendChild(style);
        }"""
    )
    page.evaluate("() => setTimeout(() => { throw new Error('boom from a timer'); }, 0)")
    page.evaluate("() => console.error('an error on the console')")
    expect(page.locator("body")).not_to_have_css("background-color", "rgb(255, 0, 0)")  # the CSP held
    browser_problems.expect(r"violates the following Content Security Policy directive .style-src", page)
    browser_problems.expect(r"CSP violation: style-src", page)  # our securitypolicyviolation listener
    browser_problems.expect(r"uncaught exception .*boom from a timer", page)
    browser_problems.expect(r"console error .*an error on the console", page)
    assert not browser_problems, list(browser_problems)
