"""The access report with 500 users (1 to 3 role assignments each, their activity summaries,
training acknowledgements) over 300 VMs of which some are encrypted or quarantined, and, to
show that the report's cost does not follow the size of the audit log, 1,000,000 audit events
written straight into the table (INSERT ... SELECT; `--scale` shrinks it).

- ratio: the report's whole database read through the portal's selector (users with their
  summaries, every assignment with its host and VM, the quarantined and encrypted VMs, the
  training counts) and the rows it builds, against hand-written SQL reading the same rows in
  the same run, interleaved (target <= 3);
- the whole request (`reviews:report`, middleware, session, permission, template) in ms, p50
  and p95, with its number of SQL statements, and that number again with a tenth of the
  users: it must be the same (constant query count, no per-user query).
On SQLite the times are this process's CPU time, on PostgreSQL wall time (as bench_pages).
Everything lives in the benchmark's throwaway database."""

from __future__ import annotations

import statistics
import time
import uuid

from django.db import connection
from django.test import Client
from django.utils import timezone

USERS = 500
VMS = 300
EVENTS = 1_000_000
ROUNDS = 30

_BARE = [
    """SELECT u.id, u.username, u.is_active, u.last_login, u.date_joined, s.events, s.denied, s.failed,
              s.last_action_at, s.last_action
       FROM auth_user u LEFT JOIN reviews_useractivitysummary s ON s.user_id = u.id ORDER BY u.username""",
    """SELECT a.user_id, a.role, a.scope, a.zone, a.host_id, h.name, a.vm_id, v.name
       FROM accounts_roleassignment a LEFT JOIN core_host h ON h.id = a.host_id
       LEFT JOIN vms_virtualmachine v ON v.id = a.vm_id ORDER BY a.role, a.scope, a.id""",
    """SELECT DISTINCT v.host_id, v.zone, q.vm_id FROM network_quarantine q
       JOIN vms_virtualmachine v ON v.id = q.vm_id WHERE q.released_at IS NULL""",
    """SELECT DISTINCT v.host_id, v.zone, d.vm_id FROM encryption_encrypteddisk d
       JOIN vms_virtualmachine v ON v.id = d.vm_id""",
    """SELECT user_id, COUNT(*) FROM monitoring_trainingacknowledgement GROUP BY user_id""",
]


def _clock():
    return time.process_time if connection.vendor == "sqlite" else time.perf_counter


def _timed(fn) -> float:
    clock = _clock()
    t = clock()
    fn()
    return clock() - t


def _ms(times, q: float) -> str:
    ordered = sorted(times)
    return f"{ordered[int(q * (len(ordered) - 1))] * 1000:.1f}"


def _bare():
    with connection.cursor() as cur:
        rows = []
        for sql in _BARE:
            cur.execute(sql)
            rows.append(cur.fetchall())
        return rows


def _insert_events(n: int) -> float:
    """n audit events in one statement (the table's size only: they bypass record(), so the
    chain and the summaries do not include them)."""
    t = time.perf_counter()
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(
                """INSERT INTO audit_auditevent (created_at, actor_id, actor_name, request_id, action, target_type,
                   target_id, target_name, params, outcome, error, prev_hash, hash)
                   SELECT now() - (g || ' seconds')::interval, NULL, 'bench', '', 'vms.vm.start', 'vm', '',
                   'bench-vm', '{}', 'success', '', '', md5(g::text) || md5((g + 1)::text)
                   FROM generate_series(1, %s) g""",
                [n],
            )
        else:
            cur.execute(
                """WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < %s)
                   INSERT INTO audit_auditevent (created_at, actor_id, actor_name, request_id, action, target_type,
                   target_id, target_name, params, outcome, error, prev_hash, hash)
                   SELECT datetime('now', '-' || i || ' seconds'), NULL, 'bench', '', 'vms.vm.start', 'vm', '',
                   'bench-vm', '{}', 'success', '', '', printf('%%064d', i) FROM g""",
                [n],
            )
    return time.perf_counter() - t


