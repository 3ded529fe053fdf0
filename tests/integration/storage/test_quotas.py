"""Quotas on real VMs: set, expand, thresholds; refusals with reasons, audited, no change."""

import threading
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection

from apps.core.errors import Conflict, InvalidInput, NotFound
from apps.core.gateways import libvirt as gw
from apps.storage import services
from apps.storage.forms import QuotaForm, validated
from apps.storage.models import GIB, VmQuota

from .conftest import MIB, events, overfill

pytestmark = pytest.mark.libvirt


def test_an_operator_sets_a_quota_and_it_is_audited(operator, off_vm):
    quota = services.quota_set(
        actor=operator, vm=off_vm, limit_bytes=20 * GIB, alert_percent=70, breach_action="refuse"
    )
    assert (quota.limit_bytes, quota.alert_percent, quota.breach_action) == (20 * GIB, 70, "refuse")
    (event,) = events("storage.quota.set", outcome="success")
    assert event.actor_name == operator.username
    assert event.target_name == off_vm.name
    assert event.params["limit_gib"] == "20"


def test_vms_without_their_own_quota_use_the_defaults_an_admin_edits(admin, operator, off_vm):
    assert services.quota_get(actor=operator, vm=off_vm).quota.own_limit is False
    services.defaults_update(
        actor=admin,
        quota_bytes=7 * GIB,
        alert_percent=60,
        breach_action="suspend",
        max_overcommit=Decimal("2"),
        reserve_percent=5,
    )
    view = services.quota_get(actor=operator, vm=off_vm)
    assert (view.quota.limit_bytes, view.quota.alert_percent, view.quota.breach_action) == (7 * GIB, 60, "suspend")
    with pytest.raises(PermissionDenied):
        services.defaults_update(
            actor=operator,
            quota_bytes=1 * GIB,
            alert_percent=1,
            breach_action="alert",
            max_overcommit=Decimal("1"),
            reserve_percent=1,
        )
    assert events("storage.settings.update", outcome="denied")[0].actor_name == operator.username


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit_gib": "0"}, "more than 0"),
        ({"limit_gib": "-3"}, "more than 0"),
        ({"limit_gib": "0.0000001"}, "3 decimals"),
        ({"limit_gib": "1e30"}, "larger than"),
        ({"limit_gib": "lots"}, "not a number"),
        ({"alert_percent": "0"}, "1 to 100"),
        ({"alert_percent": "101"}, "1 to 100"),
        ({"breach_action": "explode"}, "Unknown breach action"),
        ({}, "Nothing to change"),
    ],
)
def test_bad_input_is_refused_audited_and_changes_nothing(operator, off_vm, fields, message):
    """Through the form every caller validates with (pages and command line), then the service."""
    with pytest.raises(InvalidInput, match=message):
        form = validated(QuotaForm(fields, versioned=False), actor=operator, action="storage.quota.set",
                         target=off_vm, perm="storage.change")  # fmt: skip
        services.quota_set(actor=operator, vm=off_vm, **form.service_args())
    assert not VmQuota.objects.filter(vm=off_vm).exists()
    (event,) = events("storage.quota.set", outcome="failed")
    assert message.split()[0] in event.error


def test_a_quota_below_current_allocation_needs_confirmation(operator, small_vm):
    off_vm = small_vm
    overfill(off_vm)  # its disk and snapshot take more than the 256 MiB disk's size
    with pytest.raises(InvalidInput, match=r"below the .* already use.*Confirm"):
        services.quota_set(actor=operator, vm=off_vm, limit_bytes=int(0.25 * GIB))
    assert not VmQuota.objects.filter(vm=off_vm).exists()
    quota = services.quota_set(actor=operator, vm=off_vm, limit_bytes=int(0.25 * GIB), confirmed=True)
    assert quota.limit_bytes == 256 * MIB
    assert [e.outcome for e in events("storage.quota.set")] == ["failed", "success"]


def test_a_viewer_is_refused_and_the_refusal_is_audited(viewer, off_vm):
    with pytest.raises(PermissionDenied):
        services.quota_expand(actor=viewer, vm=off_vm, by_bytes=10 * GIB)
    (event,) = events("storage.quota.expand", outcome="denied")
    assert event.actor_name == viewer.username
    assert not VmQuota.objects.filter(vm=off_vm).exists()


def test_a_change_made_from_a_stale_page_is_refused(operator, admin, off_vm):
    first = services.quota_set(actor=operator, vm=off_vm, limit_bytes=10 * GIB)
    services.quota_set(actor=admin, vm=off_vm, limit_bytes=12 * GIB, expected_version=first.version)
    with pytest.raises(Conflict, match="changed by alice-admin"):
        services.quota_set(actor=operator, vm=off_vm, limit_bytes=11 * GIB, expected_version=first.version)
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 12 * GIB


