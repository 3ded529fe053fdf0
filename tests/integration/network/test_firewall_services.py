"""The firewall services end to end: rules in the database, applied to the real kernel,
real packets between namespaces standing in for VMs; an unconfirmed apply rolls back;
drift is detected, audited and repaired; refused input changes nothing."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import nft
from apps.network import services
from apps.network.models import FirewallApply, Zone
from apps.vms.models import VirtualMachine, VmInterface

pytestmark = pytest.mark.libvirt


@pytest.fixture
def zone_lab(host, lab, nft_table):
    """The lab's bridge as an untrusted zone, its namespaces as two VMs of the portal."""
    zone = Zone.objects.create(host=host, name=f"lab-{uuid.uuid4().hex[:6]}", kind="untrusted", bridge=lab.bridge,
                               network_name=f"labnet-{uuid.uuid4().hex[:6]}", policy_out="drop")  # fmt: skip
    vms = {}
    for side, guest in (("a", lab.a), ("b", lab.b)):
        vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"ns-{side}-{uuid.uuid4().hex[:6]}")
        VmInterface.objects.create(vm=vm, mac=guest.mac, network=zone.network_name, collected_at=timezone.now())
        vms[side] = vm
    return zone, vms["a"], vms["b"]


def allow(actor, vm, **kw):
    return services.rule_add(actor=actor, vm=vm, **kw)


def test_apply_confirm_and_packets(zone_lab, lab, admin):
    zone, a, b = zone_lab
    allow(admin, a, direction="out", protocol="any", action="accept")
    allow(admin, b, direction="in", protocol="tcp", action="accept", ports=(8080, 8080), comment="web")
    allow(admin, b, direction="in", protocol="icmpv6", action="accept")
    preview = services.firewall_preview(actor=admin, host=zone.host)
    assert any("web" in line for line in preview.diff if line.startswith("+"))
    apply = services.firewall_apply(actor=admin, host=zone.host)
    assert apply.state == "pending"
    assert lab.a.probe("tcp", lab.b.ipv4, 8080) and lab.a.probe("tcp", lab.b.ipv6, 8080)
    assert not lab.a.probe("tcp", lab.b.ipv4, 9090) and not lab.a.probe("ping", lab.b.ipv4)
    assert lab.a.probe("ping", lab.b.ipv6)
    services.firewall_confirm(actor=admin, host=zone.host, apply_id=apply.pk)
    assert FirewallApply.objects.get(pk=apply.pk).state == "confirmed"
    assert AuditEvent.objects.filter(action="network.firewall.confirm", outcome="success").exists()


def test_an_unconfirmed_apply_rolls_back(zone_lab, lab, admin):
    zone, a, b = zone_lab
    allow(admin, a, direction="out", protocol="any", action="accept")
    rule = allow(admin, b, direction="in", protocol="tcp", action="accept", ports=(8080, 8080))
    services.firewall_apply(actor=admin, host=zone.host, confirm_seconds=0)  # confirmed at once
    assert lab.a.probe("tcp", lab.b.ipv4, 8080)
    services.rule_delete(actor=admin, rule_id=rule.pk)
    pending = services.firewall_apply(actor=admin, host=zone.host, confirm_seconds=60)
    assert not lab.a.probe("tcp", lab.b.ipv4, 8080)
    with pytest.raises(Conflict, match="waits for confirmation"):
        services.firewall_apply(actor=admin, host=zone.host)
    assert services.firewall_check(zone.host).rolled_back == []  # not due yet
    result = services.firewall_check(zone.host, now=timezone.now() + timedelta(seconds=61))
    assert result.rolled_back == [pending.pk] and not result.drift
    assert FirewallApply.objects.get(pk=pending.pk).state == "rolled_back"
    assert lab.a.probe("tcp", lab.b.ipv4, 8080), "the confirmed ruleset is back"
    assert AuditEvent.objects.filter(action="network.firewall.rollback", outcome="success").exists()
    with pytest.raises(Conflict):
        services.firewall_confirm(actor=admin, host=zone.host, apply_id=pending.pk)


