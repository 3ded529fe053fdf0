"""Usage history: samples are averaged into hourly, then daily ones as they age; trends
are projected with a least-squares line."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from ..models import UsageSample

R = UsageSample.Resolution


def _floor(at: datetime, resolution: str) -> datetime:
    at = at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if resolution == R.DAY else at


def samples_compact(now: datetime) -> int:
    """Average raw samples older than STORAGE_SAMPLE_RAW_HOURS into hourly ones and hourly
    ones older than STORAGE_SAMPLE_HOURLY_DAYS into daily ones; drop the oldest. A constant
    number of queries per run."""
    made = 0
    steps = [
        (R.RAW, R.HOUR, timedelta(hours=settings.STORAGE_SAMPLE_RAW_HOURS)),
        (R.HOUR, R.DAY, timedelta(days=settings.STORAGE_SAMPLE_HOURLY_DAYS)),
    ]
    for source, dest, age in steps:
        cutoff = _floor(now - age, dest)
        old = UsageSample.objects.filter(resolution=source, at__lt=cutoff)
        groups: dict[tuple, list] = defaultdict(list)
        for host_id, vm_id, pool, at, alloc, prov, limit in old.values_list(
            "host_id", "vm_id", "pool", "at", "allocation", "provisioned", "limit"
        ):
            groups[(host_id, vm_id, pool, _floor(at, dest))].append((alloc, prov, limit))
        if not groups:
            continue
        rows = [
            UsageSample(
                host_id=host_id,
                vm_id=vm_id,
                pool=pool,
                at=bucket,
                allocation=sum(v[0] for v in values) // len(values),
                provisioned=sum(v[1] for v in values) // len(values),
                limit=values[-1][2],
                resolution=dest,
            )
            for (host_id, vm_id, pool, bucket), values in groups.items()
        ]
        with transaction.atomic():
            old.delete()
            UsageSample.objects.bulk_create(rows, batch_size=2000)
        made += len(rows)
    UsageSample.objects.filter(at__lt=now - timedelta(days=settings.STORAGE_SAMPLE_KEEP_DAYS)).delete()
    return made


@dataclass(frozen=True)
class Trend:
    points: list[tuple[datetime, int]]
    limit: int
    bytes_per_day: float | None
    days_left: float | None
    polyline: str = ""
    limit_y: float = 0.0
    last_xy: tuple[float, float] = (0.0, 0.0)


CHART_W, CHART_H = 600, 150


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
    polyline, limit_y, last_xy = "", 0.0, (0.0, 0.0)
    if points:
        t0, t1 = points[0][0], points[-1][0]
        span = max((t1 - t0).total_seconds(), 1.0)
        top = max(max(v for _, v in points), limit, 1)
        coords = [(CHART_W * (at - t0).total_seconds() / span, CHART_H - CHART_H * v / top) for at, v in points]
        polyline = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        limit_y = CHART_H - CHART_H * limit / top
        last_xy = (round(coords[-1][0], 1), round(coords[-1][1], 1))
    return Trend(points, limit, slope, days_left, polyline, limit_y, last_xy)


def vm_samples(vm, *, now: datetime, days: int = 30):
    return list(UsageSample.objects.filter(vm=vm, at__gte=now - timedelta(days=days)).order_by("at"))


def pool_samples(host, pool: str, *, now: datetime, days: int = 30):
    return list(
        UsageSample.objects.filter(host=host, vm__isnull=True, pool=pool, at__gte=now - timedelta(days=days)).order_by(
            "at"
        )
    )
