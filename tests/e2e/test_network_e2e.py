"""Network zones, the firewall and quarantine in a real browser: an admin creates a zone,
adds a rule, reviews the diff, applies and confirms (re-authenticated), then quarantines a
running VM and releases it."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from apps.core import jobs
from apps.core.gateways import libvirt as gw
from apps.core.gateways import nft
from apps.network.models import FirewallApply, Quarantine, Zone
from tests.conftest import PASSWORD, totp_code

from .conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.libvirt]


@pytest.fixture
def own_table(settings):
    settings.NETWORK_NFT_TABLE = f"pfw_{uuid.uuid4().hex[:8]}"
    yield settings.NETWORK_NFT_TABLE
    nft.delete_tables(settings.NETWORK_NFT_TABLE)


def reauth_and_back(page, url_part: str, user) -> None:
    expect(page).to_have_url(re.compile(r"/users/reauth/\?next="))
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=code]", totp_code(user))  # an admin: two-factor sign-in
    page.click("main form button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(url_part)))


def test_zone_rule_diff_apply_confirm_quarantine_release(live_server, admin, host, vm, own_table, page):
    page.on("dialog", lambda dialog: dialog.accept())
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    login(page, live_server, admin.username)

    page.goto("/network/")
    page.get_by_text(f"New zone on {host.name}").click()
    form = page.get_by_test_id("zone-form")
    form.locator("input[name=name]").fill(name)
    form.locator("select[name=kind]").select_option("untrusted")
    form.locator("input[name=ipv4_cidr]").fill("198.51.100.0/24")
    form.get_by_role("button", name=re.compile("Create zone")).click()
    zone = Zone.objects.get(name=name)
    try:
        job = jobs.job_run(jobs.Job.objects.get(kind="network.zone.create", target_id=str(zone.pk)).pk)
        assert job.state == "succeeded", job.error

        page.goto(f"/network/zones/{host.name}/{name}/")
        rule = page.get_by_test_id("rule-form")
        rule.locator("select[name=direction]").select_option("in")
        rule.locator("select[name=protocol]").select_option("tcp")
        rule.locator("input[name=ports]").fill("22")
        rule.locator("input[name=comment]").fill("ssh from admins")
        rule.get_by_role("button", name="Add rule").click()
        expect(page.get_by_test_id("rules")).to_contain_text("ssh from admins")  # the table reloaded

        page.goto(f"/network/firewall/{host.name}/")
        expect(page.get_by_test_id("diff")).to_contain_text("ssh from admins")
        page.get_by_role("button", name="Apply").click()
        expect(page.get_by_test_id("pending-apply")).to_be_visible()
        pending = FirewallApply.objects.get(host=host, state="pending")
        page.get_by_role("button", name=f"Confirm apply #{pending.pk}").click()
        reauth_and_back(page, f"/network/firewall/{host.name}/", admin)
        page.get_by_role("button", name=f"Confirm apply #{pending.pk}").click()
        expect(page.get_by_test_id("no-diff")).to_be_visible()
        assert FirewallApply.objects.get(pk=pending.pk).state == "confirmed"

        page.goto(f"/network/vms/{host.name}/{vm.name}/")
        q = page.get_by_test_id("quarantine-form")
        q.locator("input[name=reason]").fill("suspicious outbound traffic")
        q.get_by_role("button", name="Quarantine").click()
        job = jobs.Job.objects.get(kind="network.vm.quarantine", target_id=str(vm.pk))  # the page started a job
        assert jobs.job_run(job.pk).state == "succeeded"  # as the worker runs it
        page.goto(f"/network/vms/{host.name}/{vm.name}/")
        expect(page.get_by_test_id("quarantined")).to_be_visible()
        assert gw.domain_state(host.uri, vm.name) == "paused"
        page.goto("/vms/")
        expect(page.locator(f"tr[data-vm='{vm.name}']").get_by_test_id("quarantined")).to_be_visible()

        page.goto(f"/network/vms/{host.name}/{vm.name}/")
        r = page.get_by_test_id("release-form")
        r.locator("input[name=reason]").fill("guest reimaged")
        r.get_by_role("button", name=re.compile("Release")).click()
        expect(page.get_by_test_id("quarantine-form")).to_be_visible()
        assert not Quarantine.objects.filter(vm=vm, released_at__isnull=True).exists()
        assert gw.domain_state(host.uri, vm.name) == "running"
    finally:
        if gw.network_exists(host.uri, zone.network_name):
            gw.network_remove(host.uri, zone.network_name)
