"""Automatic unlock: every start of a VM with encrypted disks opens them with the stored
keys first, and every stop closes them, whoever starts it.

At rest the VM's definition never names a LUKS2 container: its disk names the unlocked
path (/dev/mapper/portal-XXXX, or SimulatedDeviceMapper's stand-in on machines without
device-mapper, settings.ENCRYPTION_DEVICE_MAPPER="simulated"), which exists only while the
disk is open. A start that did not open the disk fails; the guest never sees the container.
The opening itself runs in the portal's start job and, for starts from elsewhere (`virsh
start`, autostart at host boot), in the libvirt qemu hook (services/hook.py), which must
not call libvirt: so `disks_unlock(in_hook=True)` only runs cryptsetup and reads the store.
QEMU-LUKS disks: QEMU opens them with a private, persistent libvirt secret holding the key
(so a start outside the portal has it); the portal's start refreshes it, and the hook
refuses the start while the store is sealed or the key missing."""

from __future__ import annotations

import time

from django.db import transaction

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.jobs import job_actor
from apps.core.models import Job
from apps.vms.history import revision_capture
from apps.vms.models import VirtualMachine

from ..models import EncryptedDisk
from .common import device_mapper, get_store, stored_key

SHUTDOWN_WAIT_SECONDS = 120


def vm_start_unlocked(*, actor, vm: VirtualMachine) -> Job:
    action = "encryption.vm.start"
    with audited(actor=actor, action=action, target=vm, perm="vms.operate") as ev:
        state = gw.domain_state(vm.host.uri, vm.name)
        if state not in ("shut off", "crashed"):
            raise Conflict(f"Cannot start {vm.name}: it is {state}.")
        get_store().require_unsealed()
        with transaction.atomic():
            job = jobs.job_enqueue(actor=actor, kind=action, target=vm, host=vm.host, params={})
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


def mapping_source(disk: EncryptedDisk) -> tuple[str, bool]:
    """What the VM's definition names for a LUKS2 disk: (the unlocked path, is a block device)."""
    dm = device_mapper()
    return dm.mapping_path(disk.mapping_name), dm.block


def point_at_mapping(disk: EncryptedDisk) -> bool:
    """Make the VM's persistent definition name the disk's unlocked path, not the container
    (a definition from before this rule, or edited by hand, is repaired by the portal's next
    start and by the beat task `definitions_protect`). True when it had to be changed."""
    if disk.kind != EncryptedDisk.Kind.LUKS2:
        return False
    source, block = mapping_source(disk)
    current = {d["target"]: d["path"] for d in gw.domain_disks_defined(disk.host.uri, disk.vm.name)}
    if disk.target in current and current[disk.target] != source:
        gw.domain_disk_set_source(disk.host.uri, disk.vm.name, disk.target, source, block=block)
        revision_capture(vm=disk.vm, actor=None, reason="encryption.disk.point_at_mapping")  # configuration history
        return True
    return False


def _refuse_unfinished(vm: VirtualMachine, targets: set[str]) -> None:
    """A disk of the definition still being encrypted (or whose creation or encryption
    stopped) cannot be opened yet: say so instead of letting QEMU fail on a missing path."""
    unfinished = EncryptedDisk.objects.filter(
        vm=vm, state__in=[EncryptedDisk.State.ENCRYPTING, EncryptedDisk.State.FAILED], target__in=targets
    )
    for disk in unfinished:
        raise Conflict(
            f"Disk {disk.target} of {vm.name} is {disk.state}: its creation or in-place encryption did not finish. "
            "Run encrypt-existing again to resume an in-place encryption, or delete the disk, before starting the VM."
        )


