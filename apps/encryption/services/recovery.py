"""Key escrow and recovery tests. Both take a passphrase the admin types, so both run in
the request (synchronously) instead of as a job: the passphrase never enters a job's
params, the database, a Celery message or a file, and the escrowed key never leaves this
process except inside the escrow document handed back to the admin."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from apps.audit.services import record
from apps.core.errors import InvalidInput, PortalError

from ..gateways import cryptsetup as cs
from ..keystore import escrow_unwrap, escrow_wrap
from ..models import EncryptedDisk
from .common import authorize, fail, get_store, stored_key


def _binding(disk: EncryptedDisk) -> dict:
    return {"key_id": disk.key_id, "vm_uuid": str(disk.vm_uuid), "vm": disk.vm.name, "volume": disk.path}


def disk_escrow_export(*, actor, disk: EncryptedDisk, recovery_passphrase: str) -> bytes:
    """The disk's key wrapped to `recovery_passphrase` (never stored), as a document for the
    admin to keep offline. Needs encryption.keys (admins)."""
    action = "encryption.key.escrow_export"
    authorize(actor, "encryption.keys", disk.vm, action=action)
    try:
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
    except PortalError as exc:
        fail(actor=actor, action=action, target=disk.vm, params={"disk_id": disk.pk}, error=exc.message)
        raise
    EncryptedDisk.objects.filter(pk=disk.pk).update(escrowed_at=timezone.now())
    record(actor=actor, action=action, target=disk.vm, outcome="success", params={"disk_id": disk.pk})
    return document


def disk_recovery_test(*, actor, disk: EncryptedDisk, escrow: bytes, recovery_passphrase: str) -> dict:
    """Prove that the stored key and the escrowed key both open the disk's LUKS header
    (`cryptsetup open --test-passphrase`, no mapping)."""
    action = "encryption.key.recovery_test"
    authorize(actor, "encryption.keys", disk.vm, action=action)
    try:
        binding, escrowed = escrow_unwrap(escrow, recovery_passphrase.encode())
        if not isinstance(binding, dict) or not all(
            isinstance(binding.get(field), str) for field in ("key_id", "vm_uuid", "volume")
        ):
            raise InvalidInput("This escrow file's disk binding is damaged (it names no key, VM and volume).")
        if binding.get("vm_uuid") != str(disk.vm_uuid) or binding.get("volume") != disk.path:
            raise InvalidInput(f"This escrow file belongs to {binding.get('vm')}:{binding.get('volume')}, not {disk}.")
        stored_ok = cs.test_key(disk.path, stored_key(get_store(), disk))
        escrow_ok = cs.test_key(disk.path, escrowed)
        result = {
            "stored_opens": stored_ok,
            "escrow_opens": escrow_ok,
            "escrow_current": binding["key_id"] == disk.key_id,
        }
        if not (stored_ok and escrow_ok):
            failed = [n for n, ok in (("stored key", stored_ok), ("escrowed key", escrow_ok)) if not ok]
            raise InvalidInput(f"Recovery test failed for {disk}: the {' and the '.join(failed)} does not open it.")
    except PortalError as exc:
        fail(actor=actor, action=action, target=disk.vm, params={"disk_id": disk.pk}, error=exc.message)
        raise
    EncryptedDisk.objects.filter(pk=disk.pk).update(recovery_tested_at=timezone.now())
    record(actor=actor, action=action, target=disk.vm, outcome="success", params={"disk_id": disk.pk, **result})
    return result
