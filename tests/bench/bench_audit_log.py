"""The audit log at 1,000,000 events and 500 users: the first page, a page filtered by actor
and one by action prefix, a page in the middle reached by cursor, the oldest page, an event's
detail, and the export of 100,000 rows (CSV and JSON Lines), each against the bare SQL that
reads the same rows, in the same run.

- pages: the portal's read (the user and their role assignments, then the selector) against
  hand-written SQL for the same (the same auth reads, then the keyset query with a row
  comparison), the two run interleaved; p50, p95 and the ratio of the p50s (target <= 3),
  the number of statements each side sends, and the whole request in-process beside it;
- export: every row of a filter matching 100,000 events, streamed as the view streams it,
  against fetching the same rows with a bare cursor; rows per second (target >= 50,000) and
  the export's peak Python memory (tracemalloc) at 10,000 and at 100,000 rows, which must
  not grow with the rows.

The events are written by one INSERT ... SELECT over a generated series (chain fields filled
with unique, plausible values: this benchmark reads the log, it does not verify the chain).
Everything it writes (users, jobs, events) is removed at the end; on PostgreSQL the run's
database is dropped anyway."""

from __future__ import annotations

# ruff: noqa: S608  (the SQL is this file's own constants; values go as parameters)
import statistics
import time
import tracemalloc
import uuid
from contextlib import contextmanager
from datetime import timedelta

from django.db import connection
from django.db.models import Max, Min
from django.test import Client
from django.utils import timezone

EVENTS = 1_000_000
USERS = 500
JOBS = 1000
EXPORT_ROWS = 100_000
ROUNDS = 60
ACTIONS = ("vms.vm.start", "vms.vm.shutdown", "storage.quota.set", "encryption.disk.unlock", "network.vm.quarantine",
           "accounts.login", "backups.run.start", "vms.snapshot.create", "encryption.kek.rotate", "vms.vm.suspend",
           "storage.volume.create", "network.rule.add", "vms.vm.resume")  # fmt: skip
OUTCOMES = ("success", "success", "success", "failed", "denied", "requested", "success")

_COLUMNS = ("id, created_at, actor_id, actor_name, source_ip, request_id, action, target_type, target_id, "
            "target_name, params, outcome, error, job_id")  # fmt: skip
_AUTH_SQL = ("SELECT id, username, is_active, is_superuser FROM auth_user WHERE id = %s",
             "SELECT role, scope, host_id, zone, vm_id FROM accounts_roleassignment WHERE user_id = %s")  # fmt: skip


