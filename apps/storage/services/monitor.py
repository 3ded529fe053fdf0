"""The periodic check: measure every VM and pool of every host in bulk, raise and clear
alerts (with hysteresis), apply breach actions, record usage samples.

Per host: one bulk libvirt read (gateway.storage_snapshot) and a constant number of
queries, whatever the number of VMs and volumes; only alerts that change state cost more."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.services import record
from apps.core.errors import PortalError
from apps.core.gateways import libvirt_gw as gw
from apps.core.models import Host
from apps.vms.models import VirtualMachine

from ..models import BreachAction, PoolLimit, StorageAlert, StorageDefaults, UsageSample
from .alerts import notify
from .common import authorize, defaults_get, effective_pool_limit, effective_quota, fmt_bytes
from .disks import host_snapshot
from .samples import samples_compact

log = logging.getLogger(__name__)
WARNING, BREACH = StorageAlert.Level.WARNING, StorageAlert.Level.BREACH


def next_level(current: str | None, percent: float, warn: float, breach: float, hysteresis: float) -> str | None:
    """The alert level after a measurement. Raising happens at the threshold; lowering
    only once usage is `hysteresis` points below it, so usage hovering at a threshold
    does not flap."""
    if percent >= breach:
        return BREACH
    if current == BREACH and percent >= breach - hysteresis:
        return BREACH
    if percent >= warn:
        return WARNING
    if current is not None and percent >= warn - hysteresis:
        return WARNING
    return None


@dataclass
class Measure:
    host: Host
    vm: VirtualMachine | None
    pool: str
    usage: int
    limit: int
    provisioned: int
    warn: int
    breach: int
    action: str = BreachAction.ALERT
    state: str = ""

    @property
    def percent(self) -> float:
        return 100.0 * self.usage / self.limit if self.limit else 0.0

    @property
    def subject(self) -> str:
        return self.vm.name if self.vm is not None else f"pool {self.pool}"


@dataclass
class CheckReport:
    vms: int = 0
    pools: int = 0
    over_limit: list[str] = field(default_factory=list)
    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def storage_check(*, actor=None, now: datetime | None = None) -> CheckReport:
    """Run by Celery beat every STORAGE_CHECK_INTERVAL seconds, and by `storage_quota check`."""
    authorize(actor, "storage.change", None, anywhere=True, action="storage.check")
    now = now or timezone.now()
    report = CheckReport()
    defaults = defaults_get()
    for host in Host.objects.all():
        try:
            snapshot = host_snapshot(host, workers=settings.STORAGE_LIBVIRT_READ_WORKERS)
        except PortalError as exc:
            log.warning("storage check: host %s unreadable: %s", host.name, exc.message)
            report.errors.append(f"{host.name}: {exc.message}")
            continue
        _check_host(host, snapshot, defaults, now, report)
    samples_compact(now)
    return report


def _vm_rows(host: Host, snapshot: gw.StorageSnapshot) -> dict[str, VirtualMachine]:
    """The portal's rows of the host's domains. A domain defined outside the portal is
    registered here from the data already read (the VM inventory fills in the rest the
    next time it syncs), so it is measured and held to the default quota at once."""

    def load():
        rows = VirtualMachine.objects.filter(host=host, present=True).select_related("storage_quota", "host")
        return {str(vm.uuid): vm for vm in rows}

    rows = load()
    missing = [d for d in snapshot.domains if d.uuid not in rows]
    if missing:
        now = timezone.now()
        VirtualMachine.objects.bulk_create(
            [VirtualMachine(host=host, uuid=d.uuid, name=d.name, last_state=d.state, last_seen=now) for d in missing],
            ignore_conflicts=True,  # a stale row holds the name: the inventory sync sorts it out
        )
        rows = load()
    return rows


def measure_host(host: Host, snapshot: gw.StorageSnapshot, defaults: StorageDefaults) -> list[Measure]:
    vms = _vm_rows(host, snapshot)
    measures = []
    for dom in snapshot.domains:
        vm = vms.get(dom.uuid)
        if vm is None:
            continue
        quota = effective_quota(getattr(vm, "storage_quota", None), defaults)
        measures.append(
            Measure(
                host,
                vm,
                "",
                dom.allocation,
                quota.limit_bytes,
                dom.provisioned,
                quota.alert_percent,
                100,
                quota.breach_action,
                dom.state,
            )
        )
    limits = {pl.pool: pl for pl in PoolLimit.objects.filter(host=host)}
    for pool in snapshot.pools:
        if not pool.active or not pool.capacity:
            continue
        limit = effective_pool_limit(limits.get(pool.name), defaults)
        measures.append(
            Measure(
                host,
                None,
                pool.name,
                pool.allocation,
                pool.capacity,
                sum(v.capacity for v in pool.volumes),
                min(defaults.alert_percent, 100 - limit.reserve_percent),
                100 - limit.reserve_percent,
            )
        )
    return measures


def _check_host(host, snapshot, defaults, now, report: CheckReport) -> None:
    measures = measure_host(host, snapshot, defaults)
    open_alerts = {(a.vm_id, a.pool): a for a in StorageAlert.objects.filter(host=host, state=StorageAlert.State.OPEN)}
    hysteresis = settings.STORAGE_ALERT_HYSTERESIS_PERCENT
    UsageSample.objects.bulk_create(
        [
            UsageSample(
                host=host,
                vm=m.vm,
                pool=m.pool,
                at=now,
                allocation=m.usage,
                provisioned=m.provisioned,
                limit=m.limit,
            )
            for m in measures
        ],
        batch_size=2000,
    )
    for m in measures:
        if m.vm is not None:
            report.vms += 1
            if m.usage > m.limit:
                report.over_limit.append(
                    f"{m.vm.name}: {fmt_bytes(m.usage)} used, {fmt_bytes(m.usage - m.limit)} over its "
                    f"quota of {fmt_bytes(m.limit)}"
                )
        else:
            report.pools += 1
        alert = open_alerts.get((m.vm.pk if m.vm else None, m.pool))
        current = alert.level if alert else None
        level = next_level(current, m.percent, m.warn, m.breach, hysteresis)
        if level == current:
            continue
        try:
            _transition(m, alert, level, now, report)
        except PortalError as exc:  # one VM's failure must not stop the check
            report.errors.append(f"{m.subject}: {exc.message}")


def _target(m: Measure):
    return m.vm if m.vm is not None else ("pool", f"{m.host.name}/{m.pool}", m.pool)


def _message(m: Measure, level: str | None) -> str:
    what = "quota" if m.vm is not None else "capacity"
    if level is None:
        return f"{m.subject} is back to {fmt_bytes(m.usage)} ({m.percent:.0f}% of its {what} of {fmt_bytes(m.limit)})."
    bound = m.breach if level == BREACH else m.warn
    return (
        f"{m.subject} uses {fmt_bytes(m.usage)}, {m.percent:.0f}% of its {what} of {fmt_bytes(m.limit)} "
        f"({'limit' if level == BREACH else 'alert threshold'} {bound}%)."
    )


def _transition(m: Measure, alert: StorageAlert | None, level: str | None, now, report: CheckReport) -> None:
    message = _message(m, level)
    params = {"usage": m.usage, "limit": m.limit, "percent": round(m.percent), "level": level or "cleared"}
    with transaction.atomic():
        if alert is None:
            alert = StorageAlert.objects.create(
                host=m.host,
                vm=m.vm,
                pool=m.pool,
                level=level,
                usage=m.usage,
                limit=m.limit,
                percent=round(m.percent),
                message=message,
                raised_at=now,
                updated_at=now,
            )
            event = "raise"
        else:
            event = "clear" if level is None else ("escalate" if level == BREACH else "lower")
            alert.usage, alert.limit, alert.percent, alert.message, alert.updated_at = (
                m.usage,
                m.limit,
                round(m.percent),
                message,
                now,
            )
            if level is None:
                alert.state, alert.cleared_at = StorageAlert.State.CLEARED, now
            else:
                alert.level = level
                if event == "escalate":  # a new, worse condition: it needs a new acknowledgement
                    alert.acknowledged_at, alert.acknowledged_by, alert.acknowledged_by_name = None, None, ""
            alert.save()
        record(actor=None, action=f"storage.alert.{event}", target=_target(m), outcome="success", params=params)
    (report.cleared if level is None else report.raised).append(message)
    _apply_action(m, alert, level)
    notify(alert, event)


def _apply_action(m: Measure, alert: StorageAlert, level: str | None) -> None:
    """Enter the breach action when the breach starts, leave it when the breach ends."""
    if m.vm is None:
        return
    uri, name = m.host.uri, m.vm.name
    if level == BREACH and not alert.action_applied:
        if m.action == BreachAction.SUSPEND and m.state == "running":
            _with_audit(m.vm, "storage.quota.suspend", lambda: gw.suspend_domain(uri, name), alert.message)
            alert.action_applied = BreachAction.SUSPEND
        elif m.action == BreachAction.REFUSE:
            record(
                actor=None, action="storage.quota.refuse_growth", target=m.vm, outcome="success", params={"on": True}
            )
            alert.action_applied = BreachAction.REFUSE
        StorageAlert.objects.filter(pk=alert.pk).update(action_applied=alert.action_applied)
    elif level != BREACH and alert.action_applied:
        if alert.action_applied == BreachAction.SUSPEND and gw.domain_state(uri, name) == "paused":
            _with_audit(m.vm, "storage.quota.resume", lambda: gw.resume_domain(uri, name), alert.message)
        elif alert.action_applied == BreachAction.REFUSE:
            record(
                actor=None, action="storage.quota.refuse_growth", target=m.vm, outcome="success", params={"on": False}
            )
        alert.action_applied = ""
        StorageAlert.objects.filter(pk=alert.pk).update(action_applied="")


def _with_audit(vm, action: str, fn, reason: str) -> None:
    try:
        fn()
    except PortalError as exc:
        record(actor=None, action=action, target=vm, outcome="failed", params={"reason": reason}, error=exc.message)
        raise
    record(actor=None, action=action, target=vm, outcome="success", params={"reason": reason})
