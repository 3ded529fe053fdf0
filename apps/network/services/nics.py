"""Which NICs each VM has (what its rules follow: MAC addresses) and which zone that puts
it in."""

from __future__ import annotations

from django.db import transaction

from apps.core.gateways import libvirt as gw
from apps.core.models import Host
from apps.vms.models import VirtualMachine

from ..models import VmNic, Zone


def nics_sync(host: Host) -> None:
    """Read every domain's interfaces from libvirt and bring the VmNic rows up to date."""
    by_uuid = gw.domain_interfaces_live(host.uri)
    vms = {str(vm.uuid): vm for vm in VirtualMachine.objects.filter(host=host, present=True)}
    existing = {(n.vm_id, n.mac): n for n in VmNic.objects.filter(vm__host=host)}
    seen, create, update = set(), [], []
    for uuid, ifaces in by_uuid.items():
        vm = vms.get(uuid)
        if vm is None:
            continue
        for i in ifaces:
            if not i.mac:
                continue
            key = (vm.pk, i.mac.lower())
            seen.add(key)
            row = existing.get(key)
            if row is None:
                create.append(VmNic(vm=vm, mac=i.mac.lower(), network=i.network, link=i.link))
            elif (row.network, row.link) != (i.network, i.link):
                row.network, row.link = i.network, i.link
                update.append(row)
    with transaction.atomic():
        listed = {vms[u].pk for u in by_uuid if u in vms}  # a VM libvirt did not list keeps its last NICs
        gone = [n.pk for key, n in existing.items() if key not in seen and key[0] in listed]
        if gone:
            VmNic.objects.filter(pk__in=gone).delete()
        if update:
            VmNic.objects.bulk_update(update, ["network", "link"])
        if create:
            VmNic.objects.bulk_create(create)


def vm_zones(vm: VirtualMachine) -> list[Zone]:
    """The zones the VM's interfaces are attached to (as last read): one for a VM that
    belongs somewhere, none for a VM outside every zone, two or more is flagged."""
    networks = set(VmNic.objects.filter(vm=vm).values_list("network", flat=True))
    return list(Zone.objects.filter(host_id=vm.host_id, network_name__in=networks))
