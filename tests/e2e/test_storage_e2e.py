"""Storage in a real browser: an operator sets a VM's quota, watches the usage bar after
data is written into the VM's disk, and acknowledges the alert the check raised."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.audit.models import AuditEvent
from apps.storage.models import StorageAlert
from apps.storage.services import storage_check
from apps.vms.collector import host_collect
from apps.vms.models import VirtualMachine
from tests.integration.storage.conftest import disk_path, write_data

from .conftest import check_phone_layout, login

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]


def test_operator_sets_a_quota_watches_usage_and_acknowledges_the_alert(live_server, operator, host, make_domain, page):
    name = make_domain(running=False, disk_gib=0.25)  # a hard limit of 0.25 GiB must hold its disk
    host_collect(host)  # the state collector's read: what the pages show
    vm = VirtualMachine.objects.select_related("host").get(host=host, name=name)
    login(page, live_server, operator.username)

    page.goto("/storage/")
    row = page.locator(f"tr[data-vm='{vm.name}']")
    expect(row).to_contain_text("(default)")
    row.get_by_role("link", name=vm.name).click()
    expect(page).to_have_url(re.compile(rf"/storage/vms/{host.name}/{vm.name}/$"))
    expect(page.get_by_test_id("usage-percent")).to_have_text("0%")

    form = page.get_by_test_id("quota-form")
    form.get_by_label("Hard limit (GiB)").fill("0.25")
    form.get_by_label("Alert at (%)").fill("50")
    form.get_by_role("button", name="Save quota").click()
    expect(page.get_by_test_id("vm-quota")).to_contain_text("256 MiB")  # swapped in by htmx
    expect(page.get_by_test_id("vm-quota")).to_contain_text("alert at 50%")
    assert AuditEvent.objects.filter(action="storage.quota.set", outcome="success", actor_name=operator.username)

    write_data(disk_path(vm), 160)  # the guest wrote 160 MiB
    storage_check(actor=None)  # what Celery beat runs every few minutes
    page.reload()
    expect(page.get_by_test_id("usage-percent")).to_have_text(re.compile(r"^6\d%$"))
    bar = page.get_by_test_id("usage-bar")
    assert 60 <= int(bar.get_attribute("value")) < 70
    badge = page.get_by_test_id("storage-alert-badge")
    expect(badge).to_have_text("1")
    check_phone_layout(page, "storage-vm")
    page.set_viewport_size({"width": 1280, "height": 800})

    page.goto("/storage/alerts/")
    alert = StorageAlert.objects.get(vm=vm)
    alert_row = page.locator(f"tr[data-alert='{alert.pk}']")
    expect(alert_row).to_contain_text("warning")
    alert_row.get_by_test_id("ack").click()
    expect(alert_row).to_contain_text(operator.username)  # the row is swapped in place
    page.reload()
    expect(page.get_by_test_id("storage-alert-badge")).to_have_count(0)
    alert.refresh_from_db()
    assert alert.acknowledged_by_name == operator.username


def test_bad_input_shows_field_errors_in_place_and_expand_sets_the_size(
    live_server, operator, host, make_domain, page, browser_problems
):
    name = make_domain(running=False)
    host_collect(host)  # the state collector's read: what the pages show
    login(page, live_server, operator.username)
    page.goto(f"/storage/vms/{host.name}/{name}/")

    form = page.get_by_test_id("quota-form")
    form.get_by_label("Hard limit (GiB)").fill("\u00b2")
    form.get_by_role("button", name="Save quota").click()
    errors = page.get_by_test_id("quota-errors")  # a 400 partial, swapped in by htmx
    expect(errors).to_contain_text("not a number of GiB")
    browser_problems.expect(r"status of 400", page)  # the refusal, provoked on purpose
    browser_problems.expect(r"Response Status Error Code 400", page)
    expect(page.get_by_test_id("vm-quota")).to_contain_text("100 GiB")

    expand = page.get_by_test_id("expand-form")
    expand.get_by_label("Expand to (GiB, the new hard limit)").fill("120")
    expand.get_by_role("button", name="Expand quota").click()
    expect(page.get_by_test_id("vm-quota")).to_contain_text("120 GiB")
    expect(page.get_by_test_id("quota-errors")).to_have_count(0)
