"""A zone move of a shut-off VM (applies at its next start: said so, and its persistent
definition names the new network), per-rule counters the page's HTMX fragment refreshes after
real packets, and `vm_firewall release` through the command."""

import re
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.gateways import nft
from apps.network import services
from apps.network.models import Quarantine, Zone
from apps.vms.models import VirtualMachine, VmInterface
from tests.conftest import reauthenticate

pytestmark = pytest.mark.libvirt


def quarantined(table) -> list:
    sets = [o["set"] for o in nft.list_tables(table) if o.get("set", {}).get("name") == "quarantined"]
    assert len(sets) == 1  # the bridge table's
    return [e for s in sets for e in s.get("elem", [])]


def test_moving_a_shut_off_vm_applies_at_its_next_start_and_release_by_command(
    client, host, make_domain, test_network, operator, nft_table
):
    from apps.vms.services import inventory_sync

    name = make_domain()  # defined, never started
    inventory_sync(host)
    vm = VirtualMachine.objects.get(host=host, name=name)
    bridge = next(n.bridge for n in gw.network_list(host.uri) if n.name == test_network)
    Zone.objects.create(host=host, name=f"from-{uuid.uuid4().hex[:6]}", kind="secure", bridge=bridge,
                        network_name=test_network)  # fmt: skip
    other = Zone.objects.create(host=host, name=f"to-{uuid.uuid4().hex[:6]}", kind="untrusted",
                                bridge=f"pzm{uuid.uuid4().hex[:8]}", network_name=f"tmove-{uuid.uuid4().hex[:6]}")
    gw.network_ensure_zone(host.uri, other.network_name, other.bridge)
    try:
        client.force_login(operator)
        reauthenticate(client)
        response = client.post(reverse("network:vm_move", args=[host.name, name]), {"zone": other.name}, follow=True)
        assert response.status_code == 200
        assert "it is shut off: its interfaces join the zone&#x27;s network at its next start" in (
            response.content.decode())
        info = gw.domain_get(host.uri, name)
        assert info.state == "shut off" and {i.network for i in info.interfaces} == {other.network_name}
        defined = gw.domain_xml_defined(host.uri, name)  # the persistent definition itself
        assert re.search(rf"<source network=.{re.escape(other.network_name)}.", defined), defined
        assert test_network not in defined
        vm.refresh_from_db()
        assert vm.zone == other.name
        assert set(VmInterface.objects.filter(vm=vm).values_list("network", flat=True)) == {other.network_name}
        ev = AuditEvent.objects.get(action="network.vm.move", outcome="success")
        assert ev.params["applies"] == "at next start" and ev.params["live"] is False

        # release through the command: refused without a good reason (audited), then done
        mac = info.interfaces[0].mac
        q = Quarantine.objects.create(vm=vm, incident_id=f"incident-c-{uuid.uuid4().hex[:6]}", actor_name="t",
                                      previous_state="shut off", previous_links={mac: "up"}, macs=[mac])  # fmt: skip
        services.firewall_apply(actor=operator, host=host, confirm_seconds=0)
        assert quarantined(nft_table) == [mac]
        with pytest.raises(CommandError, match="semicolons"):
            call_command("vm_firewall", "--as", operator.username, "release", name, "--reason", "ok; rm",
                         stdout=StringIO())  # fmt: skip
        assert AuditEvent.objects.filter(action="network.vm.release", outcome="failed").exists()
        assert Quarantine.objects.get(pk=q.pk).released_at is None
        out = StringIO()
        call_command("vm_firewall", "--as", operator.username, "release", name, "--reason", "reimaged", stdout=out)
        q.refresh_from_db()
        assert q.released_at is not None and q.release_reason == "reimaged" and q.released_by == operator.username
        assert "firewall" in out.getvalue() and "left shut off" in out.getvalue(), out.getvalue()
        assert AuditEvent.objects.filter(action="network.vm.release", outcome="success",
                                         params__incident=q.incident_id).exists()  # fmt: skip
        assert quarantined(nft_table) == []
        with pytest.raises(CommandError, match="not quarantined"):
            call_command("vm_firewall", "--as", operator.username, "release", name, "--reason", "again",
                         stdout=StringIO())  # fmt: skip
    finally:
        gw.network_remove(host.uri, other.network_name)


def test_the_rule_fragment_shows_counters_refreshed_after_packets(client, host, lab, nft_table, admin):
    zone = Zone.objects.create(host=host, name=f"cnt-{uuid.uuid4().hex[:6]}", kind="untrusted", bridge=lab.bridge,
                               network_name=f"cnt-{uuid.uuid4().hex[:6]}")  # fmt: skip
    vms = {}
    for side, guest in (("a", lab.a), ("b", lab.b)):
        vms[side] = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"c{side}-{uuid.uuid4().hex[:6]}")
        VmInterface.objects.create(vm=vms[side], mac=guest.mac, network=zone.network_name, collected_at=timezone.now())
    services.rule_add(actor=admin, vm=vms["a"], direction="out", protocol="tcp", action="accept", ports=(8080, 8080))
    rule = services.rule_add(actor=admin, vm=vms["b"], direction="in", protocol="tcp", action="accept",
                             ports=(8080, 8080), comment="web")  # fmt: skip
    services.firewall_apply(actor=admin, host=host, confirm_seconds=0)
    client.force_login(admin)
    url = reverse("network:vm", args=[host.name, vms["b"].name])

    def packets() -> int:
        fragment = client.get(url, HTTP_HX_REQUEST="true")
        html = fragment.content.decode()
        assert fragment.status_code == 200 and html.lstrip().startswith('<section id="vm-rules"')  # the fragment
        row = re.search(rf'<tr data-rule="{rule.pk}">.*?<td data-testid="packets">(\d+)</td>', html, re.S)
        return int(row.group(1))

    assert packets() == 0
    assert lab.a.probe("tcp", lab.b.ipv4, 8080)
    first = packets()
    assert first >= 1  # the SYN at least (the rule's replies count with it)
    assert lab.a.probe("tcp", lab.b.ipv4, 8080) and packets() > first