def disks_unlock(
    vm: VirtualMachine, progress: jobs.Progress | None = None, *, in_hook: bool = False, targets=None
) -> list[str]:
    """Open every ready encrypted disk of the VM with its stored key (idempotent).
    in_hook: called from the libvirt hook, so no libvirt call at all (the definition
    already names the unlocked paths; the QEMU-LUKS secrets already hold their keys), and
    `targets` are the disks of the domain XML libvirt handed to the hook."""
    if targets is None:  # the definition libvirt will start (the hook passes the one it was given)
        if in_hook:
            raise ValueError("the hook passes the targets of the domain XML it was given")
        targets = {d["target"] for d in gw.domain_disks_defined(vm.host.uri, vm.name)}
    _refuse_unfinished(vm, targets)
    disks = list(EncryptedDisk.objects.filter(vm=vm, state=EncryptedDisk.State.READY).select_related("vm", "host"))
    if not disks:
        return []
    dm = device_mapper()
    from .manual import is_manual, manual_unlock_refusal

    if is_manual(vm):  # only an admin's typed passphrase opens these (services/manual.py)
        if not all(d.kind == EncryptedDisk.Kind.LUKS2 and dm.is_open(d.mapping_name) for d in disks):
            raise manual_unlock_refusal(vm)
        return [d.target for d in disks]
    store = get_store()
    store.require_unsealed()
    opened = []
    for disk in disks:
        key = stored_key(store, disk)  # refuses a missing or altered key before anything starts
        if disk.kind == EncryptedDisk.Kind.QEMU_LUKS:
            if not in_hook:
                gw.secret_set_value(vm.host.uri, disk.secret_uuid, key.hex().encode())
        else:
            if not in_hook:
                point_at_mapping(disk)
            name = disk.mapping_name
            if not dm.is_open(name):
                dm.open(disk.path, name, key)
            EncryptedDisk.objects.filter(pk=disk.pk).update(mapping=name)
        opened.append(disk.target)
        if progress:
            progress(20 + 50 * len(opened) // len(disks), f"opened encrypted disk {disk.target}")
    return opened


def disks_lock(vm: VirtualMachine) -> list[str]:
    """Close every opened LUKS2 mapping of the VM (idempotent). The definition keeps naming
    the unlocked path, which no longer exists: the next start has to open it again."""
    dm = device_mapper()
    closed = []
    for disk in EncryptedDisk.objects.filter(vm=vm).exclude(mapping=""):
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
    _registry_refresh(vm)
    progress(80, f"starting {vm.name}")
    gw.domain_start(vm.host.uri, vm.name)
    state = gw.domain_state(vm.host.uri, vm.name)
    VirtualMachine.objects.filter(pk=vm.pk).update(last_state=state)
    return {"state": state, "opened": opened}


def vm_stop_locked(*, actor, vm: VirtualMachine, force: bool = False, confirmed: bool = False) -> Job:
    action = "encryption.vm.stop"
    with audited(actor=actor, action=action, target=vm, perm="vms.operate") as ev:
        if not confirmed:
            raise InvalidInput(f"Stopping {vm.name} and closing its encrypted disks needs confirmation.")
        with transaction.atomic():
            job = jobs.job_enqueue(actor=actor, kind=action, target=vm, host=vm.host, params={"force": bool(force)})
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


@jobs.handler("encryption.vm.stop")
def _run_stop(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(job_actor(job), "vms.operate", vm, action=job.kind)
    uri = vm.host.uri
    if gw.domain_state(uri, vm.name) != "shut off":
        if job.params.get("force"):
            progress(20, f"powering {vm.name} off")
            gw.domain_force_off(uri, vm.name)
        else:
            progress(20, f"asking {vm.name} to shut down")
            gw.domain_shutdown(uri, vm.name)
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
    _registry_refresh(vm)


def lock_hook(vm: VirtualMachine, progress: jobs.Progress) -> None:
    """Once the portal sees a VM off (vms lifecycle job): close its encrypted disks."""
    if disks_lock(vm):
        progress(80, "closed the encrypted disks")


def _registry_refresh(vm: VirtualMachine) -> None:
    """The portal's start keeps the hook's registry entry current (e.g. after an upgrade)."""
    from .hook import hook_registry_sync

    hook_registry_sync(vm)