def test_drift_is_detected_audited_and_repaired(zone_lab, admin, nft_table):
    zone, a, b = zone_lab
    services.firewall_apply(actor=admin, host=zone.host, confirm_seconds=0)
    expected = nft.fingerprint(nft.list_tables(nft_table))
    assert not services.firewall_check(zone.host).drift
    nft.load({"nftables": [{"add": {"rule": {"family": "inet", "table": nft_table, "chain": "input",
                                             "expr": [{"accept": None}]}}}]})  # fmt: skip
    result = services.firewall_check(zone.host)
    assert result.drift and result.repaired
    assert AuditEvent.objects.filter(action="network.firewall.drift", outcome="failed").exists()
    assert nft.fingerprint(nft.list_tables(nft_table)) == expected


def test_refused_rules_change_nothing(zone_lab, admin, nft_table):
    zone, a, b = zone_lab
    services.firewall_apply(actor=admin, host=zone.host, confirm_seconds=0)
    before = nft.normalize(nft.list_ruleset())
    with pytest.raises(InvalidInput, match="Ports apply to tcp and udp only"):
        allow(admin, b, direction="in", protocol="icmp", action="accept", ports=(22, 22))
    with pytest.raises(InvalidInput):
        allow(admin, b, direction="in", protocol="sctp", action="accept")
    assert AuditEvent.objects.filter(action="network.rule.add", outcome="failed").count() == 2
    assert nft.normalize(nft.list_ruleset()) == before


def test_a_new_vm_gets_its_zone_policy_at_the_next_check_but_unapplied_edits_wait(zone_lab, lab, admin,
                                                                                     nft_table):  # fmt: skip
    zone, a, b = zone_lab
    allow(admin, a, direction="out", protocol="any", action="accept")
    services.firewall_apply(actor=admin, host=zone.host, confirm_seconds=0)
    allow(admin, b, direction="in", protocol="tcp", action="accept", ports=(9090, 9090))  # not applied yet
    c = VirtualMachine.objects.create(host=zone.host, uuid=uuid.uuid4(), name=f"ns-c-{uuid.uuid4().hex[:6]}")
    VmInterface.objects.create(vm=c, mac=lab.c.mac, network=zone.network_name,
                               collected_at=timezone.now())  # appeared outside the portal

    def mapped():
        return {e[0] for o in nft.list_tables(nft_table) if o.get("map", {}).get("name") == "vm_out"
                for e in o["map"].get("elem", [])}  # fmt: skip

    assert lab.c.mac not in mapped()
    result = services.firewall_check(zone.host)
    assert not result.drift and lab.c.mac in mapped()
    assert AuditEvent.objects.filter(action="network.firewall.refresh", outcome="success").exists()
    assert not lab.a.probe("tcp", lab.b.ipv4, 9090), "the rule added since the apply waits for an apply"
    assert not services.firewall_check(zone.host).drift


def test_host_services_are_edited_checked_and_compiled(host, admin):
    from apps.network.forms import ZoneEditForm

    zone = Zone.objects.create(host=host, name=f"hs-{uuid.uuid4().hex[:6]}", kind="secure", bridge="nohs0",
                               network_name=f"hsnet-{uuid.uuid4().hex[:6]}", host_access=True)  # fmt: skip
    data = {"description": "", "policy_in": "drop", "policy_out": "accept", "host_access": True, "uplink": ""}
    bad = ZoneEditForm({**data, "host_services": ["ssh", "telnet"]})
    assert not bad.is_valid() and "telnet" in str(bad.errors)
    form = ZoneEditForm({**data, "host_services": ["ssh", "dns"]})
    assert form.is_valid(), form.errors
    services.zone_edit(actor=admin, zone=zone, **form.cleaned_data)
    zone.refresh_from_db()
    assert zone.host_services == ["dns", "ssh"]
    assert AuditEvent.objects.get(action="network.zone.edit").params["host_services"] == ["dns", "ssh"]
    ruleset = services.firewall.build_ruleset(host)
    (spec,) = [z for z in ruleset.zones if z.id == zone.pk]
    assert spec.host_services == (("dns", "udp", 53), ("dns", "tcp", 53), ("ssh", "tcp", 22))
    preview = services.firewall_preview(actor=admin, host=host)  # rendered by the kernel in a scratch namespace
    assert any(f"zone{zone.pk}-host" in ln and "host ssh" in ln for ln in preview.new), preview.new
