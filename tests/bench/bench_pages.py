"""The list pages with 1,000 VMs and 10,000 volumes in the database (the state collector's
rows): the VM list (first page, and a filtered, sorted later page), the dashboard, the
storage overview and a 10,000-volume pool's page, against the bare SQL of what they show,
in the same run.

Two figures per page:
- ratio: the page view's whole database read through the portal's selectors (the user and
  their role assignments, scoping, filters, counts, the rows shown and every other figure
  the page draws: stale-host notices, the change token, quotas and defaults, alerts, usage
  history) against hand-written SQL reading the same, one statement per thing a person
  writing it by hand would ask for (target <= 3). The two sides run interleaved, so load
  from elsewhere on the machine falls on both alike;
- the whole request in-process (middleware, session, permission, template, the navigation's
  alert badge), reported beside it in milliseconds with its number of SQL statements.
Beside the ratio: the statements the portal's read sends, re-run as bare SQL against the same
baseline (its database work alone, without the ORM's building of queries and rows).
On SQLite the times are this process's CPU time (the database works in-process; other load
on a shared machine disturbs CPU time far less than wall time), on PostgreSQL wall time.
Counts libvirt calls at the gateway during the requests (must be 0). Creates its host, VMs
and user in the benchmark's throwaway database and removes them."""

from __future__ import annotations

import statistics
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta

from django.db import connection
from django.test import Client
from django.utils import timezone

VMS = 1000
VOLUMES_PER_VM = 10
ROUNDS = 40

# what any page must read first: the user and their role assignments (the scope)
_AUTH_SQL = ("SELECT id, username, is_active FROM auth_user WHERE id = %s",
             "SELECT role, scope, host_id, zone, vm_id FROM accounts_roleassignment WHERE user_id = %s")  # fmt: skip
# the VM list: hosts of the user's VMs that are stale (the notice), the count, the page
_STALE_SQL = """
SELECT id, name, unreachable_since, collect_error FROM core_host
WHERE id IN (SELECT DISTINCT host_id FROM vms_virtualmachine WHERE present AND host_id = %s)
AND (unreachable_since IS NOT NULL OR collected_at IS NULL)
"""
# the count of matching VMs and their newest change: the pager's total and the change token
_COUNT_SQL = "SELECT COUNT(*), MAX(last_seen) FROM vms_virtualmachine v WHERE v.present AND v.host_id = %s {extra}"
_LIST_SQL = """
SELECT v.id, v.name, v.zone, v.last_state, v.vcpus, v.memory_kib, v.disk_capacity, v.disk_allocation, h.name, u.mode
FROM vms_virtualmachine v JOIN core_host h ON h.id = v.host_id
LEFT JOIN encryption_unlockpolicy u ON u.vm_id = v.id
WHERE v.present AND v.host_id = %s {extra}
ORDER BY {order} LIMIT 50 OFFSET %s
"""
# the dashboard: hosts, VM states, recent jobs on the user's VMs
_HOSTS_SQL = (
    "SELECT id, name, uri, collected_at, unreachable_since, collect_error, security_models FROM core_host ORDER BY name"
)
_STATES_SQL = "SELECT last_state, COUNT(*) FROM vms_virtualmachine WHERE present AND host_id = %s GROUP BY last_state"
_JOBS_SQL = """
SELECT j.id, j.kind, j.state, j.target_name, j.actor_name, j.created_at, j.progress, j.error FROM core_job j
WHERE (j.target_type = 'virtualmachine' AND j.target_id IN
       (SELECT CAST(id AS TEXT) FROM vms_virtualmachine WHERE host_id = %s)) OR j.actor_id = %s
ORDER BY j.created_at DESC, j.id DESC LIMIT 8
"""
# the storage overview: defaults, every host with its pools and their limits, one page of VM quota rows
_DEFAULTS_SQL = "SELECT * FROM storage_storagedefaults WHERE id = 1"
_HOST_POOLS_SQL = """
SELECT h.id, h.name, h.collected_at, h.unreachable_since, h.collect_error, p.*, l.max_overcommit, l.reserve_percent
FROM core_host h LEFT JOIN storage_poolstate p ON p.host_id = h.id
LEFT JOIN storage_poollimit l ON l.host_id = h.id AND l.pool = p.name ORDER BY h.name, p.name
"""
_VM_USAGE_SQL = """
SELECT v.id, v.name, h.name, d.state, d.provisioned, d.allocation,
       q.limit_bytes, q.alert_percent, q.breach_action, q.version, a.level
FROM vms_virtualmachine v JOIN core_host h ON h.id = v.host_id
LEFT JOIN storage_vmdiskstate d ON d.vm_id = v.id
LEFT JOIN storage_vmquota q ON q.vm_id = v.id
LEFT JOIN storage_storagealert a ON a.vm_id = v.id AND a.state = 'open'
WHERE v.present AND v.host_id = %s ORDER BY h.name, v.name LIMIT 50
"""
# a pool's page: its host, the pool and its limits, defaults, a page of volumes with their VM,
# 30 days of usage, its alerts
_POOL_HOST_SQL = "SELECT * FROM core_host WHERE name = %s"
_POOL_SQL = """
SELECT p.*, l.max_overcommit, l.reserve_percent FROM storage_poolstate p
LEFT JOIN storage_poollimit l ON l.host_id = p.host_id AND l.pool = p.name WHERE p.host_id = %s AND p.name = 'big'
"""
_VOLUME_COUNT_SQL = "SELECT COUNT(*) FROM storage_volumestate WHERE host_id = %s AND pool = 'big'"
_VOLUMES_SQL = """
SELECT s.name, s.capacity, s.allocation, v.name FROM storage_volumestate s
LEFT JOIN vms_virtualmachine v ON v.id = s.vm_id
WHERE s.host_id = %s AND s.pool = 'big' ORDER BY s.name LIMIT 100 OFFSET %s
"""
_SAMPLES_SQL = """
SELECT * FROM storage_usagesample WHERE host_id = %s AND vm_id IS NULL AND pool = 'big' AND at >= %s ORDER BY at
"""
_POOL_ALERTS_SQL = """
SELECT * FROM storage_storagealert WHERE host_id = %s AND pool = 'big' AND vm_id IS NULL
ORDER BY raised_at DESC, id DESC LIMIT 10
"""


