"""Volumes of a VM: create (qcow2, thin), resize (live or offline), delete. Each is a job;
the quota, the pool's overcommit ratio and its free-space reserve are checked when the
job is asked for and again when it runs."""

from __future__ import annotations

from django.apps import apps as django_apps
from django.db import transaction
from django.db.models import F

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, NotFound
from apps.core.gateways import libvirt as gw
from apps.core.models import Host, Job
from apps.core.validators import validate_name
from apps.vms.history import revision_capture
from apps.vms.models import VirtualMachine

from ..disks import vm_disks
from ..fields import MIB
from ..models import BreachAction, PoolLimit, StorageAlert
from ..quota_rules import defaults_read, effective_pool_limit, effective_quota, fmt_bytes, quota_of
from .collect import storage_collect

NEW_VOLUME_ALLOCATION = MIB  # what a fresh thin qcow2 takes at most (its metadata)


def growth_check(vm, disks: gw.DomainDisks, pool: gw.PoolInfo, grow: int, new_allocation: int = 0) -> None:
    """Refuse growth by `grow` bytes of provisioned capacity that would cross the VM's
    quota, the pool's overcommit ratio or its reserve; say by how much."""
    defaults = defaults_read()
    quota = effective_quota(quota_of(vm), defaults)
    blocked = StorageAlert.objects.filter(
        vm=vm, state=StorageAlert.State.OPEN, level=StorageAlert.Level.BREACH, action_applied=BreachAction.REFUSE
    ).first()
    if blocked is not None:
        raise Conflict(
            f"{vm.name} is over its storage quota ({fmt_bytes(blocked.usage)} used of "
            f"{fmt_bytes(blocked.limit)}) and its quota refuses growth until usage falls or the quota is expanded."
        )
    provisioned = disks.provisioned + grow
    if provisioned > quota.limit_bytes:
        raise InvalidInput(
            f"{vm.name} would have {fmt_bytes(provisioned)} of disks, {fmt_bytes(provisioned - quota.limit_bytes)} "
            f"over its quota of {fmt_bytes(quota.limit_bytes)}. Expand the quota or choose a smaller size."
        )
    _pool_check(vm.host, pool, grow, new_allocation, defaults)


def new_vm_space_check(host: Host, vm_name: str, pools: dict[str, tuple[gw.PoolInfo, int, int]]) -> None:
    """A VM about to be created: its disks (grow bytes provisioned, allocation bytes written
    now, per pool) against the default quota (a new VM has no quota of its own), then each
    pool's overcommit ratio, reserve and free space. Nothing exists yet when it refuses."""
    for pool, grow, _allocation in pools.values():
        if pool.capacity and grow > pool.capacity:
            raise InvalidInput(
                f"{fmt_bytes(grow)} of disks is beyond pool {pool.name}'s size of {fmt_bytes(pool.capacity)}."
            )
    defaults = defaults_read()
    quota = effective_quota(None, defaults)
    provisioned = sum(grow for _pool, grow, _alloc in pools.values())
    if provisioned > quota.limit_bytes:
        raise InvalidInput(
            f"{vm_name} would have {fmt_bytes(provisioned)} of disks, {fmt_bytes(provisioned - quota.limit_bytes)} "
            f"over the default quota of {fmt_bytes(quota.limit_bytes)}. Choose smaller disks."
        )
    for pool, grow, allocation in pools.values():
        _pool_check(host, pool, grow, allocation, defaults)


def _pool_check(host: Host, pool: gw.PoolInfo, grow: int, new_allocation: int, defaults) -> None:
    limit = effective_pool_limit(PoolLimit.objects.filter(host=host, pool=pool.name).first(), defaults)
    promised = sum(v.capacity for v in pool.volumes) + grow
    allowed = int(pool.capacity * limit.max_overcommit)
    if pool.capacity and promised > allowed:
        raise InvalidInput(
            f"Pool {pool.name} would promise {fmt_bytes(promised)} on {fmt_bytes(pool.capacity)} "
            f"({promised / pool.capacity:.2f}x), {fmt_bytes(promised - allowed)} over its maximum overcommit of "
            f"{limit.max_overcommit}x."
        )
    reserve = pool.capacity * limit.reserve_percent // 100
    free_after = pool.available - new_allocation
    if free_after < reserve:
        raise InvalidInput(
            f"Pool {pool.name} has {fmt_bytes(pool.available)} free; this would leave "
            f"{fmt_bytes(max(free_after, 0))}, {fmt_bytes(reserve - free_after)} inside its "
            f"{limit.reserve_percent}% reserve ({fmt_bytes(reserve)})."
        )


