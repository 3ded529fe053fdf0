"""Backup services: runs (backup.py), restore, verification and retention (restore.py)."""

from .backup import (
    backup_policy_create,
    backup_policy_update,
    backup_policy_vms,
    backup_runs_reconcile,
    backup_start,
    backups_due,
)
from .common import repository_for, validate_destination
from .restore import (
    backup_prune,
    backup_restore,
    backup_restore_in_place,
    backup_verify,
    backups_prune_due,
    backups_verify_due,
    policy_retention,
    repository_busy,
    restore_in_place_kept,
)

__all__ = [
    "backup_policy_create",
    "backup_policy_update",
    "backup_policy_vms",
    "backup_prune",
    "backup_restore",
    "backup_restore_in_place",
    "backup_runs_reconcile",
    "backup_start",
    "backup_verify",
    "backups_due",
    "backups_prune_due",
    "backups_verify_due",
    "policy_retention",
    "repository_busy",
    "repository_for",
    "restore_in_place_kept",
    "validate_destination",
]
