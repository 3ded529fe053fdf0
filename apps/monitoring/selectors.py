"""Reads for the Security page (database only)."""

from __future__ import annotations

from dataclasses import dataclass

from apps.accounts.permissions import has_perm
from apps.core.models import Host

from .models import MonitoringAlert, PostureResult, Status


@dataclass
class HostPosture:
    host: Host
    results: list[PostureResult]
    counts: dict[str, int]
    checked_at: object


def posture_for(user) -> list[HostPosture]:
    """The posture of each host the user may see with monitoring.view."""
    hosts = [h for h in Host.objects.all() if user is None or has_perm(user, "monitoring.view", h)]
    rows = PostureResult.objects.filter(host__in=hosts).select_related("host")
    by_host: dict[int, list[PostureResult]] = {}
    for row in rows:
        by_host.setdefault(row.host_id, []).append(row)
    out = []
    for host in hosts:
        results = by_host.get(host.pk, [])
        counts = {s: sum(1 for r in results if r.status == s) for s in Status.values}
        out.append(HostPosture(host, results, counts, max((r.checked_at for r in results), default=None)))
    return out


def open_alerts_for(user):
    hosts = [h.pk for h in Host.objects.all() if user is None or has_perm(user, "monitoring.view", h)]
    return MonitoringAlert.objects.filter(state=MonitoringAlert.State.OPEN, host_id__in=hosts).select_related("host")
