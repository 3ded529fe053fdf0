"""Key escrow and recovery tests. Both take a passphrase the admin types, so both run in
the request (synchronously) instead of as a job: the passphrase never enters a job's
params, the database, a Celery message or a file, and the escrowed key never leaves this
process except inside the escrow document handed back to the admin."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput, NotFound, PortalError
from apps.core.gateways import libvirt as gw

from ..errors import KeyFileRejected
from ..gateways import cryptsetup as cs
from ..keystore import escrow_unwrap, escrow_wrap
from ..models import EncryptedDisk
from .common import get_store, stored_key
from .store import STORE_TARGET


def _binding(disk: EncryptedDisk) -> dict:
    return {"key_id": disk.key_id, "vm_uuid": str(disk.vm_uuid), "vm": disk.vm.name, "volume": disk.path}


def disk_escrow_export(*, actor, disk: EncryptedDisk, recovery_passphrase: str) -> bytes:
    """The disk's key wrapped to `recovery_passphrase` (never stored), as a document for the
    admin to keep offline. Needs encryption.keys (admins)."""
    with audited(
        actor=actor, action="encryption.key.escrow_export", target=disk.vm, perm="encryption.keys",
        params={"disk_id": disk.pk},
    ):
        if disk.state != EncryptedDisk.State.READY:
            raise InvalidInput(f"{disk} is {disk.state}; export its escrow once it is ready.")
        from .manual import is_manual

        if is_manual(disk.vm):
            raise InvalidInput(f"{disk.vm.name} is unlocked manually: the portal holds no key of {disk} to escrow.")
        key = stored_key(get_store(), disk)
        document = escrow_wrap(
            key,
            recovery_passphrase.encode(),
            _binding(disk),
            memory_kib=settings.ENCRYPTION_KDF_MEMORY_KIB,
            iterations=settings.ENCRYPTION_KDF_ITERATIONS,
        )
        EncryptedDisk.objects.filter(pk=disk.pk).update(escrowed_at=timezone.now())
    return document


def _stale_escrow(disk: EncryptedDisk) -> str:
    return (
        f"This escrow file predates the last key change of {disk} (its key was replaced on "
        f"{timezone.localtime(disk.key_created_at):%Y-%m-%d %H:%M}): it holds the old key, which no longer opens "
        "the disk. Export a new escrow."
    )


def _escrowed_key(disk: EncryptedDisk, escrow: bytes, recovery_passphrase: str) -> tuple[dict, bytes]:
    """(binding, key) of an escrow file of this disk; InvalidInput for a wrong passphrase, a
    damaged file or another disk's escrow."""
    binding, escrowed = escrow_unwrap(escrow, recovery_passphrase.encode())
    if not isinstance(binding, dict) or not all(
        isinstance(binding.get(field), str) for field in ("key_id", "vm_uuid", "volume")
    ):
        raise InvalidInput("This escrow file's disk binding is damaged (it names no key, VM and volume).")
    if binding.get("vm_uuid") != str(disk.vm_uuid) or binding.get("volume") != disk.path:
        raise InvalidInput(f"This escrow file belongs to {binding.get('vm')}:{binding.get('volume')}, not {disk}.")
    return binding, escrowed


def _opens(disk: EncryptedDisk, key: bytes) -> bool:
    """Does `key` open the disk's header? (A QEMU-LUKS disk's passphrase is the key in hex,
    the value of its libvirt secret.)"""
    return cs.test_key(disk.path, key.hex().encode() if disk.kind == EncryptedDisk.Kind.QEMU_LUKS else key)


def disk_recovery_test(*, actor, disk: EncryptedDisk, escrow: bytes, recovery_passphrase: str) -> dict:
    """Prove that the stored key and the escrowed key both open the disk's LUKS header
    (`cryptsetup open --test-passphrase`, no mapping)."""
    with audited(
        actor=actor, action="encryption.key.recovery_test", target=disk.vm, perm="encryption.keys",
        params={"disk_id": disk.pk},
    ) as ev:
        binding, escrowed = _escrowed_key(disk, escrow, recovery_passphrase)
        stored_ok = _opens(disk, stored_key(get_store(), disk))
        escrow_ok = _opens(disk, escrowed)
        result = {
            "stored_opens": stored_ok,
            "escrow_opens": escrow_ok,
            "escrow_current": binding["key_id"] == disk.key_id,
        }
        if not escrow_ok and not result["escrow_current"]:
            raise InvalidInput(_stale_escrow(disk))
        if not (stored_ok and escrow_ok):
            failed = [n for n, ok in (("stored key", stored_ok), ("escrowed key", escrow_ok)) if not ok]
            raise InvalidInput(f"Recovery test failed for {disk}: the {' and the '.join(failed)} does not open it.")
        EncryptedDisk.objects.filter(pk=disk.pk).update(recovery_tested_at=timezone.now())
        ev.params.update(result)
    return result


