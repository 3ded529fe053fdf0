"""The libvirt gateway against libvirt's test driver (fast, in-process) and the real
libvirtd (qemu:///system)."""

import subprocess
import time

import pytest

from apps.core.errors import GatewayError, NotFound
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import domain_devices_parse, domain_xml

TEST_URI = "test:///default"


def test_test_driver_lists_domains_with_bulk_stats():
    domains = gw.domain_list(TEST_URI)
    assert [d.name for d in domains] == ["test"]
    assert domains[0].state == "running" and domains[0].uuid


def test_unknown_vm_is_a_readable_not_found():
    with pytest.raises(NotFound, match="VM not found: nope"):
        gw.domain_get(TEST_URI, "nope")


def test_unreachable_hypervisor_is_a_readable_error():
    with pytest.raises(GatewayError, match="Cannot connect to the hypervisor"):
        gw.domain_list("qemu+unix:///system?socket=/nonexistent/libvirt-sock")


def test_domain_xml_escapes_hostile_names_and_disables_pxe():
    xml = domain_xml(name="a<b>&'\"", memory_mib=64, vcpus=1, disk_paths=["/x/y.qcow2"], networks=["n1"])
    assert "<name>a&lt;b&gt;&amp;'\"</name>" in xml
    assert '<rom enabled="no" />' in xml and '<boot dev="hd" />' in xml
    disks, ifaces = domain_devices_parse(xml)
    assert disks == [{"target": "vda", "path": "/x/y.qcow2", "format": "qcow2"}]
    assert ifaces[0]["network"] == "n1"


@pytest.mark.libvirt
def test_real_domain_detail_has_disks_interfaces_and_lifecycle(libvirt_uri, make_domain, test_network):
    name = make_domain(running=True)
    info = gw.domain_get(libvirt_uri, name)
    assert (info.state, info.memory_kib, info.vcpus) == ("running", 64 * 1024, 1)
    assert info.disks[0].capacity == 1 << 30 and 0 < info.disks[0].allocation < 1 << 30  # thin
    assert info.interfaces[0].network == test_network and info.interfaces[0].mac
    gw.domain_suspend(libvirt_uri, name)
    assert gw.domain_state(libvirt_uri, name) == "paused"
    listed = {d.name: d for d in gw.domain_list(libvirt_uri)}
    assert listed[name].state == "paused" and listed[name].disks[0].capacity == 1 << 30
    gw.domain_force_off(libvirt_uri, name)
    assert gw.domain_state(libvirt_uri, name) == "shut off"


@pytest.mark.libvirt
def test_isolated_networks_have_no_forwarding(libvirt_uri, test_network):
    net = {n.name: n for n in gw.network_list(libvirt_uri)}[test_network]
    assert net.active and net.forward_mode == "isolated"


@pytest.mark.libvirt
def test_the_gateway_reconnects_after_libvirtd_restarts(libvirt_uri, make_domain):
    name = make_domain()
    assert name in {d.name for d in gw.domain_list(libvirt_uri)}
    subprocess.run(["pkill", "-TERM", "-x", "libvirtd"], check=True, timeout=10)
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, timeout=5).returncode == 0:
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.2)
    subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while True:  # the daemon takes a moment to listen again; the gateway's cached connection is dead
        try:
            names = {d.name for d in gw.domain_list(libvirt_uri)}
            break
        except GatewayError:
            assert time.monotonic() < deadline, "the gateway never reconnected"
            time.sleep(0.5)
    assert name in names
