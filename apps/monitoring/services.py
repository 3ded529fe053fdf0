"""Monitoring: who may scrape /metrics, the scrape itself, the host security posture (run,
stored, alerts on a pass that turns to fail), the audit chain verification and the worker
heartbeat that beat drives."""

from __future__ import annotations

import hmac
import ipaddress
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import record, refused
from apps.core import jobs
from apps.core.errors import NotFound, PortalError
from apps.core.gateways import host_checks
from apps.core.models import Host, Job

from . import metrics, notifications, posture
from .models import LynisScan, MonitoringAlert, PostureResult, Status

AUDIT_VERIFY_ACTION = metrics.AUDIT_VERIFY_ACTION
SCRAPE_ACTION = "monitoring.metrics.scrape"
POSTURE_JOB = "monitoring.posture.check"
LYNIS_JOB = "monitoring.lynis.scan"
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


class MetricsRefused(PortalError):
    """A scrape without a valid token from an address that may not scrape without one."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ /metrics


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def metrics_access(*, remote_addr: str | None, authorization: str, proxied: bool) -> str:
    """Decide whether this request may read /metrics; returns how it was let in ("token"
    or "loopback"). A bearer token (settings.METRICS_TOKEN, compared in constant time) or,
    when METRICS_ALLOW_LOOPBACK is set, a request from loopback that no proxy forwarded.
    A refusal is audited (reason and address, never the token) and raised: 401 without
    credentials, 403 with wrong ones."""
    expected = settings.METRICS_TOKEN or ""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        if expected and hmac.compare_digest(presented.strip().encode(), expected.encode()):
            return "token"
        _refuse("wrong metrics token" if expected else "a token was sent but METRICS_TOKEN is not set", 403)
    if authorization:
        _refuse("the Authorization header is not a bearer token", 401)
    if settings.METRICS_ALLOW_LOOPBACK and _is_loopback(remote_addr):
        if not proxied:
            return "loopback"
        _refuse("a request forwarded by a proxy needs the metrics token (loopback access is for local scrapers)", 401)
    _refuse("no metrics token", 401)
    raise AssertionError("unreachable")


def _refuse(reason: str, status: int) -> None:
    record(
        actor=None,
        actor_name="anonymous",
        action=SCRAPE_ACTION,
        target=("endpoint", "", "/metrics"),
        outcome="denied",
        error=reason,
    )
    raise MetricsRefused(f"Metrics refused: {reason}.", status)


def metrics_scrape() -> bytes:
    return metrics.scrape()


# ------------------------------------------------------------------ posture


def posture_host() -> Host | None:
    """The host whose machine the checks read: the portal's own (DEFAULT_HOST_NAME)."""
    return Host.objects.filter(name=settings.DEFAULT_HOST_NAME).first()


@dataclass
class PostureReport:
    host: str
    counts: dict[str, int] = field(default_factory=dict)
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # (check, before, after)
    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    notified: list[tuple[str, str, str]] = field(default_factory=list)  # (check, state, channel)


def posture_store(host: Host, findings: list[posture.Finding], now=None) -> PostureReport:
    """Write each finding over the host's previous one. A status change is audited; a pass
    that turns to fail raises an alert, a check that passes again clears it."""
    now = now or timezone.now()
    report = PostureReport(host=host.name)
    with transaction.atomic():
        previous = {r.key: r for r in PostureResult.objects.select_for_update().filter(host=host)}
        for f in findings:
            report.counts[f.status] = report.counts.get(f.status, 0) + 1
            row = previous.get(f.key)
            before = row.status if row is not None else ""
            if row is None:
                row = PostureResult(host=host, key=f.key, changed_at=now)
            elif before != f.status:
                row.previous_status = before
                row.changed_at = now
            row.title, row.category, row.status = f.title, f.category, f.status
            row.evidence, row.fix, row.checked_at = f.evidence[:4000], f.fix, now
            row.save()
            if before and before != f.status:
                report.changed.append((f.key, before, f.status))
                record(
                    actor=None,
                    action="monitoring.posture.change",
                    target=("posture_check", f.key, f"{host.name}: {f.title}"),
                    outcome="success",
                    params={"host": host.name, "check": f.key, "from": before, "to": f.status},
                )
            if before == Status.PASS and f.status == Status.FAIL:
                _alert_raise(host, f, now, report)
            elif f.status == Status.PASS:
                _alert_clear(host, f.key, now, report)
        PostureResult.objects.filter(host=host).exclude(key__in=[f.key for f in findings]).delete()
    return report


