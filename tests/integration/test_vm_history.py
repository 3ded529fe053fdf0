"""Configuration history against the real libvirtd: a definition changed with `virsh`
(outside the portal) becomes a revision by "outside the portal" at the collector's next
read, a change the portal makes becomes a revision by its user, nothing is stored when
nothing changed, and the History tab shows both with a side-by-side diff to whoever may
view the VM (auditors too), and to nobody else."""

from __future__ import annotations

import subprocess

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.storage import services as storage_services
from apps.vms.collector import host_collect
from apps.vms.history import normalise, record_revision, side_by_side, xml_sha256
from apps.vms.models import VirtualMachine, VmConfigRevision
from apps.vms.services import inventory_sync

pytestmark = pytest.mark.libvirt


def test_normalised_xml_ignores_formatting_only():
    a = "<domain type='kvm'><name>x</name>\n  <memory unit='KiB'>65536</memory></domain>"
    b = '<domain type="kvm">\n<name>x</name><memory unit="KiB">65536</memory>\n</domain>'
    assert normalise(a) == normalise(b) and xml_sha256(a) == xml_sha256(b)
    assert xml_sha256(a) != xml_sha256(a.replace("65536", "98304"))
    rows = side_by_side(a, a.replace("65536", "98304"))
    changed = [r for r in rows if r["kind"] == "changed"]
    assert len(changed) == 1 and "65536" in changed[0]["left"] and "98304" in changed[0]["right"]


def test_changes_outside_and_by_the_portal_become_revisions(host, make_domain, test_pool, operator, auditor,
                                                             outsider, client, monkeypatch):  # fmt: skip
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)  # the job runs here, below
    name = make_domain()
    inventory_sync(host)
    vm = VirtualMachine.objects.get(host=host, name=name, present=True)

    assert host_collect(host)
    (baseline,) = VmConfigRevision.objects.filter(vm=vm)
    assert baseline.source == "outside" and baseline.author is None and "first read" in baseline.reason
    assert host_collect(host)  # nothing changed: nothing stored
    assert VmConfigRevision.objects.filter(vm=vm).count() == 1
    assert record_revision(vm, baseline.xml.replace("\n", "\n  "), operator) is None  # formatting only

    subprocess.run(["virsh", "-q", "-c", host.uri, "setmaxmem", name, "96M", "--config"], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    assert host_collect(host)
    outside = VmConfigRevision.objects.filter(vm=vm).first()
    assert outside.pk != baseline.pk and outside.source == "outside" and outside.who == "outside the portal"
    assert outside.audit_event.action == "vms.vm.config_changed" and outside.audit_event.actor_name == "system"
    changed = [r for r in side_by_side(baseline.xml, outside.xml) if r["kind"] == "changed"]
    assert any("65536" in (r["left"] or "") and "98304" in (r["right"] or "") for r in changed), changed

    job = storage_services.volume_create(actor=operator, vm=vm, size_bytes=1 << 20, pool=test_pool)
    assert jobs.job_run(job.pk, worker="pytest").state == "succeeded", job.error
    portal = VmConfigRevision.objects.filter(vm=vm).first()
    assert portal.source == "portal" and portal.author == operator and portal.author_name == operator.username
    assert portal.reason == "storage.volume.create"
    assert AuditEvent.objects.filter(pk=portal.audit_event_id, actor_name=operator.username).exists()
    assert host_collect(host)  # the collector does not take the portal's change for an outside one
    assert VmConfigRevision.objects.filter(vm=vm).count() == 3

    client.force_login(auditor)
    page = client.get(reverse("vms:history", args=[host.name, name])).content.decode()
    assert page.index(f'data-revision="{portal.pk}"') < page.index(f'data-revision="{outside.pk}"')  # newest first
    assert "outside the portal" in page and operator.username in page and "storage.volume.create" in page
    diff = client.get(reverse("vms:revision", args=[host.name, name, outside.pk])).content.decode()
    assert "98304" in diff and "65536" in diff and 'class="changed"' in diff
    assert 'data-testid="history-tab"' in client.get(reverse("vms:detail", args=[host.name, name])).content.decode()
    assert client.get(reverse("vms:revision", args=[host.name, name, 999999])).status_code == 404

    client.force_login(outsider)
    assert client.get(reverse("vms:history", args=[host.name, name])).status_code in (403, 404)
    assert client.get(reverse("vms:revision", args=[host.name, name, outside.pk])).status_code in (403, 404)
