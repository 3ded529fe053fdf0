"""Per-VM quotas, portal-wide defaults and pool limits. Every change is audited; a change
built on a stale read is refused (compare-and-swap on a version), never lost. The values
come typed (bytes, percentages, Decimals): the forms (apps/storage/forms.py) parsed them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import BigIntegerField, F, Value
from django.db.models.functions import Coalesce, Greatest

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Host

from ..disks import vm_disks
from ..models import GIB, BreachAction, PoolLimit, StorageDefaults, VmQuota
from ..quota_rules import EffectiveQuota, defaults_from_settings, defaults_read, effective_quota, fmt_bytes, quota_of


def _actor_name(actor) -> str:
    return getattr(actor, "username", "") or "system"


def _gib(n: int) -> str:
    """Bytes as the GiB number the audit log shows (20, 2.5, 0.25)."""
    return f"{n / GIB:g}"


def _check_size(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InvalidInput(f"The {what} must be more than 0 GiB.")
    if n > settings.STORAGE_MAX_SIZE_GIB * GIB:
        raise InvalidInput(f"The {what} of {fmt_bytes(n)} is larger than the {settings.STORAGE_MAX_SIZE_GIB} GiB "
                           "this portal accepts.")  # fmt: skip
    return n


def _check_percent(n: int, what: str = "alert threshold", low: int = 1, high: int = 100) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= high:
        raise InvalidInput(f"The {what} must be from {low} to {high} percent (got {n}).")
    return n


def _check_action(value: str) -> str:
    if value not in BreachAction.values:
        raise InvalidInput(f"Unknown breach action {value!r}.")
    return value


def _check_ratio(value: Decimal) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or not 1 <= value <= 100:
        raise InvalidInput(f"The overcommit ratio must be from 1 (no overcommit) to 100 (got {value}).")
    return value


def _write_quota(vm, expected_version: int | None, **changes) -> VmQuota | None:
    """Change a VM's quota row in one UPDATE (it takes the write lock at once, on SQLite
    too, so concurrent changes queue instead of overwriting each other), creating the row
    first when the VM has none. With expected_version (0: the person saw the defaults),
    None is returned when the row changed meanwhile."""
    changes["version"] = F("version") + 1
    rows = VmQuota.objects.filter(vm=vm)
    if expected_version is not None:
        rows = rows.filter(version=expected_version)  # versions start at 1: 0 matches no row
    if rows.update(**changes):
        return VmQuota.objects.get(vm=vm)
    if expected_version or (expected_version == 0 and VmQuota.objects.filter(vm=vm).exists()):
        return None
    try:
        with transaction.atomic():
            VmQuota.objects.create(vm=vm)
    except IntegrityError:  # created by a concurrent request meanwhile
        pass
    VmQuota.objects.filter(vm=vm).update(**changes)
    return VmQuota.objects.get(vm=vm)


def _defaults_row() -> StorageDefaults:
    """The defaults row, saved from the settings the first time someone changes it."""
    row, _ = StorageDefaults.objects.get_or_create(id=1, defaults=defaults_from_settings())
    return row


@dataclass(frozen=True)
class QuotaView:
    """A VM's quota with its current usage (read live from libvirt)."""

    vm: object
    quota: EffectiveQuota
    allocation: int
    provisioned: int

    @property
    def percent(self) -> int:
        return round(100 * self.allocation / self.quota.limit_bytes) if self.quota.limit_bytes else 0

    @property
    def over(self) -> bool:
        return max(self.allocation, self.provisioned) > self.quota.limit_bytes


def quota_get(*, actor, vm) -> QuotaView:
    authorize(actor, "storage.view", vm, action="storage.quota.view")
    disks = vm_disks(vm)
    return QuotaView(vm, effective_quota(quota_of(vm), defaults_read()), disks.allocation, disks.provisioned)