def _alert_raise(host: Host, f: posture.Finding, now, report: PostureReport) -> None:
    if MonitoringAlert.objects.filter(host=host, source="posture", subject=f.key, state="open").exists():
        return
    alert = MonitoringAlert.objects.create(
        host=host,
        source="posture",
        subject=f.key,
        level=MonitoringAlert.Level.WARNING,
        message=f"{f.title}: no longer passes on {host.name}. {f.evidence}"[:500],
        raised_at=now,
    )
    report.raised.append(f.key)
    _notify(report, alert, "firing")
    record(
        actor=None,
        action="monitoring.alert.raise",
        target=alert,
        outcome="success",
        params={"host": host.name, "check": f.key},
    )


def _alert_clear(host: Host, key: str, now, report: PostureReport) -> None:
    for alert in MonitoringAlert.objects.filter(host=host, source="posture", subject=key, state="open"):
        alert.state, alert.cleared_at = MonitoringAlert.State.CLEARED, now
        alert.save(update_fields=["state", "cleared_at"])
        report.cleared.append(key)
        _notify(report, alert, "resolved")
        record(actor=None, action="monitoring.alert.clear", target=alert, outcome="success", params={"check": key})


def _notify(report: PostureReport, alert: MonitoringAlert, state: str) -> None:
    notice = notifications.Notice(
        source="posture",
        name="PortalPostureCheckFailing",
        subject=alert.subject,
        host=alert.host.name,
        level=alert.level,
        state=state,
        message=alert.message if state == "firing" else f"{alert.subject} passes again on {alert.host.name}.",
    )
    report.notified += [(alert.subject, state, c) for c in notifications.notify(notice)]


def posture_check(*, checks: list[posture.Check] | None = None) -> PostureReport:
    """Run the checklist for every host and store it (beat, as the system); the report of
    the portal's own host is returned. The worker's machine is read for the hosts on it;
    another machine's checks are read over libvirt where it reports them, and otherwise
    say "not checked: remote host", never this machine's result."""
    host = posture_host()
    if host is None:
        raise NotFound(f"No host named {settings.DEFAULT_HOST_NAME!r}: add it before checking its posture.")
    report = posture_store(host, posture.evaluate(checks, host=host))
    for other in Host.objects.exclude(pk=host.pk):
        posture_store(other, posture.evaluate(checks, host=other))
    return report


def _host_job(actor, kind: str, params: dict | None = None) -> Job:
    host = posture_host()
    if host is None:
        authorize(actor, "security.manage", action=kind)
        raise NotFound(f"No host named {settings.DEFAULT_HOST_NAME!r}: add it before checking its posture.")
    authorize(actor, "security.manage", host, action=kind)
    with transaction.atomic():
        return jobs.job_enqueue(actor=actor, kind=kind, target=host, host=host, params=params)


def posture_check_request(*, actor) -> Job:
    """Run the checks now, as a job (the Security page's button)."""
    return _host_job(actor, POSTURE_JOB)


def lynis_scan_request(*, actor) -> Job:
    """A deeper scan with lynis, as a job (it takes minutes)."""
    return _host_job(actor, LYNIS_JOB)