def run(args) -> dict:
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Role, RoleAssignment
    from apps.core.models import Host
    from apps.encryption.models import EncryptedDisk
    from apps.monitoring.models import TrainingAcknowledgement
    from apps.network.models import Quarantine
    from apps.reviews import selectors
    from apps.reviews.models import UserActivitySummary
    from apps.vms.models import VirtualMachine

    User = get_user_model()
    n_users = max(20, int(USERS * args.scale))
    n_events = int(EVENTS * args.scale)
    tag = uuid.uuid4().hex[:6]
    now = timezone.now()
    hosts = [Host.objects.create(name=f"bench-rev-{tag}-{i}", uri="test:///default") for i in range(2)]
    vms = VirtualMachine.objects.bulk_create(
        VirtualMachine(host=hosts[i % 2], uuid=uuid.uuid4(), name=f"vm-{i:04d}", zone=f"zone-{i % 10}")
        for i in range(VMS)
    )
    for vm in vms[:20]:
        EncryptedDisk.objects.create(host=vm.host, vm=vm, vm_uuid=vm.uuid, path=f"/bench/{vm.name}", key_id=vm.name)
    for vm in vms[20:25]:
        Quarantine.objects.create(vm=vm, incident_id=f"INC-{tag}-{vm.name}", actor_name="bench")
    auditor = User.objects.create_user(f"bench-auditor-{tag}", password="bench-password-123")
    RoleAssignment.objects.create(user=auditor, role=Role.AUDITOR, scope="global")

    def add_users(start: int, stop: int) -> None:
        users = User.objects.bulk_create(
            User(username=f"bench-{tag}-{i:04d}", last_login=now if i % 3 else None, is_active=i % 17 != 0)
            for i in range(start, stop)
        )
        grants = []
        for i, u in enumerate(users, start):
            grants.append(RoleAssignment(user=u, role=Role.VIEWER if i % 4 else Role.OPERATOR, scope="zone",
                                         zone=f"zone-{i % 10}"))  # fmt: skip
            if i % 2:
                grants.append(RoleAssignment(user=u, role=Role.OPERATOR, scope="vm", vm=vms[i % VMS]))
            if i % 25 == 0:
                grants.append(RoleAssignment(user=u, role=Role.ADMIN, scope="global"))
        RoleAssignment.objects.bulk_create(grants)
        UserActivitySummary.objects.bulk_create(
            UserActivitySummary(user=u, events=i * 7, denied=i % 9, failed=i % 4, last_event_at=now,
                                last_action_at=now, last_action="vms.vm.start")  # fmt: skip
            for i, u in enumerate(users)
        )
        TrainingAcknowledgement.objects.bulk_create(
            TrainingAcknowledgement(user=u, item="least-privilege", acknowledged_at=now) for u in users[::5]
        )

    client = Client(HTTP_HOST="localhost")
    client.force_login(auditor)
    url = "/access/"

    def request():
        response = client.get(url)
        assert response.status_code == 200, response.status_code
        return response

    def count_queries() -> int:
        statements = []
        with connection.execute_wrapper(lambda ex, sql, *a: statements.append(sql) or ex(sql, *a)):
            request()
        return len(statements)

    add_users(0, n_users // 10)
    request()
    queries_small = count_queries()
    add_users(n_users // 10, n_users)
    inserted = _insert_events(n_events) if n_events else 0.0

    portal = lambda: selectors.access_report(auditor)  # noqa: E731
    rows = portal()
    assert len(rows) == n_users + 1
    bare_rows = _bare()
    assert len(bare_rows[0]) == len(rows)
    portal(), _bare()  # warm
    b, p = [], []
    for _ in range(ROUNDS):
        b.append(_timed(_bare))
        p.append(_timed(portal))
    ratio = statistics.median(p) / statistics.median(b)
    request()
    queries_large = count_queries()
    times = sorted(_timed(request) for _ in range(ROUNDS))
    p50, p95 = statistics.median(times), times[int(0.95 * (len(times) - 1))]
    flagged = sum(bool(r.flags) for r in rows)
    return {
        "name": f"access report, {n_users} users",
        "target": "<= 3",
        "ratio": ratio,
        "read": f"selector p50 {_ms(p, 0.5)} ms, p95 {_ms(p, 0.95)} ms vs bare SQL p50 {_ms(b, 0.5)} ms, "
        f"p95 {_ms(b, 0.95)} ms",
        "request": f"whole page p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms",
        "queries": f"{queries_large} with {n_users} users, {queries_small} with {n_users // 10} (constant: "
        f"{queries_large == queries_small})",
        "audit events in the table": f"{n_events} (inserted in {inserted:.1f} s; the report reads none of them)",
        "flagged users": flagged,
        "timed by": f"{connection.vendor}, {'CPU' if _clock() is time.process_time else 'wall'} time",
    }