def _growth_lock(vm) -> None:
    """Serialise disk growth on the VM's host between workers: a no-op UPDATE of the host
    row takes its row lock (PostgreSQL) or the write lock (SQLite) until the transaction
    ends, so two jobs, of one VM or of two VMs sharing a pool, cannot both pass the quota
    and pool-limit checks and together exceed them."""
    Host.objects.filter(pk=vm.host_id).update(name=F("name"))


def _disk(disks: gw.DomainDisks, target: str) -> gw.DiskInfo:
    for d in disks.disks:  # the first entry of a target is the top of its chain
        if d.target == target:
            return d
    raise NotFound(f"{disks.name} has no disk {target!r}.")


def _volume_of(vm, disk: gw.DiskInfo) -> gw.VolumeInfo:
    vol = gw.volume_find_by_path(vm.host.uri, disk.path) if disk.path else None
    if vol is None:
        raise NotFound(
            f"Disk {disk.target} of {vm.name} is not a volume of a storage pool; the portal cannot change it."
        )
    return vol


def _enqueue(ev, actor, kind: str, vm, params: dict) -> Job:
    """The job; its request is audited by job_enqueue ("requested"), not by the `audited`
    block around this call (which audits a refusal)."""
    with transaction.atomic():
        job = jobs.job_enqueue(actor=actor, kind=kind, target=vm, host=vm.host, params=params)
    ev.recorded = True
    return job


def _gib(n: int) -> str:
    return f"{n / (1 << 30):g}"


