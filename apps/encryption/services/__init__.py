"""Encryption services: key store, LUKS disks, escrow and recovery, unlock. Views,
management commands and jobs all call these."""

from ..models import EncryptedDisk  # noqa: F401
from .common import container_paths, device_mapper, disk_for, get_store, luks2_capability, luks_params  # noqa: F401
from .delete import disk_delete, disk_delete_with_vm, retired_keys_destroy  # noqa: F401
from .disks import (  # noqa: F401
    DiskRow,
    disk_change_key,
    disk_create_encrypted,
    disk_create_with_vm,
    disk_encrypt_existing,
    disk_get,
    disk_header_backup,
    disks_list,
    keys_due,
)
from .headers import header_backups_destroy_stale  # noqa: F401
from .manual import (  # noqa: F401
    manual_unlock_vm_ids,
    unlock_policy_get,
    vm_passphrase_change,
    vm_start_manual,
    vm_unlock_policy_set,
)
from .recovery import (  # noqa: F401
    disk_escrow_export,
    disk_key_restore,
    disk_recovery_test,
    store_restore_from_escrow,
)
from .store import STORE_TARGET, StoreStatus, kek_rotate, store_initialize, store_seal, store_status, store_unseal  # noqa: F401
from .unlock import disks_lock, disks_unlock, lock_hook, unlock_hook, vm_start_unlocked, vm_stop_locked  # noqa: F401
