"""Which zone a VM's interfaces put it in. The interfaces themselves (MAC, network, link
state) are the state collector's VmInterface rows (apps.vms): read here, never written."""

from __future__ import annotations

from apps.vms.models import VirtualMachine, VmInterface

from ..models import Zone


def vm_zones(vm: VirtualMachine) -> list[Zone]:
    """The zones the VM's interfaces are attached to (as last read): one for a VM that
    belongs somewhere, none for a VM outside every zone, two or more is flagged."""
    networks = set(VmInterface.objects.filter(vm=vm).values_list("network", flat=True))
    return list(Zone.objects.filter(host_id=vm.host_id, network_name__in=networks))
