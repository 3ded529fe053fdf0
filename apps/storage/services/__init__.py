"""Storage services: the only place where quotas, limits, volumes and alerts change.
Views, the `storage_quota` command and Celery tasks all call these."""

from .alerts import alert_acknowledge, alert_badge_count, alerts_visible_to, notify
from .collect import storage_collect
from .common import (
    defaults_get,
    effective_pool_limit,
    effective_quota,
    fmt_bytes,
    input_refused,
    parse_gib,
    parse_percent,
)
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
from .samples import samples_compact, trend
from .volumes import growth_check, volume_create, volume_delete, volume_resize

__all__ = [
    "CheckReport",
    "QuotaView",
    "alert_acknowledge",
    "alert_badge_count",
    "alerts_visible_to",
    "storage_collect",
    "defaults_get",
    "defaults_update",
    "effective_pool_limit",
    "effective_quota",
    "fmt_bytes",
    "growth_check",
    "input_refused",
    "next_level",
    "notify",
    "parse_gib",
    "parse_percent",
    "pool_limit_set",
    "quota_expand",
    "quota_get",
    "quota_set",
    "quota_set_threshold",
    "samples_compact",
    "storage_check",
    "trend",
    "volume_create",
    "volume_delete",
    "volume_resize",
]