@contextmanager
def _counting():
    """The SQL statements run meanwhile (a request resets Django's own query log)."""
    statements: list[str] = []
    with connection.execute_wrapper(lambda execute, sql, *a: statements.append(sql) or execute(sql, *a)):
        yield statements


def _clock():
    """CPU time of this process on SQLite, where the database's work runs in-process too (a
    shared, busy machine disturbs it far less than wall time); wall time on PostgreSQL,
    whose work runs in the server."""
    return time.process_time if connection.vendor == "sqlite" else time.perf_counter


def _timed(fn) -> float:
    clock = _clock()
    t = clock()
    fn()
    return clock() - t


def _compare(bare, portal, rounds: int = ROUNDS) -> tuple[float, float, float]:
    """Run both alternately, so other load on the machine falls on both alike: the fastest
    time of each (as timeit reports it: the run least disturbed by the rest of the machine)
    and the ratio of their medians."""
    bare(), portal()  # warm
    b, p = [], []
    for _ in range(rounds):
        b.append(_timed(bare))
        p.append(_timed(portal))
    return min(b), min(p), statistics.median(p) / statistics.median(b)


def _median(fn, rounds: int = ROUNDS) -> float:
    return statistics.median(_timed(fn) for _ in range(rounds))


def _sql(cur, statements):
    """Run (sql, params) pairs, return the last one's rows."""
    rows = None
    for sql, params in statements:
        cur.execute(sql, params)
        rows = cur.fetchall()
    return rows


