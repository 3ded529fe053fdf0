"""Automatic unlock: starting a VM with encrypted disks opens them with the stored keys
first, and stopping it closes them.

LUKS2 disks (cryptsetup): the device-mapper mapping is opened with the stored key (on
stdin) and the VM's disk is pointed at /dev/mapper/NAME; on stop the disk is pointed back
at the image and the mapping closed. On machines without device-mapper the kernel step is
replaced by SimulatedDeviceMapper (settings.ENCRYPTION_DEVICE_MAPPER="simulated"); every
other step is the real one.
QEMU-LUKS disks: the libvirt secret (ephemeral, private) is given the stored key through
secretSetValue before the start; QEMU opens the disk itself."""

from __future__ import annotations

import time

from django.db import transaction

from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, PortalError
from apps.core.gateways import libvirt_gw as gw
from apps.core.models import Job
from apps.vms.models import VirtualMachine

from ..gateways import libvirt_luks as lv
from ..models import EncryptedDisk
from .common import authorize, device_mapper, fail, get_store, job_actor, stored_key

SHUTDOWN_WAIT_SECONDS = 120


def vm_start_unlocked(*, actor, vm: VirtualMachine) -> Job:
    action = "encryption.vm.start"
    authorize(actor, "vms.operate", vm, action=action)
    try:
        state = gw.domain_state(vm.host.uri, vm.name)
        if state not in ("shut off", "crashed"):
            raise Conflict(f"Cannot start {vm.name}: it is {state}.")
        get_store().require_unsealed()
        with transaction.atomic():
            return jobs.job_enqueue(actor=actor, kind=action, target=vm, host=vm.host, params={})
    except PortalError as exc:
        fail(actor=actor, action=action, target=vm, error=exc.message)
        raise


def disks_unlock(vm: VirtualMachine, progress: jobs.Progress | None = None) -> list[str]:
    """Open every ready encrypted disk of the VM with its stored key (idempotent)."""
    disks = list(EncryptedDisk.objects.filter(vm=vm, state=EncryptedDisk.State.READY).select_related("vm"))
    if not disks:
        return []
    store = get_store()
    store.require_unsealed()
    dm = device_mapper()
    opened = []
    for disk in disks:
        key = stored_key(store, disk)
        if disk.kind == EncryptedDisk.Kind.QEMU_LUKS:
            lv.secret_set_value(vm.host.uri, disk.secret_uuid, key.hex().encode())
        else:
            name = disk.mapping_name
            source = dm.mapping_path(name) if dm.is_open(name) else dm.open(disk.path, name, key)
            lv.set_disk_source(vm.host.uri, vm.name, disk.target, source, block=dm.block)
            EncryptedDisk.objects.filter(pk=disk.pk).update(mapping=name)
        opened.append(disk.target)
        if progress:
            progress(20 + 50 * len(opened) // len(disks), f"opened encrypted disk {disk.target}")
    return opened


def disks_lock(vm: VirtualMachine) -> list[str]:
    """Point every opened LUKS2 disk back at its image and close its mapping (idempotent)."""
    dm = device_mapper()
    closed = []
    for disk in EncryptedDisk.objects.filter(vm=vm).exclude(mapping=""):
        lv.set_disk_source(vm.host.uri, vm.name, disk.target, disk.path, block=False)
        dm.close(disk.mapping)
        EncryptedDisk.objects.filter(pk=disk.pk).update(mapping="")
        closed.append(disk.target)
    return closed


@jobs.handler("encryption.vm.start")
def _run_start(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(job_actor(job), "vms.operate", vm, action=job.kind)
    state = gw.domain_state(vm.host.uri, vm.name)
    if state == "running":
        progress(90, f"{vm.name} is already running")
        return {"state": state}
    progress(10, "opening the encrypted disks with their stored keys")
    opened = disks_unlock(vm, progress)
    progress(80, f"starting {vm.name}")
    gw.start_domain(vm.host.uri, vm.name)
    state = gw.domain_state(vm.host.uri, vm.name)
    VirtualMachine.objects.filter(pk=vm.pk).update(last_state=state)
    return {"state": state, "opened": opened}


def vm_stop_locked(*, actor, vm: VirtualMachine, force: bool = False, confirmed: bool = False) -> Job:
    action = "encryption.vm.stop"
    authorize(actor, "vms.operate", vm, action=action)
    try:
        if not confirmed:
            raise InvalidInput(f"Stopping {vm.name} and closing its encrypted disks needs confirmation.")
        with transaction.atomic():
            return jobs.job_enqueue(actor=actor, kind=action, target=vm, host=vm.host, params={"force": bool(force)})
    except PortalError as exc:
        fail(actor=actor, action=action, target=vm, error=exc.message)
        raise


@jobs.handler("encryption.vm.stop")
def _run_stop(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(job_actor(job), "vms.operate", vm, action=job.kind)
    uri = vm.host.uri
    if gw.domain_state(uri, vm.name) != "shut off":
        if job.params.get("force"):
            progress(20, f"powering {vm.name} off")
            gw.force_off_domain(uri, vm.name)
        else:
            progress(20, f"asking {vm.name} to shut down")
            gw.shutdown_domain(uri, vm.name)
            deadline = time.monotonic() + SHUTDOWN_WAIT_SECONDS
            while gw.domain_state(uri, vm.name) != "shut off" and time.monotonic() < deadline:
                time.sleep(1)
    state = gw.domain_state(uri, vm.name)
    if state != "shut off":
        raise Conflict(f"{vm.name} is still {state}; its encrypted disks stay open. Force it off to close them.")
    progress(70, "closing the encrypted disks")
    closed = disks_lock(vm)
    VirtualMachine.objects.filter(pk=vm.pk).update(last_state=state)
    return {"state": state, "closed": closed}


def unlock_hook(vm: VirtualMachine, progress: jobs.Progress) -> None:
    """Before the portal starts a VM (vms lifecycle job): open its encrypted disks."""
    disks_unlock(vm, progress)


def lock_hook(vm: VirtualMachine, progress: jobs.Progress) -> None:
    """Once the portal sees a VM off (vms lifecycle job): close its encrypted disks."""
    if disks_lock(vm):
        progress(80, "closed the encrypted disks")
