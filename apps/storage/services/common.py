"""What every storage service shares: the actor check (with the system user), input
parsing with messages for people, and effective (own or default) quotas and limits."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from django.conf import settings

from apps.accounts.permissions import require
from apps.audit.services import record
from apps.core.errors import InvalidInput
from apps.core.units import format_bytes

from ..models import GIB, BreachAction, PoolLimit, StorageDefaults, VmQuota

MIB = 1 << 20


def authorize(actor, perm: str, obj=None, *, action: str, anywhere: bool = False, target=None) -> None:
    """The permission check of every storage service. actor None is the system user
    (the periodic check, `storage_quota` without --as): it is trusted explicitly and
    audited as "system". Job handlers pass `jobs.job_actor(job)`, never `job.actor`: a job
    whose user was deleted has no actor but is not the system, and is denied."""
    if actor is None:
        return
    require(actor, perm, obj, anywhere=anywhere, action=action, target=target)


def record_failure(*, actor, action: str, target, params: dict | None, error: str) -> None:
    record(actor=actor, action=action, target=target, outcome="failed", params=params, error=error)


def input_refused(*, actor, perm: str, obj, action: str, params: dict, error: str, target=None) -> None:
    """A page's form refused the input before the service ran: check the permission as the
    service would (a denial is audited and raised as such), then audit the refusal."""
    authorize(actor, perm, obj, action=action, target=target)
    record_failure(actor=actor, action=action, target=target if target is not None else obj, params=params, error=error)


def fmt_bytes(n: int | float) -> str:
    """12.5 GiB / 300 MiB: sizes in messages people read, in the portal's one format."""
    return format_bytes(n)


def parse_gib(value, what: str = "size") -> int:
    """A size in GiB (up to 3 decimals) -> bytes, rounded up to whole MiB."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInput(f"Give the {what} in GiB, e.g. 20.")
    try:
        gib = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"The {what} {value!r} is not a number of GiB.")
    if not gib.is_finite():
        raise InvalidInput(f"The {what} must be a finite number of GiB.")
    if gib <= 0:
        raise InvalidInput(f"The {what} must be more than 0 GiB (got {value}).")
    maximum = settings.STORAGE_MAX_SIZE_GIB
    if gib > maximum:
        raise InvalidInput(f"The {what} of {value} GiB is larger than the {maximum} GiB this portal accepts.")
    if gib.as_tuple().exponent < -3:
        raise InvalidInput(f"The {what} {value} has more than 3 decimals; give it in whole MiB at most.")
    mib = int((gib * 1024).to_integral_value(rounding=ROUND_CEILING))
    return mib * MIB


def parse_percent(value, what: str = "alert threshold") -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"The {what} must be a whole percentage from 1 to 100.")
    try:
        percent = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInput(f"The {what} must be a whole percentage from 1 to 100 (got {value!r}).")
    if not 1 <= percent <= 100:
        raise InvalidInput(f"The {what} must be from 1 to 100 percent (got {percent}).")
    return percent


def parse_reserve(value) -> int:
    try:
        percent = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInput(f"The reserve must be a whole percentage from 0 to 99 (got {value!r}).")
    if not 0 <= percent <= 99:
        raise InvalidInput(f"The reserve must be from 0 to 99 percent of the pool (got {percent}).")
    return percent


def parse_ratio(value) -> Decimal:
    try:
        ratio = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"The overcommit ratio must be a number such as 1.5 (got {value!r}).")
    if not ratio.is_finite() or ratio < 1 or ratio > 100:
        raise InvalidInput(f"The overcommit ratio must be from 1 (no overcommit) to 100 (got {value}).")
    if ratio.as_tuple().exponent < -2:
        raise InvalidInput("The overcommit ratio takes at most 2 decimals.")
    return ratio


def parse_action(value) -> str:
    if value not in BreachAction.values:
        choices = ", ".join(f"{v} ({label})" for v, label in BreachAction.choices)
        raise InvalidInput(f"Unknown breach action {value!r}: choose {choices}.")
    return value


def defaults_get() -> StorageDefaults:
    """The portal-wide defaults, created from the settings on first use."""
    defaults, _ = StorageDefaults.objects.get_or_create(
        id=1,
        defaults={
            "quota_bytes": settings.STORAGE_DEFAULT_QUOTA_GIB * GIB,
            "alert_percent": settings.STORAGE_DEFAULT_ALERT_PERCENT,
            "breach_action": settings.STORAGE_DEFAULT_BREACH_ACTION,
            "max_overcommit": Decimal(settings.STORAGE_DEFAULT_MAX_OVERCOMMIT),
            "reserve_percent": settings.STORAGE_DEFAULT_RESERVE_PERCENT,
        },
    )
    return defaults


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
    return EffectiveQuota(
        quota.limit_bytes or defaults.quota_bytes,
        quota.alert_percent or defaults.alert_percent,
        quota.breach_action or defaults.breach_action,
        quota.limit_bytes is not None,
        quota.version,
    )


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
