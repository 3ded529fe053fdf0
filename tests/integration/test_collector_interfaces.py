"""Interface state in the database, against the real libvirtd: the state collector's bulk read
and its per-domain refresh (what a lifecycle event triggers) write each VM's NICs (MAC,
network, bridge, tap device, model, link state) to VmInterface rows; a link set down with
`virsh domif-setlink` shows after the next read; the VM page draws the rows."""

from __future__ import annotations

import subprocess

import pytest
from django.urls import reverse

from apps.core.gateways import libvirt as gw
from apps.vms.collector import domain_refresh, host_collect
from apps.vms.models import VirtualMachine, VmInterface

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]


def virsh(*args: str) -> str:
    done = subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], check=True, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return done.stdout


def nics(vm: VirtualMachine) -> list[VmInterface]:
    return list(VmInterface.objects.filter(vm=vm).order_by("position"))


def test_a_defined_vms_interfaces_are_stored_and_follow_its_definition(host, make_domain, test_network):
    name = make_domain()  # shut off: no tap device
    assert host_collect(host)
    vm = VirtualMachine.objects.get(host=host, name=name, present=True)
    (nic,) = nics(vm)
    mac = gw.domain_get(host.uri, name).interfaces[0].mac
    assert (nic.mac, nic.source_type, nic.network, nic.model) == (mac.lower(), "network", test_network, "virtio")
    assert nic.link_state == "up" and nic.target_dev == ""

    virsh("domif-setlink", name, mac, "down", "--config")
    assert host_collect(host)  # the periodic bulk read
    assert nics(vm)[0].link_state == "down"

    virsh("undefine", name)
    assert host_collect(host)
    assert not VirtualMachine.objects.get(pk=vm.pk).present and nics(vm) == []  # gone with its VM


def test_a_running_vms_tap_and_live_link_state_reach_the_rows_and_its_page(host, vm, client, viewer):
    assert host_collect(host)
    (nic,) = nics(vm)
    net = gw.domain_get(host.uri, vm.name).interfaces[0]
    assert nic.target_dev and nic.target_dev == net.device  # vnetN on the host while it runs
    assert nic.bridge  # the network's bridge, from the live definition

    virsh("domif-setlink", vm.name, nic.mac, "down")  # live only: no lifecycle event for this
    domain_refresh(host, vm.name, str(vm.uuid), "resumed")  # what an event for this domain runs
    assert nics(vm)[0].link_state == "down"

    client.force_login(viewer)
    page = client.get(reverse("vms:detail", args=[host.name, vm.name])).content.decode()
    row = page.split(f'data-mac="{nic.mac}"', 1)[1].split("</tr>", 1)[0]
    assert nic.target_dev in row and 'data-testid="link-state">down<' in row

    virsh("domif-setlink", vm.name, nic.mac, "up")
    assert host_collect(host)
    assert nics(vm)[0].link_state == "up"
