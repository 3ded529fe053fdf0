"""The periodic check without libvirt: alert levels with hysteresis, input parsing,
downsampling, projections, and a constant number of queries whatever the number of VMs."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.errors import InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Host
from apps.storage import fields, services
from apps.storage.models import GIB, StorageAlert, UsageSample
from apps.storage.services.samples import samples_compact
from apps.storage.templatetags.storage import trend_chart
from apps.storage.trends import trend
from apps.vms.models import VirtualMachine

W, B = StorageAlert.Level.WARNING, StorageAlert.Level.BREACH


@pytest.mark.parametrize(
    ("current", "percent", "expected"),
    [
        (None, 79, None),
        (None, 80, W),
        (None, 100, B),
        (W, 78, W),  # inside the hysteresis band: stays
        (W, 75, W),
        (W, 74.9, None),  # 5 points below the threshold: cleared
        (W, 100, B),
        (B, 96, B),  # just below the limit: no flapping
        (B, 94, W),
        (B, 70, None),
    ],
)
def test_alert_levels_use_hysteresis(current, percent, expected):
    assert services.next_level(current, percent, 80, 100, 5) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "more than 0"),
        ("-5", "more than 0"),
        ("abc", "not a number"),
        ("", "Give the"),
        ("1e400", "larger than"),
        ("99999999999", "larger than"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("0.0000001", "more than 3 decimals"),
        ("1.00000000000000000001", "more than 3 decimals"),
        (True, "Give the"),
    ],
)
def test_bad_sizes_are_refused_with_a_reason(value, message):
    with pytest.raises(InvalidInput, match=message):
        fields.parse_gib(value, "quota")


def test_sizes_round_up_to_whole_mib():
    assert fields.parse_gib("1") == GIB
    assert fields.parse_gib("0.001") == 2 << 20  # 1.024 MiB -> 2 MiB
    assert fields.parse_gib(2.5) == int(2.5 * GIB)


@pytest.mark.parametrize("value", ["0", "101", "-1", "50.5", "x", ""])
def test_thresholds_outside_1_to_100_are_refused(value):
    with pytest.raises(InvalidInput, match="1 to 100|from 1 to 100"):
        fields.parse_percent(value)


class _Sample:
    def __init__(self, at, allocation, limit):
        self.at, self.allocation, self.limit = at, allocation, limit


def test_trend_projects_days_until_full():
    now = timezone.now()
    samples = [_Sample(now - timedelta(days=10 - d), d * GIB, 20 * GIB) for d in range(11)]  # 1 GiB/day
    t = trend(samples, now=now)
    assert round(t.bytes_per_day / GIB, 3) == 1.0
    assert round(t.days_left) == 10
    assert trend_chart(t)["polyline"].count(",") == 11


def test_trend_without_growth_has_no_projection():
    now = timezone.now()
    samples = [_Sample(now - timedelta(hours=h), GIB, 20 * GIB) for h in (5, 3, 1)]
    assert trend(samples, now=now).days_left is None


@pytest.mark.django_db
def test_old_samples_are_downsampled(host):
    now = timezone.now().replace(minute=30)
    old = now - timedelta(hours=72)
    UsageSample.objects.bulk_create(
        [
            UsageSample(host=host, pool="p", at=old.replace(minute=m), allocation=a, provisioned=0, limit=100)
            for m, a in ((1, 10), (20, 20), (40, 30))
        ]
        + [UsageSample(host=host, pool="p", at=now, allocation=99, provisioned=0, limit=100)]
    )
    assert samples_compact(now) == 1
    hourly = UsageSample.objects.get(resolution="hour")
    assert hourly.allocation == 20
    assert hourly.at == old.replace(minute=0, second=0, microsecond=0)
    assert UsageSample.objects.filter(resolution="raw").count() == 1  # the recent one stays


def _fake_host(n_vms: int):
    host = Host.objects.create(name=f"fake-{uuid.uuid4().hex[:6]}", uri="test:///default")
    domains = []
    for i in range(n_vms):
        vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"vm{i}")
        disks = tuple(gw.DiskInfo(f"vd{c}", f"/pool/vm{i}-{c}.qcow2", GIB, 1 << 20, 1 << 20) for c in "abcdefghij")
        domains.append(gw.DomainDisks(str(vm.uuid), vm.name, "shut off", disks))
    volumes = tuple(
        gw.VolumeInfo("p", d.path.rsplit("/", 1)[1], d.path, d.capacity, d.allocation)
        for dom in domains
        for d in dom.disks
    )
    pool = gw.PoolInfo("u", "p", True, 1000 * GIB, 10 * GIB, 990 * GIB, "/pool", volumes)
    return host, gw.StorageSnapshot((pool,), tuple(domains))


@pytest.mark.django_db
def test_the_check_costs_a_constant_number_of_queries(monkeypatch, django_assert_num_queries):
    Host.objects.all().delete()
    small, small_snap = _fake_host(10)
    monkeypatch.setattr(gw, "host_storage_snapshot", lambda uri, **kw: small_snap)
    services.storage_check(actor=None)  # first run: nothing cached either way
    with CaptureQueriesContext(connection) as ten:
        report = services.storage_check(actor=None)
    assert report.vms == 10
    VirtualMachine.objects.filter(host=small).delete()
    small.delete()
    _large, large_snap = _fake_host(50)
    monkeypatch.setattr(gw, "host_storage_snapshot", lambda uri, **kw: large_snap)
    services.storage_collect(_large)  # the collector has read it before, as the small host's first check did
    with django_assert_num_queries(len(ten.captured_queries)):
        report = services.storage_check(actor=None)
    assert report.vms == 50
    assert UsageSample.objects.filter(vm__isnull=False).count() == 50


@pytest.mark.django_db
def test_a_vm_defined_outside_the_portal_is_registered_and_measured(monkeypatch):
    host, snap = _fake_host(2)
    stranger = gw.DomainDisks(str(uuid.uuid4()), "made-by-virsh", "shut off", (gw.DiskInfo("vda", "/x", GIB, 5, 5),))
    monkeypatch.setattr(
        gw, "host_storage_snapshot", lambda uri, **kw: gw.StorageSnapshot(snap.pools, (*snap.domains, stranger))
    )
    Host.objects.exclude(pk=host.pk).delete()
    report = services.storage_check(actor=None)
    assert report.vms == 3
    vm = VirtualMachine.objects.get(host=host, name="made-by-virsh")
    assert UsageSample.objects.get(vm=vm).allocation == 5


@pytest.mark.parametrize(
    ("level", "action", "state", "applied", "wanted"),
    [
        (B, "refuse", "running", "", "refuse"),
        (B, "suspend", "running", "", "suspend"),
        (B, "suspend", "shut off", "", ""),  # nothing to suspend (yet)
        (B, "suspend", "running", "suspend", "suspend"),  # resumed by a person: respected
        (B, "refuse", "paused", "suspend", "refuse"),  # changed mid-breach: switch
        (B, "alert", "paused", "suspend", ""),  # changed to alert only: lift
        (W, "suspend", "paused", "suspend", ""),  # the breach ended
        (None, "refuse", "running", "refuse", ""),
    ],
)
def test_the_breach_action_in_force_follows_the_quota(level, action, state, applied, wanted):
    assert services.monitor.action_wanted(level, action, state, applied) == wanted


def _one_vm_host():
    host = Host.objects.create(name=f"fake-{uuid.uuid4().hex[:6]}", uri="test:///default")
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="busy")

    def snapshot(allocation: int) -> gw.StorageSnapshot:
        disk = gw.DiskInfo("vda", "/pool/busy.qcow2", 10 * GIB, allocation, allocation)
        return gw.StorageSnapshot((), (gw.DomainDisks(str(vm.uuid), "busy", "shut off", (disk,)),))

    return host, vm, snapshot


@pytest.mark.django_db
def test_cleared_is_said_only_when_usage_fell(monkeypatch):
    from apps.storage.models import VmQuota

    Host.objects.all().delete()
    host, vm, snapshot = _one_vm_host()
    VmQuota.objects.create(vm=vm, limit_bytes=10 * GIB, alert_percent=50)
    usage = {"now": 6 * GIB}
    monkeypatch.setattr(gw, "host_storage_snapshot", lambda uri, **kw: snapshot(usage["now"]))

    assert len(services.storage_check(actor=None).raised) == 1  # 60%
    usage["now"] = 2 * GIB
    report = services.storage_check(actor=None)
    assert report.eased == [] and report.cleared == [
        "busy is below its alert threshold again: usage fell from 6 GiB to 2 GiB, 20% of its quota of 10 GiB."
    ]

    usage["now"] = 11 * GIB
    assert len(services.storage_check(actor=None).raised) == 1  # 110%: breach
    VmQuota.objects.filter(vm=vm).update(limit_bytes=12 * GIB)
    report = services.storage_check(actor=None)  # 92%: a warning now, usage unchanged
    assert report.lowered == [
        "busy is below its limit again: its quota was raised from 10 GiB; it uses 11 GiB, 92% of its quota of 12 GiB."
    ]
    VmQuota.objects.filter(vm=vm).update(limit_bytes=100 * GIB)
    report = services.storage_check(actor=None)
    assert report.cleared == [] and len(report.eased) == 1 and "quota was raised from 12 GiB" in report.eased[0]


@pytest.mark.django_db
def test_a_users_check_measures_only_their_vms_and_registers_nothing(monkeypatch, make_user):
    from apps.accounts.models import Role

    Host.objects.all().delete()
    host, snap = _fake_host(3)
    stranger = gw.DomainDisks(str(uuid.uuid4()), "made-by-virsh", "shut off", (gw.DiskInfo("vda", "/x", GIB, 5, 5),))
    monkeypatch.setattr(
        gw, "host_storage_snapshot", lambda uri, **kw: gw.StorageSnapshot(snap.pools, (*snap.domains, stranger))
    )
    mine = VirtualMachine.objects.get(host=host, name="vm1")
    user = make_user(role=Role.OPERATOR, scope="vm", vm=mine)
    report = services.storage_check(actor=user)
    assert (report.vms, report.pools) == (1, 0)
    assert list(UsageSample.objects.values_list("vm__name", flat=True)) == ["vm1"]
    assert not VirtualMachine.objects.filter(name="made-by-virsh").exists()
    elsewhere = Host.objects.create(name="elsewhere", uri="test:///elsewhere")
    theirs = VirtualMachine.objects.create(host=elsewhere, uuid=uuid.uuid4(), name="theirs")
    outsider = make_user(role=Role.OPERATOR, scope="vm", vm=theirs)

    def read(uri, **kw):
        assert uri != host.uri, "a host outside the user's scope was read"
        return gw.StorageSnapshot((), ())

    monkeypatch.setattr(gw, "host_storage_snapshot", read)
    assert services.storage_check(actor=outsider).vms == 0