def run(args) -> dict:
    from django.contrib.auth import BACKEND_SESSION_KEY, get_user_model, load_backend

    from apps.accounts.models import RoleAssignment
    from apps.core import selectors as core_selectors
    from apps.core.gateways.libvirt import connection as libvirt_connection
    from apps.core.models import Host, Job
    from apps.storage import selectors as storage_selectors
    from apps.storage.models import PoolLimit, PoolState, StorageAlert, UsageSample, VmDiskState, VmQuota, VolumeState
    from apps.vms import selectors
    from apps.vms.models import VirtualMachine

    n = max(10, int(VMS * args.scale))
    tag = uuid.uuid4().hex[:6]
    now = timezone.now()
    host = Host.objects.create(name=f"bench-{tag}", uri="test:///default", collected_at=now)
    states = ["running", "shut off", "paused"]
    VirtualMachine.objects.bulk_create(
        VirtualMachine(host=host, uuid=uuid.uuid4(), name=f"vm-{i:05d}", zone=f"z{i % 4}", last_state=states[i % 3],
                       vcpus=1 + i % 4, memory_kib=65536, disk_capacity=(1 + i % 10) << 30,
                       disk_allocation=(i % 100) << 20, last_seen=now)
        for i in range(n)
    )  # fmt: skip
    vms = list(VirtualMachine.objects.filter(host=host).order_by("name"))
    VmDiskState.objects.bulk_create(
        VmDiskState(vm=vm, state=vm.last_state, provisioned=VOLUMES_PER_VM << 30, allocation=1 << 30,
                    collected_at=now) for vm in vms
    )  # fmt: skip
    VmQuota.objects.bulk_create(VmQuota(vm=vm, limit_bytes=(20 + i % 5) << 30) for i, vm in enumerate(vms[::3]))
    StorageAlert.objects.bulk_create(
        StorageAlert(host=host, vm=vm, level="warning", usage=1 << 30, limit=10 << 30, percent=80, raised_at=now,
                     updated_at=now, message=f"{vm.name} over its alert threshold")
        for i, vm in enumerate(vms) if i % 7 == 0
    )  # fmt: skip
    VolumeState.objects.bulk_create(
        (VolumeState(host=host, pool="big", name=f"{vm.name}-{d}.qcow2", path=f"/images/{vm.name}-{d}.qcow2",
                     capacity=1 << 30, allocation=1 << 27, vm=vm) for vm in vms for d in range(VOLUMES_PER_VM)),
        batch_size=2000,
    )  # fmt: skip
    volumes = len(vms) * VOLUMES_PER_VM
    PoolState.objects.create(host=host, name="big", capacity=50 << 40, allocation=1 << 40, available=49 << 40,
                             provisioned=volumes << 30, volume_allocation=volumes << 27, volume_count=volumes,
                             collected_at=now)  # fmt: skip
    PoolLimit.objects.create(host=host, pool="big", max_overcommit=3, reserve_percent=10)
    UsageSample.objects.bulk_create(
        UsageSample(host=host, pool="big", at=now - timedelta(days=d), allocation=(1 << 40) - d * (1 << 30),
                    provisioned=volumes << 30, limit=50 << 40) for d in range(30)
    )  # fmt: skip
    Job.objects.bulk_create(
        Job(kind="vms.vm.start", host=host, target_type="virtualmachine", target_id=str(vm.pk), target_name=vm.name,
            actor_name="bench", state="succeeded", progress=100) for vm in vms[:20]
    )  # fmt: skip
    from apps.storage.models import StorageDefaults
    from apps.storage.quota_rules import defaults_from_settings

    # the defaults row exists once an admin saved the defaults (the page reads it either way)
    StorageDefaults.objects.get_or_create(id=1, defaults=defaults_from_settings())
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("ANALYZE")  # as autovacuum would have by now: plans for these table sizes
    user = get_user_model().objects.create_user(f"bench-{tag}", password=tag * 3)
    RoleAssignment.objects.create(user=user, role="operator", scope="host", host=host)
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    calls: list[str] = []
    real_call = libvirt_connection.call
    libvirt_connection.call = lambda uri, what, fn: calls.append(what) or real_call(uri, what, fn)
    results = {}

    backend = load_backend(client.session[BACKEND_SESSION_KEY])  # the one that signed the user in

    def fresh_user():  # as a request's session loads it (no cached role assignments)
        return backend.get_user(user.pk)

    def measure(label, url, params, bare, portal, check):
        with connection.cursor() as cur:
            expected = bare(cur)
        check(expected, portal())  # the same rows on both sides
        b, p, median_ratio = _compare(lambda: _bare_run(bare), portal)
        sent = []  # the statements the portal's read sends, re-run as they are: its database work alone
        with connection.execute_wrapper(lambda execute, sql, params, *a: sent.append((sql, params)) or
                                        execute(sql, params, *a)):  # fmt: skip
            portal()
        b_sql, p_sql, _m = _compare(lambda: _bare_run(bare), lambda: _bare_run(lambda cur: _sql(cur, sent)))
        with _counting() as counted:
            response = client.get(url, params)
        assert response.status_code == 200, (label, response.status_code, response.get("Location"))
        request = _median(lambda: client.get(url, params))
        results[label] = (b, p, median_ratio, request, len(counted), p_sql / b_sql, len(sent))

    try:
        matching = VirtualMachine.objects.filter(host=host, last_state="running", zone="z1").count()
        second = 2 if matching > 50 else 1  # a later page where there is one
        cases = {
            "VM list, page 1": ({}, "", "h.name, v.name", 0),
            f"VM list, running in z1 by memory, page {second}": (
                {"state": "running", "zone": "z1", "sort": "-memory", "page": str(second)},
                "AND v.last_state = 'running' AND v.zone = 'z1'", "v.memory_kib DESC, h.name DESC, v.name DESC",
                (second - 1) * 50),
        }  # fmt: skip
        for label, (params, extra, order, offset) in cases.items():
            filters = selectors.VmFilters.from_query(params)

            def bare_list(cur, extra=extra, order=order, offset=offset):
                return _sql(cur, [*((sql, [user.pk]) for sql in _AUTH_SQL), (_STALE_SQL, [host.pk]),
                                  (_COUNT_SQL.format(extra=extra), [host.pk]),
                                  (_LIST_SQL.format(extra=extra, order=order), [host.pk, offset])])  # fmt: skip

            def portal_list(filters=filters, params=params):  # the reads of apps.vms.views.vm_list
                return list(selectors.vm_listing(fresh_user(), filters, params.get("page")).page)

            def same_vms(bare_rows, rows):
                assert [r[1] for r in bare_rows] == [vm["name"] for vm in rows]

            measure(label, "/vms/", params, bare_list, portal_list, same_vms)

        def bare_dashboard(cur):
            states = _sql(cur, [*((sql, [user.pk]) for sql in _AUTH_SQL), (_HOSTS_SQL, []), (_STATES_SQL, [host.pk])])
            _sql(cur, [(_JOBS_SQL, [host.pk, user.pk])])
            return states

        def same_states(bare_rows, d):
            assert sorted(bare_rows) == d.states and len(d.jobs) == 8

        measure("dashboard", "/", {}, bare_dashboard, lambda: core_selectors.dashboard_for(fresh_user()), same_states)

        def bare_overview(cur):
            return _sql(cur, [*((sql, [user.pk]) for sql in _AUTH_SQL), (_DEFAULTS_SQL, []), (_HOST_POOLS_SQL, []),
                              ("SELECT COUNT(*) FROM vms_virtualmachine WHERE present AND host_id = %s", [host.pk]),
                              (_VM_USAGE_SQL, [host.pk])])  # fmt: skip

        def same_usage(bare_rows, hosts):
            portal_rows = [r for h in hosts for r in h.vms]
            assert [r[1] for r in bare_rows] == [r.name for r in portal_rows]
            assert [r[10] for r in bare_rows] == [r.alert_level for r in portal_rows]

        measure(f"storage overview ({len(vms)} VMs, page 1)", "/storage/", {}, bare_overview,
                lambda: storage_selectors.overview_page(fresh_user(), "1")[0], same_usage)  # fmt: skip

        middle = max(1, volumes // 200)  # a page in the middle of the pool

        def bare_pool(cur):
            auth = [(sql, [user.pk]) for sql in _AUTH_SQL]
            _sql(cur, [*auth, (_POOL_HOST_SQL, [host.name]), (_POOL_SQL, [host.pk]), (_DEFAULTS_SQL, []),
                       (_VOLUME_COUNT_SQL, [host.pk])])  # fmt: skip
            rows = _sql(cur, [(_VOLUMES_SQL, [host.pk, (middle - 1) * 100])])
            _sql(cur, [(_SAMPLES_SQL, [host.pk, timezone.now() - timedelta(days=30)]), (_POOL_ALERTS_SQL, [host.pk])])
            return rows

        def portal_pool():
            return storage_selectors.pool_detail(fresh_user(), host.name, "big", str(middle))

        def same_volumes(bare_rows, d):
            assert [(r[0], r[3]) for r in bare_rows] == [(v["name"], v["vm_name"]) for v in d.volumes]

        measure(f"pool page ({volumes} volumes, page {middle})", f"/storage/pools/{host.name}/big/",
                {"page": middle}, bare_pool, portal_pool, same_volumes)  # fmt: skip
    finally:
        libvirt_connection.call = real_call
        RoleAssignment.objects.filter(host=host).delete()
        Job.objects.filter(host=host).delete()
        UsageSample.objects.filter(host=host).delete()
        StorageAlert.objects.filter(host=host).delete()
        PoolLimit.objects.filter(host=host).delete()
        VolumeState.objects.filter(host=host).delete()
        PoolState.objects.filter(host=host).delete()
        VirtualMachine.objects.filter(host=host).delete()  # and their VmDiskState and VmQuota rows
        user.delete()
        host.delete()
    worst = max(p / b for b, p, *_rest in results.values())
    out = {"name": f"list pages, {n} VMs (DB only)", "target": "<= 3", "ratio": worst, "libvirt calls": len(calls),
           "timed by": f"{connection.vendor}, {'CPU' if _clock() is time.process_time else 'wall'} time"}
    for label, (b, p, m, r, q, sql_ratio, sent) in results.items():
        out[label] = (f"read {p * 1000:.2f} ms vs bare SQL {b * 1000:.2f} ms = {p / b:.2f}x (medians: {m:.2f}x); "
                      f"its {sent} statements alone {sql_ratio:.2f}x; "
                      f"whole request {r * 1000:.1f} ms, {q} queries")  # fmt: skip
    return out


def _bare_run(bare):
    with connection.cursor() as cur:
        return bare(cur)