def _check_size(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InvalidInput(f"The {what} must be more than 0 GiB.")
    return n


def volume_create(*, actor, vm, size_bytes: int, name: str = "", pool: str = "") -> Job:
    """A new thin qcow2 volume attached to the VM as its next disk (`size_bytes`, which
    the form rounded to whole MiB). The request is audited by the job (requested)."""
    kind = "storage.volume.create"
    params = {"size_gib": _gib(size_bytes), "volume": name, "pool": pool}
    with audited(actor=actor, action=kind, target=vm, perm="storage.change", params=params) as ev:
        size = _check_size(size_bytes, "volume size")
        disks = vm_disks(vm)
        if not pool:
            first = next((d for d in disks.disks if d.path), None)
            vol = gw.volume_find_by_path(vm.host.uri, first.path) if first else None
            if vol is None:
                raise InvalidInput(f"{vm.name} has no disk in a storage pool: choose the pool for the new volume.")
            pool = vol.pool
        validate_name(pool, "pool name")
        name = name or f"{vm.name}-{len({d.target for d in disks.disks}) + 1}"
        if not name.endswith(".qcow2"):
            name += ".qcow2"
        validate_name(name, "volume name")
        ev.params.update(volume=name, pool=pool)
        if gw.volume_find(vm.host.uri, pool, name) is not None:
            raise Conflict(f"Pool {pool} already has a volume named {name}.")
        growth_check(vm, disks, gw.pool_get(vm.host.uri, pool), size, NEW_VOLUME_ALLOCATION)
        return _enqueue(ev, actor, kind, vm, {**ev.params, "bytes": size})


@jobs.handler("storage.volume.create")
def _run_volume_create(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(jobs.job_actor(job), "storage.change", vm, action=job.kind)
    uri, pool, name, size = vm.host.uri, job.params["pool"], job.params["volume"], job.params["bytes"]
    with transaction.atomic():
        _growth_lock(vm)
        vol = gw.volume_find(uri, pool, name)
        if vol is None:
            growth_check(vm, vm_disks(vm), gw.pool_get(uri, pool), size, NEW_VOLUME_ALLOCATION)
            progress(20, f"creating {name} ({fmt_bytes(size)}, thin qcow2) in {pool}")
            vol = gw.volume_create(uri, pool, name, size)
        else:
            progress(50, f"{name} already exists")  # re-delivered job
        progress(70, f"attaching {name} to {vm.name}")
        target = gw.domain_disk_attach(uri, vm.name, vol.path)
    revision_capture(vm=vm, actor=jobs.job_actor(job), reason=job.kind)  # configuration history
    storage_collect(vm.host)  # the pages show the change at once
    return {"volume": name, "pool": pool, "target": target, "capacity": vol.capacity}


def volume_resize(*, actor, vm, target: str, size_bytes: int) -> Job:
    """Grow a disk to `size_bytes` (its new capacity): live with blockResize when the VM
    runs, vol-resize when it is off. Shrinking is refused: it would lose data."""
    kind = "storage.volume.resize"
    params = {"target": target, "size_gib": _gib(size_bytes)}
    with audited(actor=actor, action=kind, target=vm, perm="storage.change", params=params) as ev:
        size = _check_size(size_bytes, "new size")
        disks = vm_disks(vm)
        disk = _disk(disks, target)
        vol = _volume_of(vm, disk)
        if size < vol.capacity:
            raise InvalidInput(
                f"Disk {target} of {vm.name} is {fmt_bytes(vol.capacity)}; shrinking it to {fmt_bytes(size)} "
                "would lose data and is not offered."
            )
        if size == vol.capacity:
            raise InvalidInput(f"Disk {target} of {vm.name} is already {fmt_bytes(size)}.")
        growth_check(vm, disks, gw.pool_get(vm.host.uri, vol.pool), size - vol.capacity)
        return _enqueue(ev, actor, kind, vm, {**params, "bytes": size, "path": vol.path, "pool": vol.pool})


@jobs.handler("storage.volume.resize")
def _run_volume_resize(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(jobs.job_actor(job), "storage.change", vm, action=job.kind)
    uri, path, size = vm.host.uri, job.params["path"], job.params["bytes"]
    with transaction.atomic():
        _growth_lock(vm)
        disks = vm_disks(vm)
        disk = _disk(disks, job.params["target"])
        if disk.path != path:
            raise Conflict(f"Disk {disk.target} of {vm.name} is no longer {path}; nothing was resized.")
        vol = _volume_of(vm, disk)
        if vol.capacity >= size:
            progress(90, f"{disk.target} is already {fmt_bytes(vol.capacity)}")  # re-delivered job
            storage_collect(vm.host)  # the pages show the change at once
            return {"target": disk.target, "capacity": vol.capacity, "live": False}
        growth_check(vm, disks, gw.pool_get(uri, vol.pool), size - vol.capacity)
        live = disks.state in ("running", "paused")
        progress(30, f"resizing {disk.target} to {fmt_bytes(size)} {'live' if live else 'offline'}")
        if live:
            gw.domain_disk_resize(uri, vm.name, path, size)
        else:
            gw.volume_resize(uri, path, size)
    storage_collect(vm.host)  # the pages show the change at once
    return {"target": disk.target, "capacity": size, "live": live}


def _encrypted_disk(vm, target: str):
    """The VM's encrypted disk on `target`, if the encryption app owns one there."""
    if not django_apps.is_installed("apps.encryption"):
        return None
    from apps.encryption.models import EncryptedDisk

    return EncryptedDisk.objects.select_related("vm", "host").filter(vm=vm, target=target).first()


def volume_delete(*, actor, vm, target: str, confirmed: bool = False) -> Job:
    """Detach a disk from a shut-off VM and delete its volume (asks for confirmation).
    An encrypted disk belongs to the encryption app: its own service deletes it (closing
    it, retiring its key, removing its record)."""
    kind = "storage.volume.delete"
    authorize(actor, "storage.change", vm, action=kind)
    encrypted = _encrypted_disk(vm, target)
    if encrypted is not None:
        from apps.encryption.services import disk_delete

        return disk_delete(actor=actor, disk=encrypted, confirmed=confirmed)
    with audited(actor=actor, action=kind, target=vm, params={"target": target}) as ev:
        disks = vm_disks(vm)
        disk = _disk(disks, target)
        vol = _volume_of(vm, disk)
        ev.params.update(pool=vol.pool, volume=vol.name)
        if not confirmed:
            raise InvalidInput(f"Deleting disk {target} ({vol.name}) of {vm.name} destroys its data: confirm it.")
        if disks.state != "shut off":
            raise Conflict(f"{vm.name} is {disks.state}: shut it down before deleting one of its disks.")
        return _enqueue(ev, actor, kind, vm, {**ev.params, "path": vol.path})


@jobs.handler("storage.volume.delete")
def _run_volume_delete(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(jobs.job_actor(job), "storage.change", vm, action=job.kind)
    uri, path, pool, name = vm.host.uri, job.params["path"], job.params["pool"], job.params["volume"]
    if gw.domain_state(uri, vm.name) != "shut off":
        raise Conflict(f"{vm.name} was started meanwhile; the disk was not deleted.")
    progress(20, f"detaching {job.params['target']} from {vm.name}")
    gw.domain_disk_detach(uri, vm.name, path)  # no-op when already detached (re-delivered job)
    revision_capture(vm=vm, actor=jobs.job_actor(job), reason=job.kind)  # configuration history
    if gw.volume_find(uri, pool, name) is not None:
        progress(60, f"deleting {name} from {pool}")
        gw.volume_delete(uri, pool, name)
    storage_collect(vm.host)  # the pages show the change at once
    return {"volume": name, "pool": pool}
