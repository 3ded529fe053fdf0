"""The firewall follows the state collector's lifecycle events: a VM defined and started
outside the portal (libvirt directly) gets its zone's rules as soon as its event arrives,
not at the next periodic check; and the rules hold across a libvirtd restart."""

from __future__ import annotations

import time

import pytest

from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.gateways import nft
from apps.network import services
from apps.network.models import Zone
from apps.vms import collector as collector_module
from apps.vms.collector import Collector, interfaces_refresh
from apps.vms.models import VirtualMachine, VmInterface
from apps.vms.services import inventory_sync
from tests.conftest import unique

pytestmark = pytest.mark.libvirt


def mapped_macs(table: str) -> set[str]:
    for obj in nft.list_tables(table):
        m = obj.get("map")
        if m and m["name"] == "vm_out":
            return {e[0] for e in m.get("elem", [])}
    return set()


@pytest.fixture
def zone(host, test_network, nft_table, admin):
    """The session's isolated network as an untrusted zone, its (empty) policy applied."""
    bridge = next(n.bridge for n in gw.network_list(host.uri) if n.name == test_network)
    z = Zone.objects.create(host=host, name=unique("evz"), kind="untrusted", bridge=bridge, network_name=test_network)
    services.firewall_apply(actor=admin, host=host, confirm_seconds=0)
    return z


def test_a_vm_started_outside_the_portal_gets_its_rules_from_its_event(host, zone, nft_table, make_domain,
                                                                       monkeypatch):  # fmt: skip
    # the collector's rounds run here, inside the test's transaction: it must keep its connection
    monkeypatch.setattr(collector_module, "close_old_connections", lambda: None)
    collector = Collector(interval=3600, tick=0.2, host_names=[host.name])  # bulk reads: only the first
    try:
        collector.run_once()  # the first read, and the event watch opened
        name = make_domain(running=True)  # libvirt's define and start, not the portal
        deadline, macs = time.monotonic() + 15, set()
        while time.monotonic() < deadline:
            collector.run_once()  # drains the lifecycle events
            vm = VirtualMachine.objects.filter(host=host, name=name, present=True).first()
            macs = set(VmInterface.objects.filter(vm=vm).values_list("mac", flat=True)) if vm else set()
            if macs and macs <= mapped_macs(nft_table):
                break
        else:
            raise AssertionError(f"{name}'s MACs {macs} not in our verdict maps within 15 s of its events")
        refresh = AuditEvent.objects.filter(action="network.firewall.refresh", actor_name="system",
                                            params__why__startswith=f"{name} ").first()  # fmt: skip
        assert refresh is not None and refresh.outcome == "success"
    finally:
        for feed in collector._feeds.values():
            if feed.watch is not None:
                feed.watch.close()


def test_rules_survive_a_libvirtd_restart(host, zone, nft_table, make_domain):
    """Restarts the system libvirtd (as tests/integration/test_collector.py does): run alone."""
    from tests.integration.test_collector import restart_libvirtd

    name = make_domain(running=True)
    inventory_sync(host)
    vm = VirtualMachine.objects.get(host=host, name=name, present=True)
    interfaces_refresh(host, vm)
    services.firewall_check(host)  # its NICs brought in
    macs = set(VmInterface.objects.filter(vm=vm).values_list("mac", flat=True))
    assert macs and macs <= mapped_macs(nft_table)
    before = nft.fingerprint(nft.list_tables(nft_table))

    restart_libvirtd()

    assert gw.domain_state(host.uri, name) == "running"
    assert nft.fingerprint(nft.list_tables(nft_table)) == before  # libvirtd's restart left our tables alone
    interfaces_refresh(host, vm)  # what the collector reads after it reconnects
    result = services.firewall_check(host)
    assert not result.drift and macs <= mapped_macs(nft_table)
    assert nft.fingerprint(nft.list_tables(nft_table)) == before