def quota_set(
    *,
    actor,
    vm,
    limit_bytes: int | None = None,
    alert_percent: int | None = None,
    breach_action: str | None = None,
    confirmed: bool = False,
    expected_version: int | None = None,
) -> EffectiveQuota:
    """Set a VM's own quota fields (those given). The hard limit caps the provisioned size
    of the VM's disks: a limit below what is already provisioned is refused; one below
    what the disks and their snapshots already take (allocation) would be breached at
    once and needs confirmation. With expected_version (the version the person saw), a
    quota changed meanwhile by someone else is refused, not overwritten."""
    params = {"limit_gib": None if limit_bytes is None else _gib(limit_bytes), "alert_percent": alert_percent,
              "breach_action": breach_action}  # fmt: skip
    params = {k: str(v) for k, v in params.items() if v not in (None, "")}
    with audited(actor=actor, action="storage.quota.set", target=vm, perm="storage.change", params=params,
                 atomic=True) as ev:  # fmt: skip
        if not params:
            raise InvalidInput("Nothing to change: give a limit, an alert threshold or a breach action.")
        changes = {}
        if limit_bytes is not None:
            changes["limit_bytes"] = _check_size(limit_bytes, "quota")
            _check_new_limit(vm, limit_bytes, confirmed)
        if alert_percent is not None:
            changes["alert_percent"] = _check_percent(alert_percent)
        if breach_action:
            changes["breach_action"] = _check_action(breach_action)
        row = _write_quota(vm, expected_version, **changes, updated_by_name=_actor_name(actor))
        if row is None:
            by = getattr(VmQuota.objects.filter(vm=vm).first(), "updated_by_name", "") or "someone else"
            raise Conflict(
                f"The quota of {vm.name} was changed by {by} "
                "since you loaded it; nothing was changed. Reload and try again."
            )
        ev.params["previous_version"] = str(row.version - 1)
        return effective_quota(row, defaults_read())


def _check_new_limit(vm, limit: int, confirmed: bool) -> None:
    disks = vm_disks(vm)  # an encrypted disk counts as its container
    if limit < disks.provisioned:
        raise InvalidInput(
            f"A quota of {fmt_bytes(limit)} is below the {fmt_bytes(disks.provisioned)} already provisioned "
            f"for the disks of {vm.name} (by {fmt_bytes(disks.provisioned - limit)}): the hard limit caps the "
            f"disks' provisioned size, so it must be at least {fmt_bytes(disks.provisioned)}. "
            "Shrink or delete a disk first."
        )
    if limit < disks.allocation and not confirmed:
        raise InvalidInput(
            f"A quota of {fmt_bytes(limit)} is below the {fmt_bytes(disks.allocation)} the disks of {vm.name} "
            f"and their snapshots already use: it would be breached at once "
            f"(by {fmt_bytes(disks.allocation - limit)}). Confirm to set it anyway."
        )


def quota_set_threshold(*, actor, vm, percent: int) -> EffectiveQuota:
    """`storage_quota alert-threshold VM PERCENT`."""
    with audited(actor=actor, action="storage.quota.threshold", target=vm, perm="storage.change",
                 params={"alert_percent": str(percent)}, atomic=True):  # fmt: skip
        row = _write_quota(vm, None, alert_percent=_check_percent(percent), updated_by_name=_actor_name(actor))
        return effective_quota(row, defaults_read())


