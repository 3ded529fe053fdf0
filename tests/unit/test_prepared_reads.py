"""Prepared reads (apps/core/prepared.py): the SQL the ORM wrote for a shape runs again with
other values and gives what the ORM gives; a value the SQL would transform or bake in makes
the shape an ORM read; a build that could capture a value is refused. And the scoped reads
built on them give each user their own rows when users share a shape."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db.models import Count, F, Max, Q
from django.utils import timezone

from apps.accounts.models import Role, RoleAssignment
from apps.accounts.permissions import scope_parts, scope_q
from apps.core.models import Host
from apps.core.prepared import _ORM, Prepared, totals
from apps.vms import selectors
from apps.vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


def _vms(shape, p):
    kinds, by_state, by_seen = shape
    qs = VirtualMachine.objects.filter(present=True, host__name=p["host"])
    if kinds is not None:
        qs = qs.filter(scope_q(kinds, p))
    if by_state:
        qs = qs.filter(last_state=p["state"])
    if by_seen:
        qs = qs.filter(last_seen__gte=p["since"])
    return qs.order_by("name").values("name", "last_seen", "uuid", host_name=F("host__name"))


def _named_like(shape, p):
    return VirtualMachine.objects.filter(name__icontains=p["q"]).order_by("name").values("name")


def _counts(shape, p):
    return totals(VirtualMachine.objects.filter(host__name=p["host"]), n=Count("pk"), seen=Max("last_seen"))


VMS = Prepared(VirtualMachine, _vms)


@pytest.fixture
def two_hosts():
    now = timezone.now()
    hosts = [Host.objects.create(name=f"prep-{i}", uri=f"test:///prep{i}") for i in range(2)]
    for h, host in enumerate(hosts):
        for i in range(6):
            VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"p{h}-vm{i}", zone=f"z{i % 2}",
                                          last_state=("running", "shut off")[i % 2],
                                          last_seen=now - timedelta(hours=i))  # fmt: skip
    return hosts


def _orm(shape, values):
    return list(_vms(shape, values))


def test_a_prepared_read_gives_what_the_orm_gives_for_every_value(two_hosts):
    now = timezone.now()
    cases = [
        ((None, False, False), {"host": "prep-0"}),
        ((None, False, False), {"host": "prep-1"}),
        ((None, True, False), {"host": "prep-0", "state": "running"}),
        ((None, True, False), {"host": "prep-1", "state": "shut off"}),
        ((None, True, True), {"host": "prep-1", "state": "running", "since": now - timedelta(hours=3, minutes=1)}),
        ((("zone",), False, False), {"host": "prep-0", "scope0": "z1"}),
        ((("host", "zone"), False, False), {"host": "prep-1", "scope0": two_hosts[0].pk, "scope1": "z0"}),
        ((("host", "zone"), False, False), {"host": "prep-1", "scope0": two_hosts[1].pk, "scope1": "z0"}),
    ]
    for shape, values in cases:
        assert VMS.rows(shape, values) == _orm(shape, values), (shape, values)
        assert VMS.rows(shape, values, limit=2, offset=1) == _orm(shape, values)[1:3]
    assert any(VMS.rows(shape, values) for shape, values in cases)  # not all empty
    assert _ORM not in VMS._compiled.values()  # every one of these shapes was prepared, none fell back


def test_a_like_pattern_is_bound_escaped_as_the_orm_escapes_it(two_hosts):
    """icontains: the value is escaped and wrapped in wildcards, as the ORM does, so _ and %
    stay literal (bound unescaped, "p0_vm1" would match "p0-vm1" and "%" everything)."""
    read = Prepared(VirtualMachine, _named_like)
    assert [r["name"] for r in read.rows((), {"q": "VM3"})] == ["p0-vm3", "p1-vm3"]
    assert _ORM not in read._compiled.values()  # prepared
    assert [r["name"] for r in read.rows((), {"q": "1-vm"})] == [f"p1-vm{i}" for i in range(6)]
    for literal in ("p0_vm1", "%", "_", "vm\\", "p0%vm1"):
        assert read.rows((), {"q": literal}) == list(_named_like((), {"q": literal})) == [], literal


def _about(shape, p):  # one value in two lookups transformed differently: the ORM's each time
    return VirtualMachine.objects.filter(Q(name=p["n"]) | Q(name__startswith=f"{p['n']}-")).values("name")


def test_a_value_transformed_two_ways_is_left_to_the_orm(two_hosts):
    read = Prepared(VirtualMachine, _about)
    assert sorted(r["name"] for r in read.rows((), {"n": "p1"})) == [f"p1-vm{i}" for i in range(6)]
    assert list(read._compiled.values()) == [_ORM]


def _named_exactly(shape, p):
    return VirtualMachine.objects.filter(name__iexact=p["name"]).order_by("name").values("name")


def _small_numbers(shape, p):  # a small-integer column: a placeholder is out of its range
    from apps.storage.models import PoolLimit

    return PoolLimit.objects.filter(reserve_percent=p["reserve"]).values("pool")


def test_an_escaped_value_is_never_bound_unescaped(two_hosts):
    """SQLite's iexact is a LIKE with the value's _ and % escaped: bound as it came, "p0_vm1"
    would match "p0-vm1". Such a shape is read by the ORM (PostgreSQL's UPPER = UPPER takes
    the value as it is, and prepares)."""
    read = Prepared(VirtualMachine, _named_exactly)
    assert read.rows((), {"name": "p0_vm1"}) == []
    assert read.rows((), {"name": "P0-VM1"}) == [{"name": "p0-vm1"}]


def test_a_value_outside_its_columns_range_is_left_to_the_orm(two_hosts):
    from apps.storage.models import PoolLimit

    PoolLimit.objects.create(host=two_hosts[0], pool="default", reserve_percent=10)
    read = Prepared(PoolLimit, _small_numbers)
    assert read.rows((), {"reserve": 10}) == [{"pool": "default"}]
    assert read.rows((), {"reserve": 11}) == []


def test_an_aggregate_over_nothing_gives_its_empty_row(two_hosts):
    read = Prepared(VirtualMachine, _counts)
    assert read.one((), {"host": "prep-0"})["n"] == 6
    assert read.one((), {"host": "nowhere"}) == {"n": 0, "seen": None}


def test_no_scope_reads_nothing():
    assert VMS.rows(((), False, False), {"host": "prep-0"}) == []


def test_a_build_that_could_capture_a_value_is_refused():
    host = "prep-0"

    def captures(shape, p):
        return VirtualMachine.objects.filter(host__name=host).values("name")

    def defaulted(shape, p, host=host):
        return VirtualMachine.objects.filter(host__name=host).values("name")

    for build in (captures, defaulted):
        with pytest.raises(TypeError, match="shape and values"):
            Prepared(VirtualMachine, build)
    with pytest.raises(TypeError, match="in the shape"):
        VMS.rows((None, False, False), {"host": True})


def test_users_sharing_a_shape_each_see_only_their_own_vms(two_hosts, django_user_model):
    """Two operators scoped to one host each share the VM list's prepared SQL: each gets
    their own host's VMs (the scope is a value), and a zone-scoped user gets the zone's."""
    users = []
    for h, host in enumerate(two_hosts):
        user = django_user_model.objects.create_user(f"prep-op{h}", password="x" * 16)
        RoleAssignment.objects.create(user=user, role=Role.OPERATOR, scope="host", host=host)
        users.append(user)
    zoned = django_user_model.objects.create_user("prep-zone", password="x" * 16)
    RoleAssignment.objects.create(user=zoned, role=Role.VIEWER, scope="zone", zone="z1")
    assert scope_parts(users[0], "vms.view")[0] == scope_parts(users[1], "vms.view")[0] == ("host",)

    def names(user):
        fresh = django_user_model.objects.get(pk=user.pk)
        return [r["name"] for r in selectors.vm_listing(fresh, selectors.VmFilters()).page]

    assert names(users[0]) == [f"p0-vm{i}" for i in range(6)]
    assert names(users[1]) == [f"p1-vm{i}" for i in range(6)]
    assert names(zoned) == ["p0-vm1", "p0-vm3", "p0-vm5", "p1-vm1", "p1-vm3", "p1-vm5"]
    assert names(users[0]) == [f"p0-vm{i}" for i in range(6)]  # again, the SQL now prepared


def test_alerts_and_the_badge_follow_each_users_scope(two_hosts, django_user_model):
    """Pool alerts reach users of their host (or global); VM alerts users whose scope covers
    the VM; the navigation badge (a prepared count) agrees with the Alerts page's list."""
    from apps.storage import selectors as storage_selectors
    from apps.storage.models import StorageAlert

    now = timezone.now()
    h0, h1 = two_hosts
    vm = VirtualMachine.objects.get(name="p1-vm1")  # zone z1 on host 1
    for host, on_vm, pool in ((h0, None, "default"), (h1, None, "default"), (h1, vm, "")):
        StorageAlert.objects.create(host=host, vm=on_vm, pool=pool, level="warning", usage=1, limit=2, percent=80,
                                    raised_at=now, updated_at=now, message="m")  # fmt: skip

    def user(name, **scope):
        u = django_user_model.objects.create_user(name, password="x" * 16)
        RoleAssignment.objects.create(user=u, role=Role.VIEWER, **scope)
        return django_user_model.objects.get(pk=u.pk)

    cases = {
        "everyone": (user("al-global", scope="global"), 3),
        "host 0": (user("al-h0", scope="host", host=h0), 1),  # its pool alert only
        "host 1": (user("al-h1", scope="host", host=h1), 2),  # its pool alert and its VM's
        "zone z1": (user("al-z1", scope="zone", zone="z1"), 1),  # the VM's alert, no pool alert
        "zone z0": (user("al-z0", scope="zone", zone="z0"), 0),
    }
    for label, (u, expected) in cases.items():
        listed = storage_selectors.alerts_visible_to(u, open_only=True)
        assert listed.count() == expected, label
        assert storage_selectors.alert_badge_count(u) == expected, label
    zone_user = cases["zone z1"][0]
    assert [a.vm_id for a in storage_selectors.alerts_visible_to(zone_user)] == [vm.pk]


