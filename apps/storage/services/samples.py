"""Usage history housekeeping: samples are averaged into hourly, then daily ones as they
age (the trends read from them are in apps/storage/trends.py)."""

from __future__ import annotations

from collections import defaultdict
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
