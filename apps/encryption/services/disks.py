"""LUKS disks of VMs: create an encrypted disk, encrypt an existing one in place, change its
key, back up its header, list them. Every change is a job; each handler is idempotent and
resumable (a re-delivered job continues from what the disk and the store say), and fetches
the disk's key from the key store itself: no key is ever in a job's params."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize, restrict
from apps.audit.services import audited, refused
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, NotFound, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.gateways import qemu_img
from apps.core.jobs import job_actor
from apps.core.models import Job
from apps.core.validators import validate_name
from apps.vms.history import revision_capture
from apps.vms.models import VirtualMachine

from ..gateways import cryptsetup as cs
from ..gateways import files
from ..keystore import ensure_private_dir
from ..models import EncryptedDisk, HeaderBackup
from .common import (
    LUKS2_HEADER_BYTES,
    MAX_SIZE_GIB,
    ensure_stored_key,
    get_store,
    key_rotation_due,
    luks_params,
    pool_by_name,
    pool_of_path,
    require_luks2_openable,
    stored_key,
)
from .manual import is_manual
from .unlock import mapping_source, point_at_mapping

log = logging.getLogger(__name__)
GIB = 1 << 30
RESUME_HINT = "Re-run encrypt-existing to resume: the disk records how far it got."


def _refuse_manual(vm) -> None:
    if is_manual(vm):
        raise InvalidInput(
            f"{vm.name} is unlocked manually; switch it to automatic unlock before adding encrypted disks."
        )


def hook_registry_sync(vm) -> None:
    from .hook import hook_registry_sync as sync

    sync(vm)


def _check_gib(gib: int) -> int:
    """The size, typed (forms and commands parse it): a whole number of GiB in range."""
    if not isinstance(gib, int) or isinstance(gib, bool):
        raise InvalidInput(f"The size must be a whole number of GiB, not {str(gib)[:20]!r}.")
    if not 1 <= gib <= MAX_SIZE_GIB:
        raise InvalidInput(f"The size must be between 1 and {MAX_SIZE_GIB} GiB.")
    return gib


def _space_check(vm: VirtualMachine, pool: gw.PoolTarget, grow: int, allocation: int) -> None:
    """The VM's quota and the pool's limits (the storage app's rule), then the pool's free
    space: refuse before anything is written."""
    from apps.storage.disks import vm_disks
    from apps.storage.services import growth_check  # storage imports encryption: imported here

    growth_check(vm, vm_disks(vm), gw.pool_get(vm.host.uri, pool.name), grow, allocation)
    if pool.available < allocation:
        raise InvalidInput(
            f"Pool {pool.name} has {pool.available >> 20} MiB free; this needs {allocation >> 20} MiB. "
            "Free space in the pool first."
        )


def _vm_default_pool(vm: VirtualMachine) -> str:
    for disk in gw.domain_disks_defined(vm.host.uri, vm.name):
        if disk["path"]:
            try:
                return pool_of_path(vm.host, disk["path"]).name
            except InvalidInput:
                continue
    raise InvalidInput(f"{vm.name} has no disk in a storage pool: choose the pool for the encrypted disk.")


# ---------------------------------------------------------------- create-encrypted


def disk_create_encrypted(*, actor, vm: VirtualMachine, size_gib: int, pool: str = "", kind: str = "luks2") -> Job:
    """A new encrypted volume of `size_gib` in the VM's pool, attached to the VM.
    kind "luks2": LUKS2 by cryptsetup (the seed's format), opened by the host at VM start.
    kind "qemu-luks": LUKS1 formatted by libvirt and opened by QEMU with a libvirt secret."""
    action = "encryption.disk.create"
    params = {"size_gib": str(size_gib)[:20], "pool": pool, "kind": kind}
    with audited(actor=actor, action=action, target=vm, perm="encryption.change", params=params) as ev:
        _refuse_manual(vm)
        if kind not in EncryptedDisk.Kind.values:
            raise InvalidInput(f"Unknown encryption kind {kind!r}: choose luks2 or qemu-luks.")
        gib = _check_gib(size_gib)
        if kind == EncryptedDisk.Kind.LUKS2:
            require_luks2_openable(vm.host)
        pool = pool or _vm_default_pool(vm)
        validate_name(pool, "pool name")
        info = pool_by_name(vm.host, pool)
        store = get_store()
        store.require_unsealed()
        volume = f"{vm.name}-enc-{os.urandom(3).hex()}.img"
        path = os.path.join(info.path, volume)
        capacity = gib * GIB + (LUKS2_HEADER_BYTES if kind == EncryptedDisk.Kind.LUKS2 else 0)
        _space_check(vm, info, capacity, LUKS2_HEADER_BYTES)
        target = gw.domain_disk_next_target(vm.host.uri, vm.name)
        ev.params.update(pool=pool, volume=volume)
        with transaction.atomic():
            disk = EncryptedDisk.objects.create(
                host=vm.host,
                vm=vm,
                vm_uuid=vm.uuid,
                path=path,
                pool=pool,
                volume=volume,
                target=target,
                kind=kind,
                size_bytes=capacity,
                key_id=store.new_key_id(),
                state=EncryptedDisk.State.CREATING,
            )
            job = jobs.job_enqueue(
                actor=actor, kind=action, target=vm, host=vm.host, params={**ev.params, "disk_id": disk.pk}
            )
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


@jobs.handler("encryption.disk.create")
def _run_disk_create(job: Job, progress: jobs.Progress) -> dict:
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    authorize(job_actor(job), "encryption.change", disk.vm, action=job.kind)
    try:
        result = _disk_create(disk, progress)
    except Exception:
        _mark_failed(disk)
        raise
    revision_capture(vm=disk.vm, actor=job_actor(job), reason=job.kind)  # configuration history
    return result


def _disk_create(disk: EncryptedDisk, progress: jobs.Progress) -> dict:
    uri = disk.host.uri
    store = get_store()
    store.require_unsealed()
    progress(10, "fetching the disk key from the key store")
    key = ensure_stored_key(store, disk)
    if disk.kind == EncryptedDisk.Kind.QEMU_LUKS:
        secret = gw.secret_ensure(uri, usage_volume=disk.path, description=f"portal disk key {disk}")
        gw.secret_set_value(uri, secret, key.hex().encode())
        if disk.secret_uuid != secret:
            EncryptedDisk.objects.filter(pk=disk.pk).update(secret_uuid=secret)
        progress(30, "creating the QEMU LUKS volume")
        if gw.volume_find(uri, disk.pool, disk.volume) is None:
            gw.volume_create_luks(uri, disk.pool, disk.volume, disk.size_bytes, secret)
        disk_xml = gw.disk_encrypted_xml(source=disk.path, target=disk.target, secret_uuid=secret)
    else:
        progress(30, "creating the volume")
        gw.volume_ensure_raw(uri, disk.pool, disk.volume, disk.size_bytes)
        if not cs.is_luks(disk.path):
            progress(50, "writing the LUKS2 header")
            cs.luks_format(disk.path, key, luks_params())
        elif not cs.test_key(disk.path, key):
            raise Conflict(f"{disk.path} is a LUKS device that the stored key does not open; left untouched.")
        # the guest is given the unlocked path, never the container (see services/unlock.py)
        source, block = mapping_source(disk)
        disk_xml = gw.disk_encrypted_xml(source=source, target=disk.target, block=block)
    progress(80, f"attaching it to {disk.vm.name} as {disk.target}")
    if disk.target not in {d["target"] for d in gw.domain_disks_defined(uri, disk.vm.name)}:
        gw.domain_disk_attach_xml(uri, disk.vm.name, disk_xml)
    hook_registry_sync(disk.vm)
    EncryptedDisk.objects.filter(pk=disk.pk).update(state=EncryptedDisk.State.READY, key_created_at=timezone.now())
    return {"disk_id": disk.pk, "path": disk.path, "target": disk.target}


def disk_create_with_vm(*, actor, vm: VirtualMachine, pool: str, size_bytes: int, job=None,
                        progress=None) -> EncryptedDisk:  # fmt: skip
    """An encrypted disk for a VM being created, now, in the caller's job (the VM create
    checked quota and pool before anything was made). The qemu-luks kind: QEMU opens it
    with a libvirt secret, so it works on hosts with or without device-mapper. The domain
    must be defined (the disk is attached to its definition). Audited as
    encryption.disk.create; a failure leaves the row FAILED for the caller's clean-up."""
    params = {"size_bytes": size_bytes, "pool": pool, "kind": EncryptedDisk.Kind.QEMU_LUKS, "with_vm": True}
    with audited(actor=actor, action="encryption.disk.create", target=vm, perm="encryption.change", params=params,
                 job=job):  # fmt: skip
        info = pool_by_name(vm.host, pool)
        store = get_store()
        store.require_unsealed()
        volume = f"{vm.name}-enc-{os.urandom(3).hex()}.img"
        disk = EncryptedDisk.objects.create(
            host=vm.host, vm=vm, vm_uuid=vm.uuid, path=os.path.join(info.path, volume), pool=pool, volume=volume,
            target=gw.domain_disk_next_target(vm.host.uri, vm.name), kind=EncryptedDisk.Kind.QEMU_LUKS,
            size_bytes=size_bytes, key_id=store.new_key_id(), state=EncryptedDisk.State.CREATING,
        )  # fmt: skip
        try:
            _disk_create(disk, progress or (lambda percent, message="": None))
        except Exception:
            _mark_failed(disk)
            raise
    disk.refresh_from_db()
    return disk


# ---------------------------------------------------------------- encrypt-existing


def disk_encrypt_existing(*, actor, vm: VirtualMachine, path: str, confirmed: bool = False) -> Job:
    """Encrypt a disk of a shut-off VM in place (LUKS2, offline re-encryption). The image
    grows by 32 MiB for the header; its first 32 MiB are saved first so a failed start can
    be undone; cryptsetup records its progress in the header, so a killed job resumes.
    Destructive: refused unless `confirmed`."""
    action = "encryption.disk.encrypt"
    with audited(
        actor=actor, action=action, target=vm, perm="encryption.change", params={"path": str(path)[:500]}
    ) as ev:
        params = ev.params
        if not confirmed:
            raise InvalidInput(f"Encrypting a disk of {vm.name} in place needs confirmation.")
        if not path or "\x00" in path:
            raise InvalidInput("Give the path of the disk image to encrypt.")
        _refuse_manual(vm)
        require_luks2_openable(vm.host)
        info = pool_of_path(vm.host, path)
        real = os.path.realpath(path)
        params["path"] = real
        disks = {os.path.realpath(d["path"]): d for d in gw.domain_disks_defined(vm.host.uri, vm.name) if d["path"]}
        known = EncryptedDisk.objects.filter(vm=vm, path=real).exists()  # its definition names the mapping
        if real not in disks and not known:
            raise InvalidInput(f"{path} is not a disk of {vm.name}.")
        state = gw.domain_state(vm.host.uri, vm.name)
        if state != "shut off":
            raise Conflict(f"{vm.name} is {state}: shut it off before encrypting its disk in place.")
        unfinished = EncryptedDisk.objects.filter(
            host=vm.host, path=real, state__in=[EncryptedDisk.State.ENCRYPTING, EncryptedDisk.State.FAILED]
        ).first()
        if unfinished is not None:
            job = _encrypt_resume(actor, vm, unfinished, params)
            ev.recorded = True  # job_enqueue recorded "requested", the job records its end
            return job
        if not os.path.isfile(real):
            raise InvalidInput(f"{path} is not a regular file.")
        if EncryptedDisk.objects.filter(host=vm.host, path=real).exists() or cs.is_luks(real):
            raise Conflict(f"{path} is already a LUKS device.")
        fmt = disks[real]["format"] or "raw"
        params["format"] = fmt
        size = _check_image(vm, path, real, fmt)
        # the image grows by 32 MiB and its head is saved (32 MiB); encryption writes every
        # block, so a sparse image fills up; a qcow2 image is first copied to raw beside it
        need = size + cs.ENCRYPT_RESERVE_BYTES * 2
        if fmt == "raw":
            need -= min(files.allocated_bytes(real), size)
        if files.free_bytes(os.path.dirname(real)) < need:
            raise InvalidInput(
                f"Too little space next to {path}: in-place encryption needs {need >> 20} MiB free in pool {info.name}."
            )
        _space_check(vm, info, cs.ENCRYPT_RESERVE_BYTES, need)
        store = get_store()
        store.require_unsealed()
        with transaction.atomic():
            disk = EncryptedDisk.objects.create(
                host=vm.host,
                vm=vm,
                vm_uuid=vm.uuid,
                path=real,
                pool=info.name,
                volume=os.path.basename(real),
                target=disks[real]["target"],
                kind=EncryptedDisk.Kind.LUKS2,
                size_bytes=size + cs.ENCRYPT_RESERVE_BYTES,
                key_id=store.new_key_id(),
                state=EncryptedDisk.State.ENCRYPTING,
            )
            job = jobs.job_enqueue(
                actor=actor,
                kind=action,
                target=vm,
                host=vm.host,
                params={**params, "disk_id": disk.pk, "original_size": size},  # raw size
            )
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


def _check_image(vm: VirtualMachine, path: str, real: str, fmt: str) -> int:
    """The size of the raw disk the image becomes, or the reason it cannot be encrypted in
    place: a format other than raw or qcow2, a backing chain, snapshots (internal, or
    libvirt's of the VM) that would point at a disk that no longer exists."""
    if fmt not in qemu_img.FORMATS:
        raise InvalidInput(f"{path} is a {fmt} image; in-place encryption takes raw or qcow2 images only.")
    snapshots = [s.name for s in gw.snapshot_list(vm.host.uri, vm.name)]
    if snapshots:
        raise Conflict(
            f"{vm.name} has {len(snapshots)} snapshot(s) ({', '.join(snapshots[:5])}) that refer to its disks as "
            "they are; they would not survive the encryption. Delete them first."
        )
    if fmt == "raw":
        return os.path.getsize(real)
    image = qemu_img.info(real, fmt)
    if image.backing_file:
        raise InvalidInput(
            f"{path} is a qcow2 overlay of {image.backing_file}: part of its data lives in that backing image, "
            "which would stay unencrypted. Flatten it first (qemu-img rebase -b '' on the shut-off image)."
        )
    if image.snapshots:
        raise InvalidInput(
            f"{path} holds {len(image.snapshots)} internal snapshot(s) ({', '.join(image.snapshots[:5])}); "
            "an encrypted raw disk cannot keep them. Delete them first (qemu-img snapshot -d)."
        )
    if image.encrypted or image.data_file:
        raise InvalidInput(f"{path} is an encrypted qcow2 image or keeps its data in another file; left as it is.")
    return image.virtual_size


def _encrypt_resume(actor, vm: VirtualMachine, disk: EncryptedDisk, params: dict) -> Job:
    """Ask again for an encryption whose job failed (e.g. its worker was killed and the job
    marked failed when the worker restarted): a new job continues from the disk's header."""
    action = "encryption.disk.encrypt"
    get_store().require_unsealed()
    with transaction.atomic():
        # the disk's row is the lock: two requests cannot both start a job on it
        disk = EncryptedDisk.objects.select_for_update().get(pk=disk.pk)
        busy = _jobs_on_disk(disk, action)
        if busy is not None:
            raise Conflict(f"The encryption of {disk.path} is already under way (job {busy.pk}).")
        EncryptedDisk.objects.filter(pk=disk.pk).update(state=EncryptedDisk.State.ENCRYPTING)
        original = disk.size_bytes - cs.ENCRYPT_RESERVE_BYTES
        return jobs.job_enqueue(
            actor=actor,
            kind=action,
            target=vm,
            host=vm.host,
            params={**params, "disk_id": disk.pk, "original_size": original, "resume": True},
        )


def _jobs_on_disk(disk: EncryptedDisk, kind: str) -> Job | None:
    """A queued or running job of this kind on the disk, if any. Params are compared in
    Python (a JSON key lookup compares types differently on SQLite and PostgreSQL)."""
    for job in Job.objects.filter(kind=kind, state__in=[Job.State.QUEUED, Job.State.RUNNING], host=disk.host):
        if str(job.params.get("disk_id")) == str(disk.pk):
            return job
    return None


def _mark_failed(disk: EncryptedDisk) -> None:
    EncryptedDisk.objects.filter(pk=disk.pk).exclude(state=EncryptedDisk.State.READY).update(
        state=EncryptedDisk.State.FAILED
    )


def _workdir() -> str:
    return str(settings.ENCRYPTION_RUNTIME_DIR / "cryptsetup")


def _head_backup_path(disk: EncryptedDisk) -> str:
    return os.path.join(str(settings.ENCRYPTION_HEADER_BACKUP_DIR), f"{disk.key_id}.plain-head")


@jobs.handler("encryption.disk.encrypt", long=True, lost_hint=RESUME_HINT)
def _run_disk_encrypt(job: Job, progress: jobs.Progress) -> dict:
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    authorize(job_actor(job), "encryption.change", disk.vm, action=job.kind)
    try:
        result = _disk_encrypt(disk, int(job.params["original_size"]), progress, job)
        revision_capture(vm=disk.vm, actor=job_actor(job), reason=job.kind)  # configuration history
        return result
    except PortalError as exc:
        _mark_failed(disk)  # the header knows how far it got: asking again resumes
        raise type(exc)(f"{exc.message} {RESUME_HINT}") from exc
    except Exception as exc:  # e.g. the job's soft time limit: cryptsetup was stopped with SIGTERM
        _mark_failed(disk)
        log.exception("encryption of %s stopped", disk.path)
        raise PortalError(f"The encryption of {disk.path} stopped ({type(exc).__name__}). {RESUME_HINT}") from exc


def _disk_encrypt(disk: EncryptedDisk, original: int, progress: jobs.Progress, job: Job) -> dict:
    state = gw.domain_state(disk.host.uri, disk.vm.name)
    if state != "shut off":
        raise Conflict(f"{disk.vm.name} is {state}: it must stay shut off while its disk is encrypted.")
    point_at_mapping(disk)  # from now on no start can hand the guest the (half-)encrypted image
    hook_registry_sync(disk.vm)
    store = get_store()
    store.require_unsealed()
    key = ensure_stored_key(store, disk)
    timeout = settings.ENCRYPTION_COMMAND_TIMEOUT
    head = _head_backup_path(disk)
    _qcow2_to_raw(disk, original, progress, job)
    if not cs.is_luks(disk.path):
        size = os.path.getsize(disk.path)
        if size not in (original, original + cs.ENCRYPT_RESERVE_BYTES):
            raise Conflict(f"{disk.path} changed size since the request; nothing was done.")
        ensure_private_dir(settings.ENCRYPTION_HEADER_BACKUP_DIR)
        if not os.path.exists(head):
            progress(10, "saving the first 32 MiB of the plain image")
            files.copy_head(disk.path, head, cs.ENCRYPT_RESERVE_BYTES)
        if size == original:
            progress(15, "growing the image by 32 MiB for the LUKS2 header")
            files.grow(disk.path, original + cs.ENCRYPT_RESERVE_BYTES)
        progress(20, "encrypting in place (cryptsetup reencrypt --encrypt)")
        with jobs.heartbeat(job):  # hours in one call: keep the job from looking lost
            cs.reencrypt_encrypt(disk.path, key, luks_params(), timeout=timeout, workdir=_workdir())
    elif (info := cs.dump(disk.path)).reencrypt_pending:
        with jobs.heartbeat(job):
            if info.reencrypt_crashed:  # killed mid-block: cryptsetup refuses to resume before a repair
                progress(18, "repairing the header of the interrupted encryption (cryptsetup repair)")
                cs.reencrypt_repair(disk.path, key, timeout=timeout)
            progress(20, "resuming the interrupted encryption from its header")
            cs.reencrypt_resume(disk.path, key, timeout=timeout, workdir=_workdir())
    else:
        progress(80, "the disk is already encrypted")
    if cs.dump(disk.path).reencrypt_pending or not cs.test_key(disk.path, key):
        raise Conflict(f"{disk.path} did not end fully encrypted with the stored key; the header was kept.")
    progress(90, "backing up the new LUKS2 header")
    backup = _header_backup(disk)
    files.remove(head)
    gw.pool_refresh(disk.host.uri, disk.pool)
    EncryptedDisk.objects.filter(pk=disk.pk).update(
        state=EncryptedDisk.State.READY, key_created_at=timezone.now(), header_backup_at=timezone.now()
    )
    return {"disk_id": disk.pk, "path": disk.path, "header_backup": backup}


def _disk_format(disk: EncryptedDisk) -> str:
    for d in gw.domain_disks_defined(disk.host.uri, disk.vm.name):
        if d["target"] == disk.target:
            return d["format"] or "raw"
    raise Conflict(f"{disk.vm.name} no longer has the disk {disk.target}; nothing was done.")


def _qcow2_to_raw(disk: EncryptedDisk, virtual_size: int, progress: jobs.Progress, job: Job) -> None:
    """Turn the VM's qcow2 image into a raw one of the same virtual size, which is what gets
    encrypted (a qcow2 inside a fixed LUKS payload could not grow). Safe at every step: the
    raw copy is written beside the image and compared with it, then swapped in by renames,
    and the VM's definition says raw only once the raw image is in place. Re-run after a
    crash: a copy never swapped in is made again; a swap stopped between its two renames is
    undone first; a finished swap only has its definition and leftovers settled."""
    fmt = _disk_format(disk)
    original = f"{disk.path}.qcow2-{disk.key_id}"  # the qcow2 image, between the swap and the new definition
    part = f"{disk.path}.raw-{disk.key_id}.part"
    if os.path.exists(original) and not os.path.exists(disk.path):
        progress(3, "undoing a swap that stopped half-way: the qcow2 image goes back in place")
        files.rename(original, disk.path)
    swapped = os.path.exists(original)
    if fmt == "qcow2" and not swapped:
        timeout = settings.ENCRYPTION_COMMAND_TIMEOUT
        files.remove(part)  # a copy from an earlier, interrupted attempt: start it over
        if _check_image(disk.vm, disk.path, disk.path, "qcow2") != virtual_size:  # snapshots taken since?
            raise Conflict(f"{disk.path} changed size since the request; nothing was done.")
        progress(4, "copying the qcow2 image to a raw image beside it (qemu-img convert)")
        with jobs.heartbeat(job):
            qemu_img.convert_to_raw(disk.path, "qcow2", part, timeout=timeout)
            progress(7, "comparing the raw copy with the qcow2 image (qemu-img compare)")
            same = qemu_img.info(part, "raw").virtual_size == virtual_size and qemu_img.identical(
                disk.path, "qcow2", part, "raw", timeout=timeout
            )
        if not same:
            files.remove(part)
            raise Conflict(f"The raw copy of {disk.path} did not read the same as the image; the image was kept.")
        files.copy_owner_and_mode(disk.path, part)
        files.fsync(part)
        progress(8, "swapping the raw image in")
        files.rename(disk.path, original)
        files.rename(part, disk.path)
        swapped = True
    if swapped:
        progress(9, f"the VM's disk {disk.target} is now a raw image")
        gw.domain_disk_set_format(disk.host.uri, disk.vm.name, disk.target, "raw")
        files.remove(original)
        gw.pool_refresh(disk.host.uri, disk.pool)


# ---------------------------------------------------------------- change-passphrase


def disk_change_key(*, actor, disk: EncryptedDisk, confirmed: bool = False) -> Job:
    """Replace the disk's key with a new random one: add it to a free slot, verify it,
    remove the old slot. The disk opens with the old or the new stored key at every step.
    Refused unless `confirmed`, and while another key change of the disk is under way."""
    action = "encryption.disk.change_key"
    with audited(
        actor=actor, action=action, target=disk.vm, perm="encryption.change", params={"disk_id": disk.pk}
    ) as ev:
        if not confirmed:
            raise InvalidInput(f"Changing the key of {disk} needs confirmation.")
        if disk.state != EncryptedDisk.State.READY:
            raise Conflict(f"{disk} is {disk.state}; only a ready disk can change its key.")
        if is_manual(disk.vm):
            raise InvalidInput(
                f"{disk.vm.name} is unlocked manually: the portal holds no key of {disk}. Change the VM's typed "
                "passphrase instead (the VM's unlock page, or change-passphrase, which asks for it)."
            )
        if disk.kind == EncryptedDisk.Kind.QEMU_LUKS and gw.domain_state(disk.host.uri, disk.vm.name) != "shut off":
            raise Conflict(f"{disk.vm.name} must be shut off to change the key of a QEMU-opened disk.")
        store = get_store()
        store.require_unsealed()
        with transaction.atomic():
            EncryptedDisk.objects.select_for_update().filter(pk=disk.pk).first()  # one request at a time
            busy = _jobs_on_disk(disk, action)
            if busy is not None:
                raise Conflict(f"The key of {disk} is already being changed (job {busy.pk}); wait for it to end.")
            # the new key's id (not the key) names the job's goal: a re-delivered job that
            # finds it already in place does nothing
            params = {"disk_id": disk.pk, "new_key_id": store.new_key_id()}
            job = jobs.job_enqueue(actor=actor, kind=action, target=disk.vm, host=disk.host, params=params)
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


def _slots_opened_by(path: str, key: bytes) -> list[int]:
    return [s for s in cs.dump(path).slot_numbers if cs.test_key(path, key, slot=s)]


@jobs.handler("encryption.disk.change_key")
def _run_change_key(job: Job, progress: jobs.Progress) -> dict:
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    authorize(job_actor(job), "encryption.change", disk.vm, action=job.kind)
    store = get_store()
    store.require_unsealed()
    goal = job.params["new_key_id"]
    if disk.key_id == goal:
        progress(90, "the new key is already in place")
        return {"disk_id": disk.pk, "slots": cs.dump(disk.path).slot_numbers}
    if disk.pending_key_id != goal:
        if disk.pending_key_id:
            _settle_earlier_change(store, disk, progress)
        disk.pending_key_id = goal
        EncryptedDisk.objects.filter(pk=disk.pk).update(pending_key_id=goal)
    old_key = stored_key(store, disk)
    new_key = ensure_stored_key(store, disk, disk.pending_key_id)
    progress(20, "adding the new key to a free slot")
    new_slots = _slots_opened_by(disk.path, new_key)
    if not new_slots:
        new_slots = [cs.add_key(disk.path, old_key, new_key, luks_params())]
    progress(50, f"verifying the new key opens slot {new_slots[0]}")
    if not cs.test_key(disk.path, new_key, slot=new_slots[0]):
        raise Conflict(f"The new key does not open {disk.path}; the old key was kept.")
    _complete_change(store, disk, new_key, new_slots, old_key, progress)
    return {"disk_id": disk.pk, "slots": cs.dump(disk.path).slot_numbers}


def _complete_change(
    store, disk: EncryptedDisk, new_key: bytes, new_slots: list[int], old_key: bytes | None, progress
) -> None:
    """The new key (disk.pending_key_id) opens `new_slots`: remove the old key's slots,
    record the new key as the disk's, then delete the old key file."""
    if old_key is not None:
        for slot in _slots_opened_by(disk.path, old_key):
            if slot not in new_slots:
                progress(70, f"removing the old key slot {slot}")
                cs.kill_slot(disk.path, slot, new_key)
    if disk.kind == EncryptedDisk.Kind.QEMU_LUKS and disk.secret_uuid:
        gw.secret_set_value(disk.host.uri, disk.secret_uuid, new_key.hex().encode())
    old_key_id = disk.key_id
    with transaction.atomic():
        # escrowed_at is kept: an escrow older than key_created_at is named stale
        EncryptedDisk.objects.filter(pk=disk.pk).update(
            key_id=disk.pending_key_id, pending_key_id="", key_created_at=timezone.now()
        )
        # older header backups still hold the old key's slot: stale until destroyed
        HeaderBackup.objects.filter(disk=disk).exclude(key_id=disk.pending_key_id).update(stale=True)
    store.delete(old_key_id)
    disk.key_id, disk.pending_key_id = disk.pending_key_id, ""


def _settle_earlier_change(store, disk: EncryptedDisk, progress) -> None:
    """An earlier key change stopped (its worker died) with its key pending. If that key
    already opens a slot, the old slot may be gone: finish that change with it (it becomes
    the disk's key). Only a pending key that opens nothing is forgotten. A pending key file
    that cannot be read (altered, wrong mode) fails the job and is kept."""
    try:
        pending_key = stored_key(store, disk, disk.pending_key_id)
    except NotFound:  # it died before storing its key: nothing to forget
        pending_key = None
    pending_slots = _slots_opened_by(disk.path, pending_key) if pending_key is not None else []
    if not pending_slots:
        if pending_key is not None:
            store.delete(disk.pending_key_id)
        disk.pending_key_id = ""
        EncryptedDisk.objects.filter(pk=disk.pk).update(pending_key_id="")
        return
    progress(10, "finishing an earlier key change whose key is already on the disk")
    try:
        old_key = stored_key(store, disk)
    except NotFound:
        old_key = None
    _complete_change(store, disk, pending_key, pending_slots, old_key, progress)


# ---------------------------------------------------------------- header backup


def _header_backup(disk: EncryptedDisk) -> str:
    directory = ensure_private_dir(settings.ENCRYPTION_HEADER_BACKUP_DIR)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%f")
    destination = os.path.join(str(directory), f"{disk.vm.name}-{disk.volume}-{stamp}.luksheader")
    cs.header_backup(disk.path, destination)
    HeaderBackup.objects.create(disk=disk, path=destination, key_id=disk.key_id)
    return destination


def disk_header_backup(*, actor, disk: EncryptedDisk) -> Job:
    action = "encryption.disk.header_backup"
    with audited(
        actor=actor, action=action, target=disk.vm, perm="encryption.change", params={"disk_id": disk.pk}
    ) as ev:
        if not cs.is_luks(disk.path):
            raise Conflict(f"{disk.path} is not a LUKS device (yet); there is no header to back up.")
        with transaction.atomic():
            job = jobs.job_enqueue(
                actor=actor, kind=action, target=disk.vm, host=disk.host, params={"disk_id": disk.pk}
            )
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


@jobs.handler("encryption.disk.header_backup")
def _run_header_backup(job: Job, progress: jobs.Progress) -> dict:
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    authorize(job_actor(job), "encryption.change", disk.vm, action=job.kind)
    progress(20, "saving the LUKS header")
    destination = _header_backup(disk)
    EncryptedDisk.objects.filter(pk=disk.pk).update(header_backup_at=timezone.now())
    return {"disk_id": disk.pk, "file": destination}


# ---------------------------------------------------------------- list-encrypted


@dataclass(frozen=True)
class DiskRow:
    disk: EncryptedDisk
    info: cs.LuksInfo | None
    error: str = ""

    @property
    def key_age_days(self) -> int:
        return (timezone.now() - self.disk.key_created_at).days

    @property
    def rotation_due(self) -> bool:
        return key_rotation_due(self.disk)

    @property
    def stale_header_backups(self) -> list[HeaderBackup]:
        return [b for b in self.disk.header_backups.all() if b.stale]

    @property
    def reminders(self) -> list[str]:
        """What the disk's keys need, for list-encrypted, key-reminders and the pages. A disk
        that is not ready (creating, encrypting, failed) gets none: it has no key to keep."""
        disk, needs = self.disk, []
        if not disk.is_ready:
            return needs
        if self.rotation_due:
            needs.append(f"key is {self.key_age_days} days old: change-passphrase")
        if disk.escrow_stale:
            needs.append("escrow predates the last key change (it holds the old key): escrow-export again")
        elif not disk.escrowed_at:
            needs.append("no escrow: escrow-export")
        if disk.header_backup_stale:
            needs.append("header backup predates the last key change: header-backup again")
        elif not disk.header_backup_at:
            needs.append("no header backup: header-backup")
        stale = self.stale_header_backups
        if stale:
            count = len(stale)
            needs.append(f"stale header backups still open the disk with the old key ({count}): destroy-stale-headers")
        return needs

    @property
    def resume_hint(self) -> str:
        """What to do about an in-place encryption that stopped (failed or killed) mid-way."""
        if self.disk.state != EncryptedDisk.State.FAILED:
            return ""
        jobs_of_vm = Job.objects.filter(
            kind="encryption.disk.encrypt", target_type="virtualmachine", target_id=str(self.disk.vm_id)
        )
        if not any(str(j.params.get("disk_id")) == str(self.disk.pk) for j in jobs_of_vm.only("params")):
            return ""
        return f"The in-place encryption of this disk stopped before the end. {RESUME_HINT}"


def disks_list(*, actor, host=None) -> list[DiskRow]:
    """Every encrypted disk the actor may see, with what its LUKS header says."""
    authorize(actor, "encryption.view", anywhere=True, action="encryption.disk.list")
    qs = restrict(
        EncryptedDisk.objects.select_related("vm", "host")
        .prefetch_related("header_backups")
        .order_by("host__name", "vm__name", "target"),
        actor,
        "encryption.view",
    )
    if host is not None:
        qs = qs.filter(host=host)
    rows = []
    for disk in qs:
        try:
            rows.append(DiskRow(disk, cs.dump(disk.path)))
        except (PortalError, OSError) as exc:
            rows.append(DiskRow(disk, None, getattr(exc, "message", "") or "cannot read the header"))
    return rows


def disk_get(*, actor, pk: int) -> EncryptedDisk:
    """The disk's page: a disk the actor may not see is "not found", and the miss audited."""
    disk = restrict(EncryptedDisk.objects.select_related("vm", "host"), actor, "encryption.view").filter(pk=pk).first()
    if disk is None:
        error = "No such encrypted disk that you can see."
        refused(actor=actor, action="encryption.disk.view", target=("encrypteddisk", pk, ""), error=error)
        raise NotFound(error)
    return disk


def keys_due(*, actor, host=None) -> list[DiskRow]:
    """Ready disks whose key is older than settings.ENCRYPTION_KEY_MAX_AGE_DAYS, whose escrow or
    header backup is missing or predates the last key change, or that keep stale header
    backups: the reminders list-encrypted and the pages show (DiskRow.reminders)."""
    return [r for r in disks_list(actor=actor, host=host) if r.reminders]
