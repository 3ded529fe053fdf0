"""Header backups that outlived a key change. A LUKS header backup holds every key slot the
header had when it was taken: after a key change the old key no longer opens the disk, but
it still opens the disk through an older backup (`cryptsetup open --header OLD`). The key
change marks such backups stale (services/disks.py); this destroys them, on confirmation."""

from __future__ import annotations

from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput

from ..gateways import files
from ..models import EncryptedDisk, HeaderBackup


def header_backups_destroy_stale(*, actor, disk: EncryptedDisk, confirmed: bool = False) -> list[str]:
    """Overwrite and remove every stale header backup of the disk; the paths destroyed.
    Destructive (a stale backup is also the only way back to the old header): refused
    unless `confirmed`."""
    destroyed: list[str] = []
    with audited(
        actor=actor,
        action="encryption.disk.header_backup_destroy",
        target=disk.vm,
        perm="encryption.change",
        params={"disk_id": disk.pk, "files": destroyed},  # what was destroyed, also when it stops half-way
    ):
        if not confirmed:
            raise InvalidInput(f"Destroying the stale header backups of {disk} needs confirmation.")
        stale = list(HeaderBackup.objects.filter(disk=disk, stale=True))
        if not stale:
            raise InvalidInput(f"{disk} has no stale header backup to destroy.")
        for backup in stale:
            try:
                files.destroy(backup.path)
            except OSError as exc:
                raise Conflict(f"Could not destroy the header backup {backup.path}: {exc.strerror}.") from None
            backup.delete()
            destroyed.append(backup.path)
    return destroyed
