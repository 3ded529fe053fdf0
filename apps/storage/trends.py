"""Usage history as read: a VM's or pool's samples and the trend projected from them with
a least-squares line. Reads only; the chart is drawn by the `trend_chart` template tag."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from apps.core.prepared import Prepared

from .models import UsageSample


@dataclass(frozen=True)
class Trend:
    points: list[tuple[datetime, int]]
    limit: int
    bytes_per_day: float | None
    days_left: float | None


def trend(samples, *, now: datetime, window_days: int = 14) -> Trend:
    """Chart points and the projected days until usage reaches the limit."""
    points = [(s.at, s.allocation) for s in samples]
    limit = samples[-1].limit if samples else 0
    recent = [(at, v) for at, v in points if at >= now - timedelta(days=window_days)]
    slope = None
    days_left = None
    if len(recent) >= 2 and (recent[-1][0] - recent[0][0]).total_seconds() >= 3600:
        xs = [(at - recent[0][0]).total_seconds() / 86400 for at, _ in recent]
        ys = [v for _, v in recent]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var > 0:
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
            last = ys[-1]
            if slope > 0 and limit > last:
                days_left = (limit - last) / slope
            elif limit <= last:
                days_left = 0.0
    return Trend(points, limit, slope, days_left)


def vm_samples(vm, *, now: datetime, days: int = 30):
    return list(UsageSample.objects.filter(vm=vm, at__gte=now - timedelta(days=days)).order_by("at"))


def _pool_sample_rows(shape, p):
    rows = UsageSample.objects.filter(host_id=p["host"], vm__isnull=True, pool=p["pool"], at__gte=p["since"])
    return rows.order_by("at").values()


_POOL_SAMPLES_READ = Prepared(UsageSample, _pool_sample_rows)


def pool_samples(host, pool: str, *, now: datetime, days: int = 30):
    return _POOL_SAMPLES_READ.objects((), {"host": host.pk, "pool": pool, "since": now - timedelta(days=days)})