def _insert_events_sql(vendor: str) -> str:
    """Row g of n: one event a second up to now, 500 actors, a request id per 3 events, a job
    on every 10th event, 5,000 VM targets, and the actions and outcomes above in turn."""
    actions = ",".join(f"'{a}'" for a in ACTIONS)
    outcomes = ",".join(f"'{o}'" for o in OUTCOMES)
    if vendor == "postgresql":
        return f"""
INSERT INTO audit_auditevent (created_at, actor_id, actor_name, source_ip, request_id, action, target_type, target_id,
                              target_name, params, outcome, error, job_id, prev_hash, hash)
SELECT %(now)s::timestamptz - make_interval(secs => %(n)s - g),
       %(user0)s + g %% {USERS}, 'bench-u' || lpad((g %% {USERS})::text, 3, '0'),
       ('192.0.2.' || (g %% 254 + 1))::inet, md5((g / 3)::text),
       (ARRAY[{actions}])[g %% {len(ACTIONS)} + 1], 'virtualmachine', (g %% 5000)::text,
       'vm-' || lpad((g %% 5000)::text, 5, '0'), jsonb_build_object('n', g, 'mode', 'fast'),
       (ARRAY[{outcomes}])[g %% {len(OUTCOMES)} + 1], '',
       CASE WHEN g %% 10 = 0 THEN %(job0)s + (g / 10) %% {JOBS} END,
       md5((g - 1)::text) || md5((g - 1)::text || '-'), md5(g::text) || md5(g::text || '-')
FROM generate_series(1, %(n)s) AS g
"""
    # SQLite: a recursive series; it has no md5, so the hashes are the row number in hex
    return f"""
WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < %(n)s)
INSERT INTO audit_auditevent (created_at, actor_id, actor_name, source_ip, request_id, action, target_type, target_id,
                              target_name, params, outcome, error, job_id, prev_hash, hash)
SELECT strftime('%%Y-%%m-%%d %%H:%%M:%%S', %(now)s, '-' || (%(n)s - g) || ' seconds'),
       %(user0)s + g %% {USERS}, 'bench-u' || substr('000' || (g %% {USERS}), -3),
       '192.0.2.' || (g %% 254 + 1), printf('%%032x', g / 3),
       json_extract('{_json_array_sql(ACTIONS)}', '$[' || (g %% {len(ACTIONS)}) || ']'), 'virtualmachine',
       CAST(g %% 5000 AS TEXT), 'vm-' || substr('00000' || (g %% 5000), -5), json_object('n', g, 'mode', 'fast'),
       json_extract('{_json_array_sql(OUTCOMES)}', '$[' || (g %% {len(OUTCOMES)}) || ']'), '',
       CASE WHEN g %% 10 = 0 THEN %(job0)s + (g / 10) %% {JOBS} END,
       printf('%%064x', g - 1), printf('%%064x', g)
FROM s
"""


def _json_array_sql(values) -> str:
    return "[" + ",".join(f'"{v}"' for v in values) + "]"


def _param(when):
    """A time as a bare SQL parameter: SQLite compares Django's stored text (naive UTC)."""
    return when if connection.vendor == "postgresql" else str(when.replace(tzinfo=None))


def _clock():
    return time.process_time if connection.vendor == "sqlite" else time.perf_counter


def _timed(fn) -> float:
    clock = _clock()
    t = clock()
    fn()
    return clock() - t


def _p95(values) -> float:
    return statistics.quantiles(values, n=20)[-1]


def _compare(bare, portal, rounds: int = ROUNDS):
    """Both alternately (other load on the machine falls on both alike): p50 and p95 each,
    and the ratio of the fastest runs (as timeit reports: the runs least disturbed by the
    rest of a shared machine)."""
    bare(), portal()  # warm
    b, p = [], []
    for _ in range(rounds):
        b.append(_timed(bare))
        p.append(_timed(portal))
    _compare.fastest_ratio = min(p) / min(b)
    return statistics.median(b), _p95(b), statistics.median(p), _p95(p)


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]  # noqa: SIM115
    except OSError:
        return "?"


@contextmanager
def _counting():
    statements: list[str] = []
    with connection.execute_wrapper(lambda execute, sql, *a: statements.append(sql) or execute(sql, *a)):
        yield statements


def _sql(statements):
    with connection.cursor() as cur:
        rows = None
        for sql, params in statements:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return rows