def test_objects_of_some_fields_get_each_value_in_its_own_field(django_user_model):
    """A prepared read of some fields, in another order than the model's, made into model
    objects: each value lands in its field (Model.from_db takes values in field order)."""
    from apps.core import selectors as core_selectors
    from apps.core.models import Job
    from apps.core.prepared import as_objects

    admin = django_user_model.objects.create_user("prep-admin", password="x" * 16)
    RoleAssignment.objects.create(user=admin, role=Role.ADMIN, scope="global")
    Job.objects.create(kind="vms.vm.start", target_type="virtualmachine", target_id="1", target_name="web-1",
                       actor_name="alice", state="running", progress=42, error="")  # fmt: skip
    (job,) = core_selectors.dashboard_for(django_user_model.objects.get(pk=admin.pk)).jobs
    assert (job.kind, job.target_name, job.actor_name, job.state, job.progress, job.error) == (
        "vms.vm.start", "web-1", "alice", "running", 42, "")
    assert not job.finished
    with pytest.raises(TypeError, match="no fields"):
        as_objects(Job, [{"id": 1, "target": 2}])


def test_an_integer_no_column_holds_finds_nothing(client, django_user_model):
    """A URL's integer past 64 bits reaches a prepared read as a plain "not found"."""
    from django.urls import reverse

    from apps.core.models import Job

    auditor = django_user_model.objects.create_user("prep-auditor", password="x" * 16)
    RoleAssignment.objects.create(user=auditor, role=Role.AUDITOR, scope="global")
    client.force_login(auditor)
    url = reverse("audit:event", args=[2**70])
    assert client.get(url).status_code == 404
    read = Prepared(Job, _job_by_pk)
    assert read.rows((), {"pk": 2**70}) == [] and read.rows((), {"pk": -(2**64)}) == []


def _job_by_pk(shape, p):
    from apps.core.models import Job

    return Job.objects.filter(pk=p["pk"]).values("id")