def test_expanding_raises_the_limit_and_never_touches_a_disk(operator, off_vm):
    before = gw.domain_disks_live(off_vm.host.uri, off_vm.name)
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=5 * GIB)
    assert services.quota_expand(actor=operator, vm=off_vm, by_bytes=int(2.5 * GIB)).limit_bytes == int(7.5 * GIB)
    assert gw.domain_disks_live(off_vm.host.uri, off_vm.name).provisioned == before.provisioned
    (event,) = events("storage.quota.expand", outcome="success")
    assert event.params == {"by_gib": "2.5", "limit_gib": "7.5"}


def test_expanding_beyond_the_absurd_is_refused(operator, off_vm, settings):
    settings.STORAGE_MAX_SIZE_GIB = 100
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=90 * GIB)
    with pytest.raises(InvalidInput, match="above the 100 GiB"):
        services.quota_expand(actor=operator, vm=off_vm, by_bytes=20 * GIB)
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 90 * GIB


def test_unknown_pools_are_refused(admin, host):
    with pytest.raises(NotFound, match="not found"):
        services.pool_limit_set(
            actor=admin, host=host, pool="no-such-pool", max_overcommit=Decimal("2"), reserve_percent=10
        )
    assert events("storage.pool.limit", outcome="failed")


@pytest.mark.django_db(transaction=True)
def test_two_operators_expanding_at_once_lose_no_update(make_user, host, make_domain):
    from apps.accounts.models import Role
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    name = make_domain(running=False)
    inventory_sync(host)
    vm = VirtualMachine.objects.select_related("host").get(host=host, name=name)
    operators = [make_user(role=Role.OPERATOR) for _ in range(4)]
    services.quota_set(actor=operators[0], vm=vm, limit_bytes=10 * GIB)
    barrier = threading.Barrier(len(operators))
    errors = []

    def expand(user):
        try:
            barrier.wait()
            services.quota_expand(actor=user, vm=vm, by_bytes=1 * GIB)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=expand, args=(u,)) for u in operators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert VmQuota.objects.get(vm=vm).limit_bytes == 14 * GIB
    assert len(events("storage.quota.expand", outcome="success")) == 4


def test_a_limit_below_the_provisioned_size_is_refused_saying_the_numbers(operator, off_vm):
    """The hard limit caps the provisioned size: a quota the VM's 1 GiB disk already
    exceeds is refused (confirmation or not), so growth is never refused by surprise."""
    for confirmed in (False, True):
        with pytest.raises(InvalidInput, match=r"103 MiB is below the 1 GiB already provisioned .*by 921 MiB"):
            services.quota_set(actor=operator, vm=off_vm, limit_bytes=103 * MIB, confirmed=confirmed)
    assert not VmQuota.objects.filter(vm=off_vm).exists()
    assert [e.outcome for e in events("storage.quota.set")] == ["failed", "failed"]
    # at exactly the provisioned size: accepted; set, growth and the check then agree
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=1 * GIB)
    with pytest.raises(InvalidInput, match=r"2 GiB of disks, 1 GiB over its quota of 1 GiB"):
        services.volume_create(actor=operator, vm=off_vm, size_bytes=1 * GIB)
    report = services.storage_check(actor=operator)
    assert report.over_limit == [] and report.raised == []  # an empty disk: nothing allocated


def test_expand_sets_the_new_total_and_never_lowers(operator, off_vm):
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=5 * GIB)
    assert services.quota_expand(actor=operator, vm=off_vm, to_bytes=8 * GIB).limit_bytes == 8 * GIB
    with pytest.raises(InvalidInput, match=r"already 8 GiB; expanding it to 6 GiB would shrink it"):
        services.quota_expand(actor=operator, vm=off_vm, to_bytes=6 * GIB)
    with pytest.raises(InvalidInput, match=r"would leave it unchanged"):
        services.quota_expand(actor=operator, vm=off_vm, to_bytes=8 * GIB)
    with pytest.raises(InvalidInput, match="not both"):
        services.quota_expand(actor=operator, vm=off_vm, to_bytes=9 * GIB, by_bytes=1 * GIB)
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 8 * GIB
    assert [e.outcome for e in events("storage.quota.expand")] == ["success", "failed", "failed", "failed"]
    assert events("storage.quota.expand")[0].params == {"to_gib": "8", "limit_gib": "8"}


def test_expanding_a_vm_on_the_default_quota_starts_from_the_default(admin, operator, off_vm):
    services.defaults_update(
        actor=admin,
        quota_bytes=10 * GIB,
        alert_percent=80,
        breach_action="alert",
        max_overcommit=Decimal("3"),
        reserve_percent=10,
    )
    with pytest.raises(InvalidInput, match=r"already 10 GiB \(the default\)"):
        services.quota_expand(actor=operator, vm=off_vm, to_bytes=4 * GIB)
    assert services.quota_expand(actor=operator, vm=off_vm, to_bytes=12 * GIB).limit_bytes == 12 * GIB