def run(args) -> dict:
    from django.contrib.auth import get_user_model

    from apps.accounts.models import RoleAssignment
    from apps.audit import exports, selectors
    from apps.audit.forms import sign_cursor
    from apps.audit.models import AuditEvent
    from apps.core.models import Job

    vendor = connection.vendor
    n = max(2000, int(EVENTS * args.scale))
    export_rows = min(n // 2, max(1000, int(EXPORT_ROWS * args.scale)))
    tag = uuid.uuid4().hex[:6]
    User = get_user_model()
    User.objects.bulk_create(User(username=f"bench-u{i:03d}", password="!") for i in range(USERS))
    user_ids = sorted(User.objects.filter(username__startswith="bench-u").values_list("id", flat=True))
    assert user_ids[-1] - user_ids[0] == USERS - 1, "the benchmark's users are not numbered in a row"
    Job.objects.bulk_create(Job(kind="vms.vm.start", target_type="virtualmachine", target_name=f"vm-{i:05d}",
                                actor_name="bench", state="succeeded", progress=100,
                                log=[{"at": "00:00:00", "msg": f"step {k}"} for k in range(5)])
                            for i in range(JOBS))  # fmt: skip
    job_ids = sorted(Job.objects.filter(actor_name="bench").values_list("id", flat=True))
    assert job_ids[-1] - job_ids[0] == JOBS - 1
    now = timezone.now().replace(microsecond=0)
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(_insert_events_sql(vendor), {"n": n, "user0": user_ids[0], "job0": job_ids[0], "now": _param(now)})
        cur.execute("ANALYZE")
    inserted = time.perf_counter() - t0
    ours = AuditEvent.objects.filter(created_at__gt=now - timedelta(seconds=n + 1), actor_name__startswith="bench-u")
    first_event, last_event = ours.aggregate(a=Min("id"), b=Max("id")).values()
    assert last_event - first_event == n - 1, "the benchmark's events are not numbered in a row"
    auditor = User.objects.create_user(f"bench-auditor-{tag}", password=tag * 3)
    RoleAssignment.objects.create(user=auditor, role="auditor", scope="global")
    client = Client(HTTP_HOST="localhost")
    client.force_login(auditor)
    results: dict[str, str] = {}
    ratios: dict[str, float] = {}

    from django.contrib.auth import BACKEND_SESSION_KEY, load_backend

    backend = load_backend(client.session[BACKEND_SESSION_KEY])  # the one that signed the auditor in

    def fresh_user():  # as a request's session loads it (no cached role assignments)
        return backend.get_user(auditor.pk)

    signed_in = fresh_user()
    from apps.accounts.permissions import has_perm

    assert has_perm(signed_in, "audit.view")  # its role assignments now cached, as after the view's own check

    auth = [(sql, [auditor.pk]) for sql in _AUTH_SQL]
    order_desc = "ORDER BY created_at DESC, id DESC LIMIT 51"

    def page(label, where, params, portal, url_query):
        bare_statements = [*auth, (f"SELECT {_COLUMNS} FROM audit_auditevent {where} {order_desc}", params)]
        if "ASC" in where:  # the oldest page: its own order
            bare_statements[-1] = (f"SELECT {_COLUMNS} FROM audit_auditevent ORDER BY created_at, id LIMIT 51", [])
        expected = [r[0] for r in _sql(bare_statements)][:50]
        got = [e.pk for e in portal().events]
        assert sorted(got, reverse=True) == sorted(expected, reverse=True), (label, got[:3], expected[:3])
        b50, b95, p50, p95 = _compare(lambda: _sql(bare_statements), portal)
        fastest = _compare.fastest_ratio
        # the page's own read alone (user and assignments already loaded) against its one statement
        o_b50, _ob95, o_p50, _op95 = _compare(lambda: _sql(bare_statements[-1:]), lambda: portal(signed_in))
        with _counting() as sent:
            portal()
        with _counting() as counted:
            response = client.get("/audit/", url_query)
        assert response.status_code == 200, (label, response.status_code)
        request = statistics.median(_timed(lambda: client.get("/audit/", url_query)) for _ in range(10))
        ratios[label] = p50 / b50
        results[label] = (f"p50 {p50 * 1000:.2f} ms (p95 {p95 * 1000:.2f}) vs bare SQL p50 {b50 * 1000:.2f} ms "
                          f"(p95 {b95 * 1000:.2f}) = {p50 / b50:.2f}x (fastest runs {fastest:.2f}x); "
                          f"the audit read alone {o_p50 * 1000:.2f} ms vs its statement {o_b50 * 1000:.2f} ms = "
                          f"{o_p50 / o_b50:.2f}x; {len(sent)} statements vs "
                          f"{len(bare_statements)} bare; whole request {request * 1000:.1f} ms, "
                          f"{len(counted)} queries")  # fmt: skip

    def portal_page(filters=None, **kw):
        def read(user=None):
            return selectors.events_page(user or fresh_user(), filters or selectors.EventFilters(), size=50, **kw)

        return read

    try:
        page("first page", "", [], portal_page(), {})
        page("filtered: actor", "WHERE actor_name = %s", ["bench-u123"],
             portal_page(selectors.EventFilters(actor="bench-u123")), {"actor": "bench-u123"})  # fmt: skip
        page("filtered: action prefix encryption.", "WHERE action LIKE %s", ["encryption.%"],
             portal_page(selectors.EventFilters(action="encryption.")), {"action": "encryption."})  # fmt: skip
        middle = AuditEvent.objects.filter(id=first_event + n // 2).values_list("created_at", "id").get()
        cursor = selectors.Cursor(middle[0], middle[1], "older")
        page("middle page (cursor)", "WHERE (created_at, id) < (%s, %s)", [_param(middle[0]), middle[1]],
             portal_page(cursor=cursor), {"cursor": sign_cursor(cursor, selectors.EventFilters())})  # fmt: skip
        page("oldest page", "ASC", [], portal_page(oldest=True), {"end": "oldest"})

        # an event's detail: the event, its job, the job's other events, the request's other events
        event = AuditEvent.objects.filter(id__gte=first_event + n // 2, job_id__isnull=False).order_by("id").first()
        pk = event.pk  # an event with a job, in the newer half
        detail_bare = [*auth, ("SELECT * FROM audit_auditevent WHERE id = %s", [pk]),
                       ("SELECT j.*, h.name FROM core_job j LEFT JOIN core_host h ON h.id = j.host_id WHERE j.id = %s",
                        [event.job_id]),
                       (f"SELECT {_COLUMNS} FROM audit_auditevent WHERE (job_id = %s OR request_id = %s) AND id <> %s "
                        "ORDER BY created_at, id LIMIT 100", [event.job_id, event.request_id, pk])]  # fmt: skip

        def detail():
            return selectors.event_detail(fresh_user(), pk)

        d = detail()
        around = _sql(detail_bare[-1:])
        assert d.job is not None and len(d.same_job) == sum(1 for r in around if r[-1] == event.job_id)
        assert len(d.same_request) == sum(1 for r in around if r[5] == event.request_id) > 0
        b50, b95, p50, p95 = _compare(lambda: _sql(detail_bare), detail)
        with _counting() as sent:
            detail()
        with _counting() as counted:
            assert client.get(f"/audit/events/{pk}/").status_code == 200
        ratios["event detail"] = p50 / b50
        results["event detail"] = (f"p50 {p50 * 1000:.2f} ms (p95 {p95 * 1000:.2f}) vs bare SQL p50 "
                                   f"{b50 * 1000:.2f} ms (p95 {b95 * 1000:.2f}) = {p50 / b50:.2f}x "
                                   f"(fastest runs {_compare.fastest_ratio:.2f}x); "
                                   f"{len(sent)} statements vs {len(detail_bare)} bare; whole request "
                                   f"{len(counted)} queries")  # fmt: skip

        # export: the newest `export_rows` events by a time range
        since = AuditEvent.objects.filter(id=first_event + n - export_rows).values_list("created_at", flat=True).get()
        # (until: the newest benchmark event; the run's own sign-in and exports come after it)
        filters = selectors.EventFilters(since=since, until=now)
        bare_export = (f"SELECT {_COLUMNS} FROM audit_auditevent WHERE created_at >= %s AND created_at <= %s "
                       "ORDER BY created_at DESC, id DESC")  # fmt: skip

        def bare_rows():
            with connection.cursor() as cur:
                cur.execute(bare_export, [_param(since), _param(now)])
                count = 0
                while rows := cur.fetchmany(2000):
                    count += len(rows)
            return count

        def export(fmt, flt=filters):
            size = 0
            lines = 0
            for text in exports.events_export(actor=fresh_user(), filters=flt, fmt=fmt):
                size += len(text)
                lines += text.count("\n")
            return lines

        assert bare_rows() == export_rows, (bare_rows(), export_rows)
        assert export("jsonl") == export_rows
        for fmt in ("csv", "jsonl"):
            bt, pt, cpu = [], [], []
            for _ in range(3):
                bt.append(_timed(bare_rows))
                c = time.process_time()
                pt.append(_timed(lambda fmt=fmt: export(fmt)))
                cpu.append(time.process_time() - c)
            b, p, c = statistics.median(bt), statistics.median(pt), statistics.median(cpu)
            ratios[f"export {fmt}"] = p / b
            results[f"export {fmt}, {export_rows} rows"] = (
                f"{export_rows / p:,.0f} rows/s ({p:.2f} s; this process's CPU alone {export_rows / c:,.0f} rows/s) "
                f"vs bare SQL fetch {export_rows / b:,.0f} rows/s ({b:.2f} s) = {p / b:.2f}x"
            )
        peaks = []
        for rows in (export_rows // 10, export_rows):
            start = AuditEvent.objects.filter(id=first_event + n - rows).values_list("created_at", flat=True).get()
            tracemalloc.start()
            export("csv", selectors.EventFilters(since=start, until=now))
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        results["export peak memory"] = (f"{peaks[0] / 2**20:.1f} MiB at {export_rows // 10} rows, "
                                         f"{peaks[1] / 2**20:.1f} MiB at {export_rows} rows")  # fmt: skip
        # the whole request, streamed as a client would read it
        t = time.perf_counter()
        response = client.get("/audit/export/", {"since": since.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "until": now.strftime("%Y-%m-%d %H:%M:%S"), "format": "csv"})
        got = sum(chunk.count(b"\n") for chunk in response.streaming_content) - 1
        took = time.perf_counter() - t
        results["export csv, whole request"] = f"{got} rows in {took:.2f} s = {got / took:,.0f} rows/s"
    finally:
        _remove(first_event, user_ids, job_ids, auditor)
    worst_page = max(v for k, v in ratios.items() if not k.startswith("export"))
    out = {"name": f"audit log, {n:,} events (pages, DB)", "target": "<= 3", "ratio": worst_page,
           "ratio is": "p50 of the page's whole read (user, role assignments, the page) over the same by bare SQL",
           "timed by": f"{vendor}, {'CPU' if _clock() is time.process_time else 'wall'} time",
           "insert of the events": f"{inserted:.1f} s", "load average at the end": _load()}  # fmt: skip
    out.update(results)
    return out


def _remove(first_event, user_ids, job_ids, auditor) -> None:
    """Remove what the run wrote. The audit table refuses DELETE (its trigger): the benchmark
    lifts the trigger for its own session (PostgreSQL: replication role; SQLite: drops and
    recreates the triggers), as only a database owner could."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import RoleAssignment
    from apps.core.models import Job

    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SET session_replication_role = replica")
            try:
                cur.execute("DELETE FROM audit_auditevent WHERE id >= %s", [first_event])
            finally:
                cur.execute("SET session_replication_role = DEFAULT")
        else:
            cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_auditevent'")
            triggers = cur.fetchall()
            for name, _sql_text in triggers:
                cur.execute(f"DROP TRIGGER {name}")
            try:
                cur.execute("DELETE FROM audit_auditevent WHERE id >= %s", [first_event])
            finally:
                for _name, sql_text in triggers:
                    cur.execute(sql_text)
    RoleAssignment.objects.filter(user=auditor).delete()
    Job.objects.filter(id__in=job_ids).delete()
    get_user_model().objects.filter(id__in=[*user_ids, auditor.pk]).delete()