@jobs.handler(LYNIS_JOB)
def _run_lynis_job(job: Job, progress: jobs.Progress) -> dict:
    authorize(jobs.job_actor(job), "security.manage", job.host, action=LYNIS_JOB)
    progress(5, "running lynis audit system (this takes a few minutes)")
    with jobs.heartbeat(job):
        text, _tail = host_checks.lynis_audit(timeout=settings.LYNIS_TIMEOUT, tests=settings.LYNIS_TESTS)
    report = posture.parse_lynis_report(text)
    scan = LynisScan.objects.create(
        host=job.host,
        job_id=job.pk,
        finished_at=timezone.now(),
        lynis_version=report.version,
        hardening_index=report.hardening_index,
        warnings=report.warnings,
        suggestions=report.suggestions,
        tests_performed=report.tests_performed,
    )
    return {
        "scan": scan.pk,
        "hardening_index": report.hardening_index,
        "warnings": len(report.warnings),
        "suggestions": len(report.suggestions),
    }


@jobs.handler(POSTURE_JOB)
def _run_posture_job(job: Job, progress: jobs.Progress) -> dict:
    authorize(jobs.job_actor(job), "security.manage", job.host, action=POSTURE_JOB)
    progress(10, "checking the host")
    report = posture_store(job.host, posture.evaluate(host=job.host))
    for index, other in enumerate(Host.objects.exclude(pk=job.host_id)):
        progress(50, f"checking host {other.name} (#{index + 2})")
        posture_store(other, posture.evaluate(host=other))
    return {"counts": report.counts, "changed": len(report.changed), "raised": report.raised}


# ------------------------------------------------------------------ audit chain, worker heartbeat


def audit_chain_check() -> bool:
    """Verify the audit hash chain incrementally, record the run (the metrics read the last
    one) and alert on a new break: apps.audit.chain.chain_check."""
    from apps.audit.chain import chain_check

    return chain_check()


def worker_heartbeat() -> float:
    """Beat sends this to a worker every minute: the metrics show when one last ran it."""
    now = time.time()
    cache.set(metrics.WORKER_HEARTBEAT_KEY, now, None)
    return now


# ------------------------------------------------------------------ incident response plan

PLAN_TEMPLATE = {
    "detect": (
        "Watch the alerts from Prometheus/Alertmanager and the portal (Storage alerts, Security page), "
        "the audit log (failed sign-ins, denials, audit chain verification) and the hosts' auditd logs. "
        "Whoever sees a possible incident opens a ticket and calls the on-call administrator."
    ),
    "contain": (
        "Isolate the affected VM (quarantine its network, or suspend it), keep its state for forensics "
        "(snapshot, memory dump), revoke the sessions and roles of affected accounts, seal the key store "
        "if keys may be exposed."
    ),
    "recover": (
        "Restore from a verified backup, rotate the keys and passphrases involved (disk keys, KEK), "
        "patch what was exploited, and bring services back one at a time while watching the metrics."
    ),
    "review": (
        "Within a week: write down the timeline from the audit log, what worked and what did not, "
        "and change the checklist, alert rules and this plan accordingly."
    ),
}


def incident_plan():
    from .models import IncidentResponsePlan

    return IncidentResponsePlan.objects.filter(id=1).first()


def incident_plan_save(*, actor, detect: str, contain: str, recover: str, review: str, contacts: str,
                       expected_version: int):
    """Write the plan (admins); `expected_version` refuses a lost update."""
    from apps.audit.services import audited
    from apps.core.errors import Conflict

    from .models import IncidentResponsePlan

    action, target = "monitoring.incident_plan.save", ("incident_plan", "1", "incident response plan")
    authorize(actor, "security.manage", action=action, target=target)  # global: the plan covers every host
    with audited(actor=actor, action=action, target=target, atomic=True) as ev:
        current = IncidentResponsePlan.objects.select_for_update().filter(id=1).first()
        have = current.version if current else 0
        if have != expected_version:
            raise Conflict(f"The plan changed meanwhile (now version {have}): reload it and make your change again.")
        plan = current or IncidentResponsePlan(id=1, version=0)
        plan.detect, plan.contain, plan.recover, plan.review, plan.contacts = detect, contain, recover, review, contacts
        plan.version += 1
        plan.updated_at = timezone.now()
        plan.updated_by_name = getattr(actor, "username", "") or "system"
        plan.save()
        ev.params["version"] = plan.version
    return plan


