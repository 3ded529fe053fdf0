"""Audit chain verification at scale: the full walk over EVENTS keyed events, and the
incremental run (the beat job: checkpoint, new events, head, anchor, checkpoint and anchor
written) over the last 1,000, each against the bare work for the same rows in the same run:
one SQL read of those rows (a plain cursor, no ORM) and the HMAC of each in plain Python.

Target: the full walk at most 1.5x its bare read + HMAC; the incremental run's time does not
grow with the log (it is reported beside the full walk) and stays within 3x its bare work
(it also reads the checkpoint, head and anchor and writes the checkpoint, the anchor file
and its own audit event). The events are written with bulk inserts (the chain computed
here, as record() would), on the throwaway database of tests/bench/run.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

EVENTS = 1_000_000
INCREMENT = 1_000
ROUNDS = 5
BATCH = 5_000
COLUMNS = (
    "created_at", "actor_id", "actor_name", "source_ip", "request_id", "action", "target_type",
    "target_id", "target_name", "params", "outcome", "error", "job_id",
)  # fmt: skip


def _append(n: int, start: int) -> None:
    """Append n keyed events after the current head, as record() would link them."""
    from apps.audit import chain
    from apps.audit.models import AuditChainHead, AuditEvent

    key = chain.chain_key(may_create=True)
    head, _ = AuditChainHead.objects.get_or_create(id=1, defaults={"last_hash": chain.GENESIS})
    prev, count = head.last_hash, head.count
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for offset in range(0, n, BATCH):
        rows = []
        for i in range(start + offset, start + min(offset + BATCH, n)):
            event = AuditEvent(
                created_at=base + timedelta(seconds=i, microseconds=i % 997),
                actor_id=i % 500 + 1, actor_name=f"user{i % 500:03d}", source_ip="192.0.2.10",
                request_id=f"req-{i:08d}", action=("vms.vm.start", "storage.quota.set", "auth.login")[i % 3],
                target_type="virtualmachine", target_id=str(i % 2000), target_name=f"vm-{i % 2000:04d}",
                params={"n": i, "size_gib": i % 64}, outcome="success" if i % 7 else "denied", error="",
                job_id=None, prev_hash=prev,
            )  # fmt: skip
            event.hash = chain.link(key, prev, chain.event_fields(event))
            prev = event.hash
            rows.append(event)
        AuditEvent.objects.bulk_create(rows)
        count += len(rows)
    AuditChainHead.objects.filter(id=1).update(last_hash=prev, count=count)


def _bare(after_id: int) -> tuple[int, float]:
    """The same rows read with one plain cursor, each HMAC computed in plain Python."""
    from apps.audit import chain

    key = chain.chain_key()
    started = time.perf_counter()
    n = 0
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"SELECT id, prev_hash, hash, {', '.join(COLUMNS)} "  # noqa: S608  (constant column names)
            "FROM audit_auditevent WHERE id > %s ORDER BY id",
            [after_id],
        )
        while rows := cur.fetchmany(BATCH):
            for row in rows:
                fields = dict(zip(COLUMNS, row[3:], strict=True))
                created = fields["created_at"]
                if isinstance(created, str):  # SQLite's raw cursor returns text
                    created = datetime.fromisoformat(created).replace(tzinfo=UTC)
                fields["created_at"] = created.isoformat()
                if isinstance(fields["params"], str):
                    fields["params"] = json.loads(fields["params"])
                body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
                hmac.new(key, (row[1] + body).encode(), hashlib.sha256).hexdigest()
                n += 1
    return n, time.perf_counter() - started


def run(args) -> dict:
    from apps.audit import chain
    from apps.audit.models import AuditChainCheckpoint, AuditEvent

    settings.AUDIT_ANCHOR_DIR = str(Path(settings.VAR_DIR) / "anchors")  # the run's temporary directory
    events = max(INCREMENT, int(EVENTS * args.scale))
    t = time.perf_counter()
    _append(events, 0)
    load_s = time.perf_counter() - t
    with connection.cursor() as cur:  # the planner's statistics, as autovacuum would leave them after a bulk load
        cur.execute("ANALYZE audit_auditevent")

    t = time.perf_counter()
    full = chain.verify_full()
    full_s = time.perf_counter() - t
    assert full.intact and full.checked == events, full
    bare_n, bare_s = _bare(0)
    assert bare_n == events

    chain.verify_incremental()  # the checkpoint at the newest event
    incremental, incremental_bare, queries = [], [], []
    appended = events
    for _ in range(ROUNDS):
        after = AuditChainCheckpoint.objects.get(id=1).last_id
        _append(INCREMENT, appended)
        appended += INCREMENT
        with CaptureQueriesContext(connection) as ctx:
            t = time.perf_counter()
            result, info = chain.verify_incremental()
            incremental.append(time.perf_counter() - t)
        queries.append(len(ctx.captured_queries))
        assert result.intact and info["checked"] == INCREMENT, (result, info)
        incremental_bare.append(_bare(after)[1])
    inc, inc_bare = statistics.median(incremental), statistics.median(incremental_bare)
    total = AuditEvent.objects.count()
    return {
        "name": f"audit chain verify, {events:,} events",
        "target": "<= 1.5",
        "ratio": full_s / bare_s,
        "database": connection.vendor,
        "load (bulk insert, s)": round(load_s, 1),
        "full walk (s)": round(full_s, 2),
        "bare SQL read + HMAC, same rows (s)": round(bare_s, 2),
        "full walk (events/s)": round(events / full_s),
        f"incremental over the last {INCREMENT:,} (median s, max s)": (
            round(inc, 4), round(sorted(incremental)[-1], 4)),
        f"bare read + HMAC of those {INCREMENT:,} (median s)": round(inc_bare, 4),
        "incremental ratio (target <= 3)": round(inc / inc_bare, 2),
        "incremental / full walk": round(inc / full_s, 5),
        "SQL queries per incremental run": sorted(set(queries)),
        "events in the log at the end": total,
    }  # fmt: skip
