"""The quota rules as read: the portal-wide defaults and a VM's or pool's effective (own
or default) quota and limits. Reads only: when nobody saved defaults yet, the defaults
come from the settings, unsaved (the first change saves the row, services/quotas.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from apps.core.prepared import Prepared
from apps.core.units import format_bytes

from .models import GIB, PoolLimit, StorageDefaults, VmQuota


def fmt_bytes(n: int | float) -> str:
    """12.5 GiB / 300 MiB: sizes in messages people read, in the portal's one format."""
    return format_bytes(n)


def defaults_from_settings() -> dict:
    """The field values of the defaults row before anyone changed them (as the row holds
    them: the ratio with its 2 decimals)."""
    return {
        "quota_bytes": settings.STORAGE_DEFAULT_QUOTA_GIB * GIB,
        "alert_percent": settings.STORAGE_DEFAULT_ALERT_PERCENT,
        "breach_action": settings.STORAGE_DEFAULT_BREACH_ACTION,
        "max_overcommit": Decimal(str(settings.STORAGE_DEFAULT_MAX_OVERCOMMIT)).quantize(Decimal("0.01")),
        "reserve_percent": settings.STORAGE_DEFAULT_RESERVE_PERCENT,
    }


def _saved_defaults(shape, p):
    return StorageDefaults.objects.filter(id=1).values()


_DEFAULTS_READ = Prepared(StorageDefaults, _saved_defaults)  # read by every storage page


def defaults_read() -> StorageDefaults:
    """The portal-wide defaults: the saved row, or (none saved yet) an unsaved one from the
    settings, version 1 like the row its first save creates. Never writes."""
    row = _DEFAULTS_READ.first((), {})
    return row if row is not None else StorageDefaults(id=1, version=1, **defaults_from_settings())


@dataclass(frozen=True)
class EffectiveQuota:
    limit_bytes: int
    alert_percent: int
    breach_action: str
    own_limit: bool
    version: int

    @property
    def limit_gib(self) -> float:
        return self.limit_bytes / GIB


def effective_quota(quota: VmQuota | None, defaults: StorageDefaults) -> EffectiveQuota:
    if quota is None:
        return EffectiveQuota(defaults.quota_bytes, defaults.alert_percent, defaults.breach_action, False, 0)
    return quota_with_defaults(quota.limit_bytes, quota.alert_percent, quota.breach_action, quota.version, defaults)


def quota_with_defaults(limit_bytes, alert_percent, breach_action, version, defaults) -> EffectiveQuota:
    """A VM's own quota (from its row's values) with the defaults where it has none."""
    return EffectiveQuota(limit_bytes or defaults.quota_bytes, alert_percent or defaults.alert_percent,
                          breach_action or defaults.breach_action, limit_bytes is not None, version)  # fmt: skip


def quota_of(vm) -> VmQuota | None:
    return VmQuota.objects.filter(vm=vm).first()


@dataclass(frozen=True)
class EffectivePoolLimit:
    max_overcommit: Decimal
    reserve_percent: int


def effective_pool_limit(limit: PoolLimit | None, defaults: StorageDefaults) -> EffectivePoolLimit:
    if limit is None:
        return EffectivePoolLimit(defaults.max_overcommit, defaults.reserve_percent)
    return EffectivePoolLimit(
        limit.max_overcommit if limit.max_overcommit is not None else defaults.max_overcommit,
        limit.reserve_percent if limit.reserve_percent is not None else defaults.reserve_percent,
    )
