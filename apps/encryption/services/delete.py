"""Deleting an encrypted disk, whichever page asks (the encryption app owns LUKS disks:
the storage page's volume delete comes here). The job closes the disk, detaches it from
its VM, deletes the volume (and a QEMU-LUKS disk's libvirt secret), retires its key and
removes the record. A retired key stays wrapped in the store for
ENCRYPTION_RETIRED_KEY_GRACE_DAYS, so a backup of the deleted volume can still be read;
the beat task `retired_keys_destroy` then destroys it, audited."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, NotFound, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.jobs import job_actor
from apps.core.models import Job
from apps.vms.history import revision_capture

from ..models import EncryptedDisk, RetiredKey, UnlockPolicy
from .common import device_mapper, get_store

BUSY_KINDS = ("encryption.disk.encrypt", "encryption.disk.change_key", "encryption.disk.create")


def disk_delete(*, actor, disk: EncryptedDisk, confirmed: bool = False) -> Job:
    """Delete the encrypted disk of a shut-off VM (its volume and its data). Refused unless
    `confirmed`, while the VM runs, and while another job works on the disk."""
    action = "encryption.disk.delete"
    params = {"disk_id": disk.pk, "target": disk.target, "volume": disk.volume}
    with audited(actor=actor, action=action, target=disk.vm, perm="encryption.change", params=params) as ev:
        if not confirmed:
            raise InvalidInput(f"Deleting the encrypted disk {disk} destroys its data: confirm it.")
        state = gw.domain_state(disk.host.uri, disk.vm.name)
        if state != "shut off":
            raise Conflict(f"{disk.vm.name} is {state}: shut it down before deleting one of its disks.")
        with transaction.atomic():
            EncryptedDisk.objects.select_for_update().filter(pk=disk.pk).first()  # one request at a time
            from .disks import _jobs_on_disk

            for kind in (*BUSY_KINDS, action):
                busy = _jobs_on_disk(disk, kind)
                if busy is not None:
                    raise Conflict(f"Job {busy.pk} ({busy.label}) is working on {disk}; wait for it to end.")
            job = jobs.job_enqueue(actor=actor, kind=action, target=disk.vm, host=disk.host, params=params)
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


@jobs.handler("encryption.disk.delete")
def _run_disk_delete(job: Job, progress: jobs.Progress) -> dict:
    disk = EncryptedDisk.objects.select_related("vm", "host").filter(pk=job.params["disk_id"]).first()
    if disk is None:  # a re-delivered job whose work is done
        progress(90, "the encrypted disk is already deleted")
        return {"volume": job.params.get("volume", ""), "retired_keys": []}
    actor = job_actor(job)
    authorize(actor, "encryption.change", disk.vm, action=job.kind)
    if gw.domain_state(disk.host.uri, disk.vm.name) != "shut off":
        raise Conflict(f"{disk.vm.name} was started meanwhile; the disk was not deleted.")
    return _disk_delete(disk, actor, job, progress)


def disk_delete_with_vm(*, actor, disk: EncryptedDisk, job=None, progress=None) -> dict:
    """The VM's delete (or a failed create) takes its encrypted disk with it, now, in the
    caller's job: the VM is off or not defined; the volume goes, the key is retired.
    Audited as encryption.disk.delete."""
    with audited(actor=actor, action="encryption.disk.delete", target=disk.vm, perm="encryption.change",
                 params={"disk_id": disk.pk, "volume": disk.volume, "with_vm": True}, job=job):  # fmt: skip
        return _disk_delete(disk, actor, job, progress or (lambda percent, message="": None))


def _disk_delete(disk: EncryptedDisk, actor, job, progress) -> dict:
    uri, vm = disk.host.uri, disk.vm
    progress(10, "closing the encrypted disk")
    dm = device_mapper()
    for name in {disk.mapping, disk.mapping_name} - {""}:
        dm.close(name)
    progress(30, f"detaching {disk.target} from {vm.name}")
    try:
        gw.domain_disk_detach_target(uri, vm.name, disk.target)
    except NotFound:  # the VM is gone already (a VM delete): nothing to detach from
        pass
    else:
        revision_capture(vm=vm, actor=actor, reason="encryption.disk.delete")  # configuration history
    progress(50, f"deleting {disk.volume} from {disk.pool}")
    gw.volume_delete_if_exists(uri, disk.pool, disk.volume)
    if disk.secret_uuid:
        gw.secret_remove(uri, disk.secret_uuid)
    progress(80, "retiring the disk's key")
    retired = []
    with transaction.atomic():
        for key_id in (disk.key_id, disk.pending_key_id):
            if key_id:
                retire_key(disk, key_id, actor=actor, job=job)
                retired.append(key_id)
        disk.delete()
    from .hook import hook_registry_sync

    hook_registry_sync(vm)
    return {"volume": disk.volume, "pool": disk.pool, "retired_keys": retired}


def retire_key(disk: EncryptedDisk, key_id: str, *, actor, job=None) -> RetiredKey:
    """The key no longer opens (or no longer needs to open) the disk: keep it wrapped for
    the grace period, then the beat task destroys it. Idempotent; audited."""
    destroy_after = timezone.now() + timedelta(days=settings.ENCRYPTION_RETIRED_KEY_GRACE_DAYS)
    retired, created = RetiredKey.objects.get_or_create(
        key_id=key_id,
        defaults={
            "host": disk.host,
            "vm_name": disk.vm.name,
            "vm_uuid": disk.vm_uuid,
            "path": disk.path,
            "destroy_after": destroy_after,
        },
    )
    if created:
        record(
            actor=actor,
            action="encryption.key.retire",
            target=disk.vm,
            outcome="success",
            params={"retired": key_id, "volume": disk.path, "destroy_after": retired.destroy_after.isoformat()},
            job=job,
        )
    return retired


def _in_use(key_id: str) -> bool:
    """A disk still opens with this stored key (a manual-unlock VM's disks do not)."""
    return (
        EncryptedDisk.objects.filter(key_id=key_id).exclude(vm__unlock_policy__mode=UnlockPolicy.Mode.MANUAL).exists()
    )


def retired_keys_destroy(*, actor=None, now=None) -> list[str]:
    """Destroy the key files of retired keys whose grace period is over (beat, hourly)."""
    action = "encryption.key.destroy"
    authorize(actor, "encryption.keys", anywhere=True, action=action)
    now = now or timezone.now()
    store = get_store()
    destroyed = []
    for retired in RetiredKey.objects.select_related("host").filter(destroyed_at=None, destroy_after__lte=now):
        if _in_use(retired.key_id):  # never a key a disk opens with
            continue
        try:
            with audited(
                actor=actor,
                action=action,
                target=("retiredkey", retired.pk, str(retired)),
                params={"retired": retired.key_id, "vm": retired.vm_name, "volume": retired.path},
            ):
                try:
                    store.delete(retired.key_id)
                except OSError as exc:
                    raise Conflict(f"Could not destroy the retired key {retired.key_id}: {exc.strerror}.") from None
                RetiredKey.objects.filter(pk=retired.pk).update(destroyed_at=now)
        except PortalError:  # audited as failed; the other keys are still destroyed
            continue
        destroyed.append(retired.key_id)
    return destroyed