def incident_plan_reviewed(*, actor):
    """Record that an admin reviewed the plan as it stands."""
    from apps.audit.services import audited

    action, target = "monitoring.incident_plan.review", ("incident_plan", "1", "incident response plan")
    authorize(actor, "security.manage", action=action, target=target)
    with audited(actor=actor, action=action, target=target, atomic=True) as ev:
        plan = incident_plan()
        if plan is None:
            raise NotFound("There is no incident response plan yet: write one first.")
        plan.reviewed_at = timezone.now()
        plan.reviewed_by_name = getattr(actor, "username", "") or "system"
        plan.save(update_fields=["reviewed_at", "reviewed_by_name"])
        ev.params["version"] = plan.version
    return plan


# ------------------------------------------------------------------ auditd rules

AUDIT_RULES_JOB = "monitoring.audit_rules.install"


def audit_rules_wanted() -> str:
    """The watch rules the guide asks for (every path of POSTURE_AUDIT_WATCH_PATHS, writes
    and attribute changes), as an auditd rules file."""
    lines = [
        "## Installed by the hypervisor portal (Security > auditd rules). Changes here are",
        "## overwritten by the next installation: change POSTURE_AUDIT_WATCH_PATHS instead.",
    ]
    lines += [f"-w {p} -p wa -k hypervisor-portal" for p in settings.POSTURE_AUDIT_WATCH_PATHS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RulesDiff:
    path: str
    installed: str | None
    wanted: str
    diff: str
    wanted_sha256: str

    @property
    def up_to_date(self) -> bool:
        return self.installed == self.wanted


def audit_rules_diff() -> RulesDiff:
    import difflib
    import hashlib

    path = str(settings.AUDIT_RULES_FILE)
    try:
        installed = host_checks.read_text(path)
    except PortalError:
        installed = None
    installed = None if installed is None else installed + "\n"
    wanted = audit_rules_wanted()
    diff = "".join(
        difflib.unified_diff(
            (installed or "").splitlines(keepends=True), wanted.splitlines(keepends=True),
            fromfile=f"{path} (installed)" if installed is not None else "(not installed)", tofile=f"{path} (wanted)",
        )
    )  # fmt: skip
    return RulesDiff(path, installed, wanted, diff, hashlib.sha256(wanted.encode()).hexdigest())


def audit_rules_install_request(*, actor, seen_sha256: str) -> Job:
    """Install the rules the admin saw in the diff (their sha256): refused if they changed since."""
    diff = audit_rules_diff()
    if seen_sha256 != diff.wanted_sha256:
        from apps.core.errors import Conflict

        message = "The wanted rules changed since the diff was shown: look at the diff again."
        refused(actor=actor, action=AUDIT_RULES_JOB, target=("file", "", diff.path), error=message,
                perm="security.manage", obj=posture_host())
        raise Conflict(message)
    return _host_job(actor, AUDIT_RULES_JOB, {"sha256": seen_sha256, "path": diff.path})


@jobs.handler(AUDIT_RULES_JOB)
def _run_audit_rules_job(job: Job, progress: jobs.Progress) -> dict:
    authorize(jobs.job_actor(job), "security.manage", job.host, action=AUDIT_RULES_JOB)
    diff = audit_rules_diff()
    if diff.wanted_sha256 != job.params.get("sha256"):
        from apps.core.errors import Conflict

        raise Conflict("The wanted rules changed after the diff was shown; nothing was installed.")
    progress(30, f"writing {diff.path}")
    host_checks.install_file(diff.path, diff.wanted)
    if host_checks.which("augenrules") is None:
        loaded = "augenrules is not installed on this host: the file is written; auditd loads it when it starts"
    else:
        progress(70, "loading the rules (augenrules --load)")
        out = host_checks.run(["augenrules", "--load"])
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
        if out.returncode != 0:
            raise PortalError(f"{diff.path} is written but augenrules --load failed: {tail[0]}")
        loaded = "loaded with augenrules --load"
    return {"path": diff.path, "changed": not diff.up_to_date, "diff": diff.diff[:4000], "loaded": loaded}
