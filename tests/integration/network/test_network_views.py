"""The network pages: zone and VM rule pages, a refused rule re-rendered and audited, the
diff before an apply, apply and confirm (re-authenticated), quarantined VMs marked."""

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.network.models import FirewallApply, FirewallRule, Quarantine, Zone
from apps.vms.models import VirtualMachine, VmInterface
from tests.conftest import reauthenticate

pytestmark = pytest.mark.libvirt


def make_zone_vm(host):
    tag = uuid.uuid4().hex[:6]
    zone = Zone.objects.create(host=host, name=f"web-{tag}", kind="untrusted", bridge=f"nob{tag}",
                               network_name=f"net-{tag}", policy_out="drop")  # fmt: skip
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"vm-{tag}", zone=zone.name)
    VmInterface.objects.create(vm=vm, mac="52:54:00:12:34:56", network=zone.network_name, collected_at=timezone.now())
    return zone, vm


def test_rules_diff_apply_confirm(client, admin, host, nft_table):
    zone, vm = make_zone_vm(host)
    client.force_login(admin)
    url = reverse("network:vm_rule_add", args=[host.name, vm.name])
    bad = client.post(url, {"direction": "in", "protocol": "tcp", "ports": "70000", "action": "accept"},
                      HTTP_HX_REQUEST="true")
    assert bad.status_code == 400 and "out of range" in bad.content.decode()
    assert AuditEvent.objects.filter(action="network.rule.add", outcome="failed").exists()
    good = {"direction": "in", "protocol": "tcp", "ports": "443", "action": "accept", "comment": "https"}
    ok = client.post(url, good, HTTP_HX_REQUEST="true")
    assert ok.status_code == 200 and ok["HX-Trigger"] == "rules-changed"
    assert 'data-testid="rule-form"' in ok.content.decode()
    assert FirewallRule.objects.filter(vm=vm, port_from=443).exists()
    page = client.get(reverse("network:vm", args=[host.name, vm.name]))
    assert page.status_code == 200 and "https" in page.content.decode()

    fw = client.get(reverse("network:firewall", args=[host.name]))
    assert fw.status_code == 200 and 'data-testid="diff"' in fw.content.decode()
    assert any("https" in line for line in fw.context["preview"].diff if line.startswith("+"))
    assert client.post(reverse("network:apply", args=[host.name])).status_code == 302
    pending = FirewallApply.objects.get(host=host, state="pending")
    confirm = reverse("network:confirm", args=[host.name, pending.pk])
    assert client.post(confirm).status_code == 302  # to the re-authentication first
    assert FirewallApply.objects.get(pk=pending.pk).state == "pending"
    reauthenticate(client)
    client.post(confirm)
    assert FirewallApply.objects.get(pk=pending.pk).state == "confirmed"
    assert not client.get(reverse("network:firewall", args=[host.name])).context["preview"].changed


def test_zone_page_and_quarantine_marks(client, operator, viewer, host):
    zone, vm = make_zone_vm(host)
    Quarantine.objects.create(vm=vm, incident_id=f"incident-x-{uuid.uuid4().hex[:4]}", actor_name="t")
    client.force_login(viewer)
    page = client.get(reverse("network:zone", args=[host.name, zone.name])).content.decode()
    assert vm.name in page and 'data-testid="rule-form"' not in page  # a viewer gets no add form
    assert 'data-testid="quarantined"' in client.get(reverse("vms:list")).content.decode()
    assert 'data-testid="quarantined"' in client.get(reverse("network:networks")).content.decode()
    assert 'data-testid="quarantined"' in client.get(reverse("dashboard")).content.decode()
    client.force_login(operator)
    page = client.get(reverse("network:vm", args=[host.name, vm.name])).content.decode()
    assert 'data-testid="rule-form"' in page and 'data-testid="release-form"' in page
    assert 'data-testid="zone-problem"' not in page
    VirtualMachine.objects.filter(pk=vm.pk).update(zone="somewhere-else")  # defined outside the portal
    page = client.get(reverse("network:vm", args=[host.name, vm.name])).content.decode()
    assert 'data-testid="zone-problem"' in page and "somewhere-else" in page

    # a second interface in another zone: flagged on its page, and given no zone's rules
    from apps.network.services.firewall import build_ruleset

    other, _ = make_zone_vm(host)
    assert vm.pk in {v.id for v in build_ruleset(host).vms}
    VmInterface.objects.create(vm=vm, mac="52:54:00:12:34:57", network=other.network_name, collected_at=timezone.now())
    page = client.get(reverse("network:vm", args=[host.name, vm.name])).content.decode()
    assert 'data-testid="zone-problem"' in page and zone.name in page and other.name in page
    assert vm.pk not in {v.id for v in build_ruleset(host).vms}


def test_the_quarantine_page_enqueues_a_job_and_shows_it(client, operator, host, monkeypatch):
    from apps.core import jobs

    monkeypatch.setattr(jobs, "_send", lambda job_id: None)  # nothing runs: the request only asks
    zone, vm = make_zone_vm(host)
    client.force_login(operator)
    reauthenticate(client)
    url = reverse("network:quarantine", args=[host.name, vm.name])
    unconfirmed = client.post(url, {"reason": "beaconing"})  # refused, audited, nothing queued
    assert unconfirmed.status_code == 400 and "needs confirmation" in unconfirmed.content.decode()
    assert AuditEvent.objects.filter(action="network.vm.quarantine", outcome="failed").exists()
    assert not jobs.Job.objects.filter(kind="network.vm.quarantine", target_id=str(vm.pk)).exists()
    response = client.post(url, {"reason": "beaconing", "confirm": "yes"})
    job = jobs.Job.objects.get(kind="network.vm.quarantine", target_id=str(vm.pk))
    assert response.status_code == 302 and response["Location"].endswith(f"?job={job.pk}")
    assert job.state == "queued" and job.params["reason"] == "beaconing"
    assert job.params["incident"].startswith("incident-")
    assert not Quarantine.objects.filter(vm=vm).exists()
    assert AuditEvent.objects.filter(action="network.vm.quarantine", outcome="requested", job_id=job.pk).exists()
    page = client.get(response["Location"]).content.decode()
    assert f'data-job="{job.pk}"' in page
    again = client.post(url, {"reason": "again", "confirm": "yes"})
    assert again.status_code == 409  # already being quarantined
    assert jobs.Job.objects.filter(kind="network.vm.quarantine", target_id=str(vm.pk)).count() == 1
