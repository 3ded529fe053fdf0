"""Storage services: the only place where quotas, limits, volumes and alerts change.
Views, the `storage_quota` command and Celery tasks all call these, with typed values
(the forms in apps/storage/forms.py parse what people type). Reads are in
apps/storage/selectors.py, quota_rules.py and trends.py."""

from .alerts import alert_acknowledge, notify
from .collect import storage_collect
from .monitor import CheckReport, next_level, storage_check
from .quotas import (
    QuotaView,
    defaults_update,
    pool_limit_set,
    quota_expand,
    quota_get,
    quota_set,
    quota_set_threshold,
)
from .samples import samples_compact
from .volumes import growth_check, new_vm_quota_set, new_vm_space_check, volume_create, volume_delete, volume_resize

__all__ = [
    "CheckReport",
    "QuotaView",
    "alert_acknowledge",
    "defaults_update",
    "growth_check",
    "new_vm_quota_set",
    "new_vm_space_check",
    "next_level",
    "notify",
    "pool_limit_set",
    "quota_expand",
    "quota_get",
    "quota_set",
    "quota_set_threshold",
    "samples_compact",
    "storage_check",
    "storage_collect",
    "volume_create",
    "volume_delete",
    "volume_resize",
]
