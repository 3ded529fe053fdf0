"""Quarantine of a real running VM: links down, its MACs dropped in nftables, suspended, a
forensic snapshot with memory, every step audited under one incident id; release restores
links, rules and run state, and needs a reason."""

import uuid

import pytest
from django.core.exceptions import PermissionDenied

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.gateways import nft
from apps.network import services
from apps.network.models import Quarantine, Zone
from apps.vms.collector import interfaces_refresh

pytestmark = pytest.mark.libvirt


def quarantined_macs(table):
    for obj in nft.list_tables(table):
        s = obj.get("set")
        if s and s["name"] == "quarantined":
            return set(s.get("elem", []))
    return set()


def mapped_macs(table):
    for obj in nft.list_tables(table):
        m = obj.get("map")
        if m and m["name"] == "vm_out":
            return {e[0] for e in m.get("elem", [])}
    return set()


def test_quarantine_release_and_move(vm, operator, viewer, nft_table, test_network, monkeypatch):
    from apps.monitoring import notifications

    notices = []
    monkeypatch.setattr(notifications, "notify", lambda notice: notices.append(notice) or ["webhook"])
    with pytest.raises(PermissionDenied):
        services.vm_quarantine(actor=viewer, vm=vm)
    assert AuditEvent.objects.filter(action="network.vm.quarantine", outcome="denied").exists()
    assert gw.domain_state(vm.host.uri, vm.name) == "running"

    bridge = next(n.bridge for n in gw.network_list(vm.host.uri) if n.name == test_network)
    Zone.objects.create(host=vm.host, name="qzone", kind="secure", bridge=bridge, network_name=test_network,
                        policy_out="accept", host_access=True)  # fmt: skip
    services.firewall_apply(actor=operator, host=vm.host, confirm_seconds=0)
    job = services.vm_quarantine(actor=operator, vm=vm, reason="beaconing")
    assert job.kind == "network.vm.quarantine" and job.state == "queued"  # the request only asks
    assert gw.domain_state(vm.host.uri, vm.name) == "running"
    with pytest.raises(Conflict, match="already being quarantined"):
        services.vm_quarantine(actor=operator, vm=vm)
    job = jobs.job_run(job.pk, worker="pytest")  # what the worker does
    assert job.state == "succeeded", job.error
    assert job.progress == 100 and any("forensic snapshot" in line["msg"] for line in job.log), job.log
    q = Quarantine.objects.get(incident_id=job.params["incident"])
    assert job.result["incident"] == q.incident_id and all(job.result["held"].values())
    assert [s["step"] for s in q.steps if s["ok"]] == ["links", "firewall", "suspend", "snapshot", "alert"], q.steps
    info = gw.domain_get(vm.host.uri, vm.name)
    assert info.state == "paused"
    assert {i.link for i in info.interfaces} == {"down"}
    macs = {i.mac for i in info.interfaces}
    assert macs and macs <= quarantined_macs(nft_table)
    snaps = [s for s in gw.snapshot_list(vm.host.uri, vm.name) if s.name == q.snapshot]
    assert snaps and q.snapshot.startswith("incident-") and snaps[0].state in ("paused", "running")
    steps = AuditEvent.objects.filter(action__startswith="network.quarantine.", params__incident=q.incident_id)
    assert steps.count() == 5
    assert [(n.name, n.subject, n.state, n.level) for n in notices] == [
        ("PortalVmQuarantined", vm.name, "firing", "critical")
    ]

    with pytest.raises(Conflict, match="already quarantined"):
        services.vm_quarantine(actor=operator, vm=vm)
    with pytest.raises(InvalidInput, match="needs a reason"):
        services.vm_release(actor=operator, vm=vm, reason=" ")

    released = services.vm_release(actor=operator, vm=vm, reason="reimaged the guest")
    assert all(s["ok"] for s in released.steps), released.steps
    info = gw.domain_get(vm.host.uri, vm.name)
    assert info.state == "running" and {i.link for i in info.interfaces} == {"up"}
    assert not (macs & quarantined_macs(nft_table))
    assert not Quarantine.objects.filter(vm=vm, released_at__isnull=True).exists()
    assert [n.state for n in notices] == ["firing", "resolved"]

    # the rules follow the VM by MAC: a restart (a new tap device) changes nothing of ours
    assert macs <= mapped_macs(nft_table)
    gw.domain_force_off(vm.host.uri, vm.name)
    gw.domain_start(vm.host.uri, vm.name)
    interfaces_refresh(vm.host)
    assert not services.firewall_check(vm.host).drift
    assert macs <= mapped_macs(nft_table)


    # moving the VM to another zone re-attaches its interface live and changes its label
    other = Zone.objects.create(host=vm.host, name=f"moved-{uuid.uuid4().hex[:6]}", kind="untrusted",
                                bridge=f"pzm{uuid.uuid4().hex[:8]}", network_name=f"tmove-{uuid.uuid4().hex[:6]}")
    gw.network_ensure_zone(vm.host.uri, other.network_name, other.bridge)
    try:
        assert services.vm_zone_move(actor=operator, vm=vm, zone=other) == "now"
        vm.refresh_from_db()
        assert vm.zone == other.name
        assert {i.network for i in gw.domain_get(vm.host.uri, vm.name).interfaces} == {other.network_name}
        assert [z.name for z in services.vm_zones(vm)] == [other.name]
        ev = AuditEvent.objects.get(action="network.vm.move", outcome="success")
        assert ev.params["live"] is True and ev.params["applies"] == "now" and ev.params["to"] == other.name
        services.vm_zone_move(actor=operator, vm=vm, zone=Zone.objects.get(name="qzone"))
    finally:
        gw.network_remove(vm.host.uri, other.network_name)


def test_a_failing_step_does_not_stop_the_others(host, operator, nft_table, monkeypatch):
    """A VM the portal knows whose domain is gone from libvirt: setting its links down and
    the snapshot fail, yet its MAC is still dropped in nftables and the alert is raised; the
    job fails naming the steps that did not hold, each step audited under the incident."""
    from django.utils import timezone

    from apps.monitoring import notifications
    from apps.vms.models import VirtualMachine, VmInterface

    monkeypatch.setattr(notifications, "notify", lambda notice: ["webhook"])
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"gone-{uuid.uuid4().hex[:6]}",
                                       last_seen=timezone.now(), last_state="running")  # fmt: skip
    VmInterface.objects.create(vm=vm, mac="52:54:00:9a:bc:de", network="nowhere", link_state="up",
                               collected_at=timezone.now())  # fmt: skip
    job = jobs.job_run(services.vm_quarantine(actor=operator, vm=vm, reason="test").pk, worker="pytest")
    q = Quarantine.objects.get(vm=vm)
    held = {s["step"]: s["ok"] for s in q.steps}
    assert held == {"links": False, "firewall": True, "suspend": False, "snapshot": False, "alert": True}, q.steps
    assert job.state == "failed" and "links, suspend, snapshot" in job.error
    assert "52:54:00:9a:bc:de" in quarantined_macs(nft_table)
    outcomes = dict(AuditEvent.objects.filter(params__incident=q.incident_id, action__startswith="network.quarantine.")
                    .values_list("action", "outcome"))  # fmt: skip
    assert outcomes["network.quarantine.firewall"] == "success" and outcomes["network.quarantine.links"] == "failed"
