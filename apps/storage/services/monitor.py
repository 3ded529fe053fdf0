"""The periodic check: measure the VMs and pools of every host in bulk, raise and clear
alerts (with hysteresis), apply breach actions, record usage samples.

The quota model: a VM's hard limit caps the provisioned size of its disks (growth beyond it
is refused); its allocation (what the disks and their snapshots really take) is watched
against the same limit: an alert at the alert threshold, the breach action at 100%.

Per host: the state collector's storage read (services/collect.py: one bulk libvirt read,
stored in PoolState/VolumeState/VmDiskState, the rows the pages show), then the check
measures those rows: a constant number of queries whatever the number of VMs and volumes;
only alerts that change state cost more.

The system check (Celery beat, `storage_quota check` without --as) covers everything. A
user's check covers only what the user may change (storage.change): it reads, reports and
acts on those VMs (and pools of hosts in their scope) alone, audited as that user.

A breach suspends (and its end resumes) the VM through the VM lifecycle service
(apps.vms.services.vm_lifecycle_now), as a person's suspension would."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize, has_perm
from apps.audit.services import record
from apps.core.errors import PortalError
from apps.core.gateways import libvirt as gw
from apps.core.models import Host
from apps.vms.models import VirtualMachine
from apps.vms.services import vm_lifecycle_now

from ..models import BreachAction, PoolLimit, PoolState, StorageAlert, StorageDefaults, UsageSample
from ..quota_rules import defaults_read, effective_pool_limit, effective_quota, fmt_bytes
from .alerts import notify
from .collect import storage_collect
from .samples import samples_compact

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


def action_wanted(level: str | None, action: str, state: str, applied: str) -> str:
    """The breach action that should be in force after a check: the quota's action while
    the breach lasts, none otherwise. A suspension stays recorded while the VM is not
    running (someone resumed it: respected, not fought), and is only entered on a
    running VM."""
    if level != BREACH or action == BreachAction.ALERT:
        return ""
    if action == BreachAction.SUSPEND and applied != BreachAction.SUSPEND and state != "running":
        return ""
    return action


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
    raised: list[str] = field(default_factory=list)  # new alerts and escalations to a breach
    lowered: list[str] = field(default_factory=list)  # from a breach back to a warning
    cleared: list[str] = field(default_factory=list)  # alerts ended because usage fell
    eased: list[str] = field(default_factory=list)  # alerts ended because a limit was raised
    suspended: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "host: reason", one per host
    errors: list[str] = field(default_factory=list)  # one subject's action failed


def storage_check(*, actor=None, now: datetime | None = None) -> CheckReport:
    """Run by Celery beat every STORAGE_CHECK_INTERVAL seconds (actor None: the system,
    everything), and by `storage_quota check` (as the system, or --as a user: their scope)."""
    authorize(actor, "storage.change", None, anywhere=True, action="storage.check")
    now = now or timezone.now()
    report = CheckReport()
    defaults = defaults_read()
    for host in Host.objects.all():
        scope = _Scope(actor, host)
        if not scope.anything():
            continue
        try:
            snapshot = storage_collect(host)  # the collector's storage read: the rows the pages show, now
        except PortalError as exc:
            report.unreadable.append(f"{host.name}: {exc.message}")
            continue
        if scope.host_wide and _register_strangers(host, snapshot):
            storage_collect(host, snapshot)  # their disk rows too (no second libvirt read)
        _check_host(host, defaults, now, report, scope)
    if actor is None:
        samples_compact(now)  # portal-wide housekeeping: the system check's
    return report


class _Scope:
    """What a check may read and act on, on one host: everything for the system; for a
    user, the VMs and (with a host-wide role) the pools their storage.change covers."""

    def __init__(self, actor, host: Host):
        self.actor, self.host = actor, host
        self.host_wide = actor is None or has_perm(actor, "storage.change", host)

    def vm(self, vm: VirtualMachine) -> bool:
        return self.host_wide or has_perm(self.actor, "storage.change", vm)

    def anything(self) -> bool:
        if self.host_wide:
            return True
        rows = VirtualMachine.objects.filter(host=self.host, present=True).only("pk", "host_id", "zone")
        return any(self.vm(vm) for vm in rows)


def _register_strangers(host: Host, snapshot: gw.StorageSnapshot) -> bool:
    """Register the host's domains defined outside the portal from the data already read
    (the VM inventory fills in the rest the next time it syncs), so they are measured and
    held to the default quota at once. Only a check covering the whole host does this.
    True when some were registered."""
    known = {str(u) for u in VirtualMachine.objects.filter(host=host, present=True).values_list("uuid", flat=True)}
    missing = [d for d in snapshot.domains if d.uuid not in known]
    if not missing:
        return False
    now = timezone.now()
    VirtualMachine.objects.bulk_create(
        [VirtualMachine(host=host, uuid=d.uuid, name=d.name, last_state=d.state, last_seen=now) for d in missing],
        ignore_conflicts=True,  # a stale row holds the name: the inventory sync sorts it out
    )
    return True


def measure_host(host: Host, defaults: StorageDefaults, scope: _Scope | None = None) -> list[Measure]:
    """What the check holds against the quotas and pool limits: the state collector's rows
    of the host (VmDiskState, PoolState, written by services/collect.py)."""
    scope = scope or _Scope(None, host)
    vms = (VirtualMachine.objects.filter(host=host, present=True, disk_state__isnull=False)
           .select_related("storage_quota", "disk_state", "host").order_by("name"))  # fmt: skip
    measures = []
    for vm in vms:
        if not scope.vm(vm):
            continue
        disks = vm.disk_state
        quota = effective_quota(getattr(vm, "storage_quota", None), defaults)
        measures.append(
            Measure(
                host,
                vm,
                "",
                disks.allocation,
                quota.limit_bytes,
                disks.provisioned,
                quota.alert_percent,
                100,
                quota.breach_action,
                disks.state,
            )
        )
    if not scope.host_wide:
        return measures  # pools belong to the host, outside a VM- or zone-scoped user's check
    limits = {pl.pool: pl for pl in PoolLimit.objects.filter(host=host)}
    for pool in PoolState.objects.filter(host=host, active=True, capacity__gt=0).order_by("name"):
        limit = effective_pool_limit(limits.get(pool.name), defaults)
        measures.append(
            Measure(
                host,
                None,
                pool.name,
                pool.allocation,
                pool.capacity,
                pool.provisioned,
                min(defaults.alert_percent, 100 - limit.reserve_percent),
                100 - limit.reserve_percent,
            )
        )
    return measures


def over_limit_line(m: Measure) -> str:
    """Why a VM is over its hard limit (empty when it is not): its disks are provisioned
    beyond it (no growth is possible), or they and their snapshots take more than it."""
    if m.usage > m.limit:
        return (
            f"{m.vm.name}: {fmt_bytes(m.usage)} allocated, {fmt_bytes(m.usage - m.limit)} over its "
            f"quota of {fmt_bytes(m.limit)}"
        )
    if m.provisioned > m.limit:
        return (
            f"{m.vm.name}: disks of {fmt_bytes(m.provisioned)} provisioned, "
            f"{fmt_bytes(m.provisioned - m.limit)} over its quota of {fmt_bytes(m.limit)}"
        )
    return ""


def _check_host(host, defaults, now, report: CheckReport, scope: _Scope) -> None:
    measures = measure_host(host, defaults, scope)
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
            line = over_limit_line(m)
            if line:
                report.over_limit.append(line)
        else:
            report.pools += 1
        alert = open_alerts.get((m.vm.pk if m.vm else None, m.pool))
        current = alert.level if alert else None
        level = next_level(current, m.percent, m.warn, m.breach, hysteresis)
        try:
            if level != current:
                alert = _transition(scope.actor, m, alert, level, now, report)
            if alert is not None and m.vm is not None:
                # also when the level stayed: a breach action changed meanwhile applies now
                _apply_action(scope.actor, m, alert, level, report)
        except PortalError as exc:  # one VM's failure must not stop the check (it is audited where it failed)
            report.errors.append(f"{m.subject}: {exc.message}")
        except PermissionDenied as exc:  # a user's check may change quotas but not suspend VMs (audited)
            report.errors.append(f"{m.subject}: {exc}")


def _target(m: Measure):
    return m.vm if m.vm is not None else ("pool", f"{m.host.name}/{m.pool}", m.pool)


def _message(m: Measure, level: str | None, before: StorageAlert | None = None) -> str:
    what = "quota" if m.vm is not None else "capacity"
    now = f"{fmt_bytes(m.usage)}, {m.percent:.0f}% of its {what} of {fmt_bytes(m.limit)}"
    if level is None or (level == WARNING and before is not None and before.level == BREACH):
        where = "below its alert threshold" if level is None else "below its limit"
        if before is not None and m.usage < before.usage:
            return f"{m.subject} is {where} again: usage fell from {fmt_bytes(before.usage)} to {now}."
        if before is not None and m.limit > before.limit:
            return f"{m.subject} is {where} again: its {what} was raised from {fmt_bytes(before.limit)}; it uses {now}."
        return f"{m.subject} is {where} again: its threshold was raised; it uses {now}."
    bound = m.breach if level == BREACH else m.warn
    return f"{m.subject} uses {now} ({'limit' if level == BREACH else 'alert threshold'} {bound}%)."


def _transition(actor, m: Measure, alert: StorageAlert | None, level: str | None, now, report) -> StorageAlert:
    before = alert
    message = _message(m, level, before)
    usage_fell = before is not None and m.usage < before.usage
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
        record(actor=actor, action=f"storage.alert.{event}", target=_target(m), outcome="success", params=params)
    if event in ("raise", "escalate"):
        report.raised.append(message)
    elif event == "lower":
        report.lowered.append(message)
    else:
        (report.cleared if usage_fell else report.eased).append(message)
    notify(alert, event)
    return alert


def _apply_action(actor, m: Measure, alert: StorageAlert, level: str | None, report: CheckReport) -> None:
    """Bring the breach action in force in line with the quota: enter it when a breach
    starts, leave it when the breach ends, and switch when the quota's action was changed
    during an open breach."""
    wanted = action_wanted(level, m.action, m.state, alert.action_applied)
    applied = alert.action_applied
    if wanted == applied:
        return
    uri, name, vm = m.host.uri, m.vm.name, m.vm
    reason = {"reason": alert.message}
    if applied == BreachAction.SUSPEND:
        if gw.domain_state(uri, name) == "paused":
            vm_lifecycle_now(actor=actor, vm=vm, action="resume", audit_action="storage.quota.resume", params=reason)
            report.resumed.append(f"{name}: {alert.message}")
    elif applied == BreachAction.REFUSE:
        record(actor=actor, action="storage.quota.refuse_growth", target=vm, outcome="success", params={"on": False})
    _set_applied(alert, "")
    if wanted == BreachAction.SUSPEND:
        vm_lifecycle_now(actor=actor, vm=vm, action="suspend", audit_action="storage.quota.suspend", params=reason)
        report.suspended.append(f"{name}: {alert.message}")
    elif wanted == BreachAction.REFUSE:
        record(actor=actor, action="storage.quota.refuse_growth", target=vm, outcome="success", params={"on": True})
    _set_applied(alert, wanted)


def _set_applied(alert: StorageAlert, action: str) -> None:
    alert.action_applied = action
    StorageAlert.objects.filter(pk=alert.pk).update(action_applied=action)
