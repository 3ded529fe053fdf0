"""The list pages with 1,000 VMs in the database (the state collector's rows): the VM list
(first page, and a filtered, sorted later page) and the dashboard, against the bare SQL
of the rows they show, in the same run.

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
    from apps.core.gateways import libvirt_gw
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
    user = get_user_model().objects.create_user(f"bench-{tag}", password=tag * 3)
    RoleAssignment.objects.create(user=user, role="operator", scope="host", host=host)
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    calls: list[str] = []
    real_call = libvirt_gw.call
    libvirt_gw.call = lambda uri, what, fn: calls.append(what) or real_call(uri, what, fn)
    results = {}
    try:
        cases = {
            "VM list, page 1": ({}, "", "h.name, v.name", 0),
            "VM list, running in z1 by memory, page 2": (
                {"state": "running", "zone": "z1", "sort": "-memory", "page": "2"},
                "AND v.last_state = 'running' AND v.zone = 'z1'", "v.memory_kib DESC, h.name DESC, v.name DESC", 50),
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
    finally:
        libvirt_gw.call = real_call
        RoleAssignment.objects.filter(host=host).delete()
        VirtualMachine.objects.filter(host=host).delete()
        user.delete()
        host.delete()
    worst = max(p / b for b, p, _r, _q in results.values())
    out = {"name": f"list pages, {n} VMs (DB only)", "target": "<= 3", "ratio": worst, "libvirt calls": len(calls)}
    for label, (b, p, r, q) in results.items():
        out[label] = (f"read {p * 1000:.2f} ms vs bare SQL {b * 1000:.2f} ms = {p / b:.2f}x; "
                      f"whole request {r * 1000:.1f} ms, {q} queries")  # fmt: skip
    return out