def disk_key_restore(
    *, actor, disk: EncryptedDisk, escrow: bytes, recovery_passphrase: str, confirmed: bool = False
) -> dict:
    """Put the disk's key back into the key store from its escrow file, when the stored key
    is missing, damaged or no longer opens the disk; then run the recovery test (the key read
    back from the store must open the LUKS header). Needs encryption.keys (and, on the page,
    a recent re-authentication). Refused unless `confirmed`, for another disk's escrow, for
    an escrow whose key does not open the disk, and while the stored key still works."""
    with audited(
        actor=actor, action="encryption.key.restore", target=disk.vm, perm="encryption.keys",
        params={"disk_id": disk.pk},
    ) as ev:
        if not confirmed:
            raise InvalidInput(f"Restoring the key of {disk} from escrow needs confirmation.")
        binding, escrowed = _escrowed_key(disk, escrow, recovery_passphrase)
        if EncryptedDisk.objects.filter(pk=disk.pk).exclude(pending_key_id="").exists():
            raise Conflict(f"A key change of {disk} is under way: let it end (or fail) before restoring its key.")
        if not cs.is_luks(disk.path):
            raise Conflict(f"{disk.path} has no LUKS header: there is nothing the key could open.")
        store = get_store()
        store.require_unsealed()
        try:
            stored_works = _opens(disk, stored_key(store, disk))
        except (NotFound, KeyFileRejected):
            stored_works = False
        if stored_works:
            raise Conflict(f"The stored key of {disk} opens it: there is nothing to restore (run a recovery test).")
        if not _opens(disk, escrowed):
            if binding["key_id"] != disk.key_id:
                raise InvalidInput(_stale_escrow(disk))
            raise InvalidInput(f"The escrowed key does not open {disk}: it cannot be restored.")
        store.put(key_id=disk.key_id, vm_uuid=str(disk.vm_uuid), volume=disk.path, key=escrowed, replace=True)
        if disk.kind == EncryptedDisk.Kind.QEMU_LUKS and disk.secret_uuid:
            gw.secret_set_value(disk.host.uri, disk.secret_uuid, escrowed.hex().encode())
        # the recovery test, right after: the key as the store now gives it opens the header
        if not _opens(disk, stored_key(store, disk)):
            raise Conflict(f"The restored key of {disk} does not open it when read back from the key store.")
        EncryptedDisk.objects.filter(pk=disk.pk).update(recovery_tested_at=timezone.now())
        result = {"restored": True, "recovery_test": "passed", "escrow_current": binding["key_id"] == disk.key_id}
        ev.params.update(result)
    return result


def store_restore_from_escrow(
    *, actor, escrows: list[tuple[str, bytes]], recovery_passphrase: str, confirmed: bool = False
) -> list[tuple[str, bool, str]]:
    """Restore every disk key of a lost or damaged key store from escrow files ((name,
    document) pairs): each file names its disk in its (authenticated) binding, and goes
    through disk_key_restore, recovery test included. A lost store is created afresh first
    (a new KEK). One file's failure does not stop the others. Returns (file, restored,
    message) per file; the summary is audited as encryption.store.restore."""
    action = "encryption.store.restore"
    authorize(actor, "encryption.keys", anywhere=True, action=action)
    with audited(actor=actor, action=action, target=STORE_TARGET) as ev:
        if not confirmed:
            raise InvalidInput("Restoring the key store from escrow files needs confirmation.")
        if not escrows:
            raise InvalidInput("Give the escrow files to restore the key store from.")
        get_store().require_unsealed()
        results = _restore_each(actor, escrows, recovery_passphrase)
        restored = sum(ok for _, ok, _ in results)
        ev.params = {"files": len(results), "restored": restored}
        if restored != len(results):  # recorded as failed; the per-file results are returned
            ev.error = f"{len(results) - restored} escrow file(s) not restored"
    return results


def _restore_each(actor, escrows: list[tuple[str, bytes]], recovery_passphrase: str) -> list[tuple[str, bool, str]]:
    results = []
    for name, document in escrows:
        try:
            binding = json.loads(document).get("binding") or {}
            disk = (
                EncryptedDisk.objects.select_related("vm", "host")
                .filter(vm_uuid=binding.get("vm_uuid"), path=binding.get("volume"))
                .first()
            )
            if disk is None:
                raise NotFound(f"No encrypted disk of the portal matches this escrow file ({binding.get('vm')}).")
            disk_key_restore(
                actor=actor, disk=disk, escrow=document, recovery_passphrase=recovery_passphrase, confirmed=True
            )
            results.append((name, True, f"{disk}: restored, recovery test passed"))
        except (ValueError, AttributeError, TypeError, ValidationError):
            results.append((name, False, "not a key escrow file of this portal"))
        except (PortalError, PermissionDenied) as exc:
            results.append((name, False, getattr(exc, "message", str(exc))))
    return results
