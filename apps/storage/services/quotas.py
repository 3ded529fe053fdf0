"""Per-VM quotas, portal-wide defaults and pool limits. Every change is audited; a change
built on a stale read is refused (compare-and-swap on a version), never lost."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import BigIntegerField, F, Value
from django.db.models.functions import Coalesce, Greatest

from apps.audit.services import record
from apps.core.errors import Conflict, InvalidInput, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.models import Host

from ..models import GIB, PoolLimit, StorageDefaults, VmQuota
from .common import (
    EffectiveQuota,
    authorize,
    defaults_get,
    effective_quota,
    fmt_bytes,
    parse_action,
    parse_gib,
    parse_percent,
    parse_ratio,
    parse_reserve,
    quota_of,
    record_failure,
)
from .disks import vm_disks


def _actor_name(actor) -> str:
    return getattr(actor, "username", "") or "system"


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
    return QuotaView(vm, effective_quota(quota_of(vm), defaults_get()), disks.allocation, disks.provisioned)


def quota_set(
    *,
    actor,
    vm,
    limit_gib=None,
    alert_percent=None,
    breach_action=None,
    confirmed: bool = False,
    expected_version: int | None = None,
) -> EffectiveQuota:
    """Set a VM's own quota fields (those given). The hard limit caps the provisioned size
    of the VM's disks: a limit below what is already provisioned is refused; one below
    what the disks and their snapshots already take (allocation) would be breached at
    once and needs confirmation. With expected_version (the version the person saw), a
    quota changed meanwhile by someone else is refused, not overwritten."""
    action = "storage.quota.set"
    authorize(actor, "storage.change", vm, action=action)
    params = {"limit_gib": limit_gib, "alert_percent": alert_percent, "breach_action": breach_action}
    params = {k: str(v) for k, v in params.items() if v not in (None, "")}
    try:
        if not params:
            raise InvalidInput("Nothing to change: give a limit, an alert threshold or a breach action.")
        changes = {}
        if limit_gib not in (None, ""):
            changes["limit_bytes"] = parse_gib(limit_gib, "quota")
        if alert_percent not in (None, ""):
            changes["alert_percent"] = parse_percent(alert_percent)
        if breach_action not in (None, ""):
            changes["breach_action"] = parse_action(breach_action)
        if "limit_bytes" in changes:
            _check_new_limit(vm, changes["limit_bytes"], confirmed)
        with transaction.atomic():
            row = _write_quota(vm, expected_version, **changes, updated_by_name=_actor_name(actor))
            if row is None:
                by = getattr(VmQuota.objects.filter(vm=vm).first(), "updated_by_name", "") or "someone else"
                raise Conflict(
                    f"The quota of {vm.name} was changed by {by} "
                    "since you loaded it; nothing was changed. Reload and try again."
                )
            result = effective_quota(row, defaults_get())
            params["previous_version"] = str(row.version - 1)
            record(actor=actor, action=action, target=vm, outcome="success", params=params)
            return result
    except PortalError as exc:
        record_failure(actor=actor, action=action, target=vm, params=params, error=exc.message)
        raise


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


def quota_set_threshold(*, actor, vm, percent) -> EffectiveQuota:
    """`storage_quota alert-threshold VM PERCENT`."""
    action = "storage.quota.threshold"
    authorize(actor, "storage.change", vm, action=action)
    params = {"alert_percent": str(percent)}
    try:
        value = parse_percent(percent)
        with transaction.atomic():
            row = _write_quota(vm, None, alert_percent=value, updated_by_name=_actor_name(actor))
            record(actor=actor, action=action, target=vm, outcome="success", params=params)
            return effective_quota(row, defaults_get())
    except PortalError as exc:
        record_failure(actor=actor, action=action, target=vm, params=params, error=exc.message)
        raise


def quota_expand(*, actor, vm, to_gib=None, by_gib=None) -> EffectiveQuota:
    """Raise a VM's hard limit to `to_gib` (the new total), or by `by_gib`. An "expansion"
    that would lower the limit is refused (lowering is `quota_set`'s, which checks what
    the disks already hold). Two people expanding by an amount at once both count: the
    addition is one UPDATE in the database (no read-modify-write to lose). Never touches
    a disk."""
    action = "storage.quota.expand"
    authorize(actor, "storage.change", vm, action=action)
    given = {k: v for k, v in (("to_gib", to_gib), ("by_gib", by_gib)) if v not in (None, "")}
    params = {k: str(v) for k, v in given.items()}
    try:
        if len(given) != 1:
            raise InvalidInput("Give either the new quota (to GiB) or the amount to add (by GiB), not both.")
        defaults = defaults_get()
        current = Coalesce(F("limit_bytes"), Value(defaults.quota_bytes, output_field=BigIntegerField()))
        with transaction.atomic():
            if by_gib not in (None, ""):
                by = parse_gib(by_gib, "expansion")
                row = _write_quota(vm, None, limit_bytes=current + by, updated_by_name=_actor_name(actor))
                if row.limit_bytes > settings.STORAGE_MAX_SIZE_GIB * GIB:
                    raise InvalidInput(
                        f"Expanding by {by_gib} GiB would take the quota of {vm.name} to "
                        f"{fmt_bytes(row.limit_bytes)}, above the {settings.STORAGE_MAX_SIZE_GIB} GiB this portal "
                        "accepts."
                    )
            else:
                target = parse_gib(to_gib, "new quota")
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
            params["limit_gib"] = f"{row.limit_bytes / GIB:g}"
            record(actor=actor, action=action, target=vm, outcome="success", params=params)
            return effective_quota(row, defaults)
    except PortalError as exc:
        record_failure(actor=actor, action=action, target=vm, params=params, error=exc.message)
        raise


def defaults_update(
    *, actor, quota_gib, alert_percent, breach_action, max_overcommit, reserve_percent, expected_version=None
) -> StorageDefaults:
    """The defaults applied to VMs and pools without their own values (admins only)."""
    action = "storage.settings.update"
    authorize(actor, "storage.settings", None, action=action)
    params = {
        "quota_gib": str(quota_gib),
        "alert_percent": str(alert_percent),
        "breach_action": str(breach_action),
        "max_overcommit": str(max_overcommit),
        "reserve_percent": str(reserve_percent),
    }
    target = ("storagedefaults", "1", "storage defaults")
    try:
        values = {
            "quota_bytes": parse_gib(quota_gib, "default quota"),
            "alert_percent": parse_percent(alert_percent),
            "breach_action": parse_action(breach_action),
            "max_overcommit": parse_ratio(max_overcommit),
            "reserve_percent": parse_reserve(reserve_percent),
        }
        defaults_get()
        with transaction.atomic():
            rows = StorageDefaults.objects.filter(id=1)
            if expected_version is not None:
                rows = rows.filter(version=expected_version)
            if not rows.update(**values, version=F("version") + 1, updated_by_name=_actor_name(actor)):
                raise Conflict("The storage settings were changed by someone else since you loaded them. Reload.")
            record(actor=actor, action=action, target=target, outcome="success", params=params)
            return StorageDefaults.objects.get(id=1)
    except PortalError as exc:
        record_failure(actor=actor, action=action, target=target, params=params, error=exc.message)
        raise


def pool_limit_set(*, actor, host: Host, pool: str, max_overcommit, reserve_percent) -> PoolLimit:
    """A pool's own maximum overcommit ratio and free-space reserve (admins only).
    Empty values fall back to the defaults."""
    action = "storage.pool.limit"
    authorize(actor, "storage.settings", host, action=action)
    params = {
        "pool": pool,
        "max_overcommit": "" if max_overcommit is None else str(max_overcommit),
        "reserve_percent": "" if reserve_percent is None else str(reserve_percent),
    }
    target = ("pool", f"{host.name}/{pool}", pool)
    try:
        gw.pool_get(host.uri, pool)  # NotFound for an unknown pool
        values = {
            "max_overcommit": parse_ratio(max_overcommit) if max_overcommit not in (None, "") else None,
            "reserve_percent": parse_reserve(reserve_percent) if reserve_percent not in (None, "") else None,
        }
        with transaction.atomic():
            limit, _ = PoolLimit.objects.select_for_update().get_or_create(host=host, pool=pool)
            PoolLimit.objects.filter(pk=limit.pk).update(**values, version=F("version") + 1)
            limit.refresh_from_db()
            record(actor=actor, action=action, target=target, outcome="success", params=params)
            return limit
    except PortalError as exc:
        record_failure(actor=actor, action=action, target=target, params=params, error=exc.message)
        raise
