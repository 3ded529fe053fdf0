"""Reads for the Security page (database only)."""

from __future__ import annotations

from dataclasses import dataclass

from apps.accounts.permissions import has_perm
from apps.core.models import Host

from .models import LynisScan, MonitoringAlert, PostureResult, Status


@dataclass
class HostPosture:
    host: Host
    results: list[PostureResult]
    counts: dict[str, int]
    checked_at: object
    lynis: LynisScan | None = None


def posture_for(user) -> list[HostPosture]:
    """The posture of each host the user may see with monitoring.view."""
    hosts = [h for h in Host.objects.all() if user is None or has_perm(user, "monitoring.view", h)]
    rows = PostureResult.objects.filter(host__in=hosts).select_related("host")
    by_host: dict[int, list[PostureResult]] = {}
    for row in rows:
        by_host.setdefault(row.host_id, []).append(row)
    lynis = latest_lynis(hosts)
    out = []
    for host in hosts:
        results = by_host.get(host.pk, [])
        counts = {s: sum(1 for r in results if r.status == s) for s in Status.values}
        checked = max((r.checked_at for r in results), default=None)
        out.append(HostPosture(host, results, counts, checked, lynis.get(host.pk)))
    return out


def open_alerts_for(user):
    hosts = [h.pk for h in Host.objects.all() if user is None or has_perm(user, "monitoring.view", h)]
    return MonitoringAlert.objects.filter(state=MonitoringAlert.State.OPEN, host_id__in=hosts).select_related("host")



def failed_deliveries(days: int = 7, limit: int = 10):
    """The newest notifications that could not be delivered (their audit rows, one per
    delivery): the Security page shows them, so a mail server or webhook that is down is
    seen by someone even when no alert reaches them."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.audit.models import AuditEvent

    from .notifications import DELIVER_ACTION

    since = timezone.now() - timedelta(days=days)
    return list(AuditEvent.objects.filter(action=DELIVER_ACTION, outcome="failed", created_at__gte=since)
                .order_by("-created_at", "-id")[:limit])  # fmt: skip


def latest_lynis(hosts) -> dict[int, LynisScan]:
    """The newest lynis scan of each of these hosts, by host id."""
    latest: dict[int, LynisScan] = {}
    scans = LynisScan.objects.filter(host__in=hosts).select_related("host").order_by("host_id", "-finished_at", "-id")
    for scan in scans:
        latest.setdefault(scan.host_id, scan)
    return latest
