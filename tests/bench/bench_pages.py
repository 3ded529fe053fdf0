"""The list pages with 1,000 VMs and 10,000 volumes in the database (the state collector's
rows): the VM list (first page, and a filtered, sorted later page), the dashboard, the
storage overview and a 10,000-volume pool's page, against the bare SQL of the rows they
show, in the same run.

Two figures per page:
- ratio: the page's whole database read through the portal's selectors (user, scoping,
  filters, count, page, ORM objects) against hand-written SQL reading the same (the user,
  their role assignments, the count and the rows shown) (target <= 3);
- the whole request in-process (middleware, session, permission, template), reported
  beside it in milliseconds.
Counts libvirt calls at the gateway during the requests (must be 0). Creates its host, VMs
and user in the benchmark's throwaway database and removes them."""

from __future__ import annotations

import statistics
import time
import uuid
from contextlib import contextmanager

from django.db import connection
from django.test import Client
from django.utils import timezone

VMS = 1000
VOLUMES_PER_VM = 10
ROUNDS = 30

_LIST_SQL = """
SELECT v.id, v.name, v.zone, v.last_state, v.vcpus, v.memory_kib, v.disk_capacity, v.disk_allocation, h.name
FROM vms_virtualmachine v JOIN core_host h ON h.id = v.host_id
WHERE v.present AND v.host_id = %s {extra}
ORDER BY {order} LIMIT 50 OFFSET %s
"""
_COUNT_SQL = "SELECT COUNT(*) FROM vms_virtualmachine v WHERE v.present AND v.host_id = %s {extra}"
# what any page must read first: the user and their role assignments (the scope)
_AUTH_SQL = ("SELECT id, username, is_active FROM auth_user WHERE id = %s",
             "SELECT role, scope, host_id, zone, vm_id FROM accounts_roleassignment WHERE user_id = %s")  # fmt: skip
_POOLS_SQL = "SELECT * FROM storage_poolstate WHERE host_id = %s ORDER BY name"
_VM_USAGE_SQL = """
SELECT v.id, v.name, d.state, d.provisioned, d.allocation, q.limit_bytes
FROM vms_virtualmachine v JOIN storage_vmdiskstate d ON d.vm_id = v.id
LEFT JOIN storage_vmquota q ON q.vm_id = v.id
WHERE v.present AND v.host_id = %s ORDER BY v.name LIMIT 50
"""
_POOL_SQL = "SELECT * FROM storage_poolstate WHERE host_id = %s AND name = 'big'"
_VOLUMES_SQL = """
SELECT s.name, s.capacity, s.allocation, v.name FROM storage_volumestate s
LEFT JOIN vms_virtualmachine v ON v.id = s.vm_id
WHERE s.host_id = %s AND s.pool = 'big' ORDER BY s.name LIMIT 100 OFFSET %s
"""
_STATES_SQL = "SELECT last_state, COUNT(*) FROM vms_virtualmachine WHERE present AND host_id = %s GROUP BY last_state"


@contextmanager
def _counting():
    """The SQL statements run meanwhile (a request resets Django's own query log)."""
    statements: list[str] = []
    with connection.execute_wrapper(lambda execute, sql, *a: statements.append(sql) or execute(sql, *a)):
        yield statements


