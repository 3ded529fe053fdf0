"""Storage state for the pages: pools, volumes (with the VM each belongs to) and each VM's
disk totals, written from one bulk read of the host. The state collector runs it after every
bulk read of a host (apps/vms/collector.py), and storage jobs after they change a volume;
the pages read these rows and never libvirt. Writes only what changed: an idle host with
10,000 volumes costs reads, not writes."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.gateways import libvirt as gw
from apps.core.models import Host
from apps.vms.models import VirtualMachine

from ..disks import host_snapshot
from ..models import PoolState, VmDiskState, VolumeState

_POOL_FIELDS = ["uuid", "active", "path", "capacity", "allocation", "available", "provisioned", "volume_allocation",
                "volume_count", "collected_at"]  # fmt: skip
_VOLUME_FIELDS = ["pool", "name", "capacity", "allocation", "vm_id"]
_VM_FIELDS = ["state", "provisioned", "allocation", "disk_count", "collected_at"]


def _sync(model, existing: dict, wanted: dict, fields: list[str], make) -> None:
    """Bring `model`'s rows (existing: key -> row) to `wanted` (key -> field values)."""
    create, update = [], []
    for key, values in wanted.items():
        row = existing.get(key)
        if row is None:
            create.append(make(key, values))
            continue
        if any(getattr(row, f) != values[f] for f in fields if f != "collected_at"):
            for f, v in values.items():
                setattr(row, f, v)
            update.append(row)
    gone = [row.pk for key, row in existing.items() if key not in wanted]
    if gone:
        model.objects.filter(pk__in=gone).delete()
    if update:
        model.objects.bulk_update(update, fields, batch_size=1000)
    if create:
        model.objects.bulk_create(create, batch_size=1000)


def storage_collect(host: Host, snapshot: gw.StorageSnapshot | None = None) -> gw.StorageSnapshot:
    """Read the host's storage in bulk (unless given) and store it. Raises the gateway's
    error when the host cannot be read (the collector marks it unreachable)."""
    snap = snapshot or host_snapshot(host, workers=settings.STORAGE_LIBVIRT_READ_WORKERS)  # encrypted: containers
    now = timezone.now()
    vm_ids = dict(VirtualMachine.objects.filter(host=host, present=True).values_list("uuid", "pk"))
    vm_ids = {str(k): v for k, v in vm_ids.items()}
    owner = {d.path: vm_ids.get(dom.uuid) for dom in snap.domains for d in dom.disks if d.path}

    pools = {
        p.name: {"uuid": p.uuid, "active": p.active, "path": p.path, "capacity": p.capacity,
                 "allocation": p.allocation, "available": p.available,
                 "provisioned": sum(v.capacity for v in p.volumes),
                 "volume_allocation": sum(v.allocation for v in p.volumes), "volume_count": len(p.volumes),
                 "collected_at": now}
        for p in snap.pools
    }  # fmt: skip
    volumes = {
        v.path: {"pool": v.pool, "name": v.name, "capacity": v.capacity, "allocation": v.allocation,
                 "vm_id": owner.get(v.path)}
        for p in snap.pools for v in p.volumes
    }  # fmt: skip
    disks = {
        vm_ids[d.uuid]: {"state": d.state, "provisioned": d.provisioned, "allocation": d.allocation,
                         "disk_count": len({x.target for x in d.disks}), "collected_at": now}
        for d in snap.domains if d.uuid in vm_ids
    }  # fmt: skip
    with transaction.atomic():
        _sync(PoolState, {r.name: r for r in PoolState.objects.filter(host=host)}, pools, _POOL_FIELDS,
              lambda name, values: PoolState(host=host, name=name, **values))  # fmt: skip
        _sync(VolumeState, {r.path: r for r in VolumeState.objects.filter(host=host)}, volumes, _VOLUME_FIELDS,
              lambda path, values: VolumeState(host=host, path=path, **values))  # fmt: skip
        _sync(VmDiskState, {r.vm_id: r for r in VmDiskState.objects.filter(vm__host=host)}, disks, _VM_FIELDS,
              lambda vm_id, values: VmDiskState(vm_id=vm_id, **values))  # fmt: skip
    return snap