def quota_expand(*, actor, vm, to_bytes: int | None = None, by_bytes: int | None = None) -> EffectiveQuota:
    """Raise a VM's hard limit to `to_bytes` (the new total), or by `by_bytes`. An
    "expansion" that would lower the limit is refused (lowering is `quota_set`'s, which
    checks what the disks already hold). Two people expanding by an amount at once both
    count: the addition is one UPDATE in the database (no read-modify-write to lose).
    Never touches a disk."""
    given = {k: v for k, v in (("to_gib", to_bytes), ("by_gib", by_bytes)) if v is not None}
    params = {k: _gib(v) for k, v in given.items()}
    with audited(actor=actor, action="storage.quota.expand", target=vm, perm="storage.change", params=params,
                 atomic=True) as ev:  # fmt: skip
        if len(given) != 1:
            raise InvalidInput("Give either the new quota (to GiB) or the amount to add (by GiB), not both.")
        defaults = defaults_read()
        current = Coalesce(F("limit_bytes"), Value(defaults.quota_bytes, output_field=BigIntegerField()))
        if by_bytes is not None:
            by = _check_size(by_bytes, "expansion")
            row = _write_quota(vm, None, limit_bytes=current + by, updated_by_name=_actor_name(actor))
            if row.limit_bytes > settings.STORAGE_MAX_SIZE_GIB * GIB:
                raise InvalidInput(
                    f"Expanding by {fmt_bytes(by)} would take the quota of {vm.name} to "
                    f"{fmt_bytes(row.limit_bytes)}, above the {settings.STORAGE_MAX_SIZE_GIB} GiB this portal "
                    "accepts."
                )
        else:
            target = _check_size(to_bytes, "new quota")
            before = effective_quota(quota_of(vm), defaults)
            if target <= before.limit_bytes:
                what = "leave it unchanged" if target == before.limit_bytes else "shrink it"
                raise InvalidInput(
                    f"The quota of {vm.name} is already {fmt_bytes(before.limit_bytes)}"
                    f"{'' if before.own_limit else ' (the default)'}; expanding it to {fmt_bytes(target)} "
                    f"would {what}. Expand to a larger size, or set a lower quota with set."
                )
            row = _write_quota(
                vm,
                None,
                limit_bytes=Greatest(current, Value(target, output_field=BigIntegerField())),
                updated_by_name=_actor_name(actor),
            )
            if row.limit_bytes != target:  # raised further by someone else meanwhile
                raise Conflict(
                    f"The quota of {vm.name} was raised to {fmt_bytes(row.limit_bytes)} meanwhile; "
                    "nothing was changed."
                )
        ev.params["limit_gib"] = _gib(row.limit_bytes)
        return effective_quota(row, defaults)


def defaults_update(
    *,
    actor,
    quota_bytes: int,
    alert_percent: int,
    breach_action: str,
    max_overcommit: Decimal,
    reserve_percent: int,
    expected_version: int | None = None,
) -> StorageDefaults:
    """The defaults applied to VMs and pools without their own values (admins only)."""
    params = {
        "quota_gib": _gib(quota_bytes),
        "alert_percent": str(alert_percent),
        "breach_action": str(breach_action),
        "max_overcommit": str(max_overcommit),
        "reserve_percent": str(reserve_percent),
    }
    target = ("storagedefaults", "1", "storage defaults")
    with audited(actor=actor, action="storage.settings.update", target=target, perm="storage.settings",
                 params=params, atomic=True):  # fmt: skip
        values = {
            "quota_bytes": _check_size(quota_bytes, "default quota"),
            "alert_percent": _check_percent(alert_percent),
            "breach_action": _check_action(breach_action),
            "max_overcommit": _check_ratio(max_overcommit),
            "reserve_percent": _check_percent(reserve_percent, "reserve", 0, 99),
        }
        _defaults_row()
        rows = StorageDefaults.objects.filter(id=1)
        if expected_version is not None:
            rows = rows.filter(version=expected_version)
        if not rows.update(**values, version=F("version") + 1, updated_by_name=_actor_name(actor)):
            raise Conflict("The storage settings were changed by someone else since you loaded them. Reload.")
        return StorageDefaults.objects.get(id=1)


def pool_limit_set(
    *, actor, host: Host, pool: str, max_overcommit: Decimal | None, reserve_percent: int | None
) -> PoolLimit:
    """A pool's own maximum overcommit ratio and free-space reserve (admins only).
    None falls back to the default."""
    params = {
        "pool": pool,
        "max_overcommit": "" if max_overcommit is None else str(max_overcommit),
        "reserve_percent": "" if reserve_percent is None else str(reserve_percent),
    }
    target = ("pool", f"{host.name}/{pool}", pool)
    with audited(actor=actor, action="storage.pool.limit", target=target, obj=host, perm="storage.settings",
                 params=params):  # fmt: skip
        gw.pool_get(host.uri, pool)  # NotFound for an unknown pool
        values = {
            "max_overcommit": None if max_overcommit is None else _check_ratio(max_overcommit),
            "reserve_percent": None if reserve_percent is None else _check_percent(reserve_percent, "reserve", 0, 99),
        }
        with transaction.atomic():
            limit, _ = PoolLimit.objects.select_for_update().get_or_create(host=host, pool=pool)
            PoolLimit.objects.filter(pk=limit.pk).update(**values, version=F("version") + 1)
            limit.refresh_from_db()
            return limit