def _median(fn, rounds: int = ROUNDS) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def run(args) -> dict:
    from django.contrib.auth import get_user_model

    from apps.accounts.models import RoleAssignment
    from apps.core.gateways.libvirt import connection as libvirt_connection
    from apps.core.models import Host
    from apps.vms import selectors
    from apps.vms.models import VirtualMachine

    n = max(10, int(VMS * args.scale))
    tag = uuid.uuid4().hex[:6]
    host = Host.objects.create(name=f"bench-{tag}", uri="test:///default", collected_at=timezone.now())
    states = ["running", "shut off", "paused"]
    VirtualMachine.objects.bulk_create(
        VirtualMachine(host=host, uuid=uuid.uuid4(), name=f"vm-{i:05d}", zone=f"z{i % 4}", last_state=states[i % 3],
                       vcpus=1 + i % 4, memory_kib=65536, disk_capacity=(1 + i % 10) << 30,
                       disk_allocation=(i % 100) << 20, last_seen=timezone.now())
        for i in range(n)
    )  # fmt: skip
    from apps.storage.models import PoolState, VmDiskState, VolumeState

    now = timezone.now()
    vms = list(VirtualMachine.objects.filter(host=host).order_by("name"))
    VmDiskState.objects.bulk_create(
        VmDiskState(vm=vm, state=vm.last_state, provisioned=VOLUMES_PER_VM << 30, allocation=1 << 30,
                    collected_at=now) for vm in vms
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
    user = get_user_model().objects.create_user(f"bench-{tag}", password=tag * 3)
    RoleAssignment.objects.create(user=user, role="operator", scope="host", host=host)
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    calls: list[str] = []
    real_call = libvirt_connection.call
    libvirt_connection.call = lambda uri, what, fn: calls.append(what) or real_call(uri, what, fn)
    results = {}
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

            def bare(extra=extra, order=order, offset=offset):
                with connection.cursor() as cur:
                    for sql in _AUTH_SQL:
                        cur.execute(sql, [user.pk])
                        cur.fetchall()
                    cur.execute(_COUNT_SQL.format(extra=extra), [host.pk])
                    cur.fetchone()
                    cur.execute(_LIST_SQL.format(extra=extra, order=order), [host.pk, offset])
                    return cur.fetchall()

            def portal(filters=filters, params=params):
                u = get_user_model().objects.get(pk=user.pk)  # no cached role assignments
                return list(selectors.vm_page(u, filters, params.get("page")))

            assert [r[1] for r in bare()] == [vm.name for vm in portal()], label  # the same rows
            b, p = _median(bare), _median(portal)
            with _counting() as counted:
                response = client.get("/vms/", params)
            assert response.status_code == 200, (label, response.status_code, response.get("Location"))
            request = _median(lambda params=params: client.get("/vms/", params))
            results[label] = (b, p, request, len(counted))

        def bare_states():
            with connection.cursor() as cur:
                for sql in _AUTH_SQL:
                    cur.execute(sql, [user.pk])
                    cur.fetchall()
                cur.execute(_STATES_SQL, [host.pk])
                return cur.fetchall()

        b = _median(bare_states)
        p = _median(lambda: selectors.vm_state_counts(get_user_model().objects.get(pk=user.pk)))
        with _counting() as counted:
            response = client.get("/")
        assert response.status_code == 200, ("dashboard", response.status_code)
        results["dashboard"] = (b, p, _median(lambda: client.get("/")), len(counted))

        from apps.storage import selectors as storage_selectors

        def bare_overview():
            with connection.cursor() as cur:
                for sql in _AUTH_SQL:
                    cur.execute(sql, [user.pk])
                    cur.fetchall()
                cur.execute(_POOLS_SQL, [host.pk])
                cur.fetchall()
                cur.execute("SELECT COUNT(*) FROM vms_virtualmachine WHERE present AND host_id = %s", [host.pk])
                cur.fetchone()
                cur.execute(_VM_USAGE_SQL, [host.pk])
                return cur.fetchall()

        def portal_overview():
            return storage_selectors.overview_page(get_user_model().objects.get(pk=user.pk), "1")[0]

        assert len(bare_overview()) == sum(len(h.vms) for h in portal_overview())  # the first page
        b, p = _median(bare_overview, 10), _median(portal_overview, 10)
        with _counting() as counted:
            assert client.get("/storage/").status_code == 200
        results[f"storage overview ({len(vms)} VMs, page 1)"] = (b, p, _median(lambda: client.get("/storage/"), 10),
                                                          len(counted))  # fmt: skip

        middle = max(1, volumes // 200)  # a page in the middle of the pool

        def bare_pool():
            with connection.cursor() as cur:
                for sql in _AUTH_SQL:
                    cur.execute(sql, [user.pk])
                    cur.fetchall()
                cur.execute(_POOL_SQL, [host.pk])
                cur.fetchall()
                cur.execute("SELECT COUNT(*) FROM storage_volumestate WHERE host_id = %s AND pool = 'big'", [host.pk])
                cur.fetchone()
                cur.execute(_VOLUMES_SQL, [host.pk, (middle - 1) * 100])
                return cur.fetchall()

        def portal_pool():
            d = storage_selectors.pool_detail(get_user_model().objects.get(pk=user.pk), host.name, "big", str(middle))
            return list(d.volumes)

        assert [r[0] for r in bare_pool()] == [v.name for v in portal_pool()]
        b, p = _median(bare_pool, 10), _median(portal_pool, 10)
        url = f"/storage/pools/{host.name}/big/?page={middle}"
        with _counting() as counted:
            assert client.get(url).status_code == 200
        request = _median(lambda: client.get(url), 10)
        results[f"pool page ({volumes} volumes, page {middle})"] = (b, p, request, len(counted))
    finally:
        libvirt_connection.call = real_call
        RoleAssignment.objects.filter(host=host).delete()
        VolumeState.objects.filter(host=host).delete()
        PoolState.objects.filter(host=host).delete()
        VirtualMachine.objects.filter(host=host).delete()  # and their VmDiskState rows
        user.delete()
        host.delete()
    worst = max(p / b for b, p, _r, _q in results.values())
    out = {"name": f"list pages, {n} VMs (DB only)", "target": "<= 3", "ratio": worst, "libvirt calls": len(calls)}
    for label, (b, p, r, q) in results.items():
        out[label] = (f"read {p * 1000:.2f} ms vs bare SQL {b * 1000:.2f} ms = {p / b:.2f}x; "
                      f"whole request {r * 1000:.1f} ms, {q} queries")  # fmt: skip
    return out
