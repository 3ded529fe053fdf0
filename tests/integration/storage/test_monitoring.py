"""The periodic check on the real libvirtd: data written into a qcow2 volume grows its
allocation; the check raises the alert, applies the breach action and clears it later."""

import pytest
from django.core import mail

from apps.core.errors import Conflict
from apps.core.gateways import libvirt as gw
from apps.storage import selectors, services
from apps.storage.models import GIB, StorageAlert, UsageSample

from .conftest import disk_path, events, overfill, write_data

pytestmark = pytest.mark.libvirt


def _alerts(vm):
    return list(StorageAlert.objects.filter(vm=vm).order_by("id"))


def test_usage_growth_raises_acts_and_clears(operator, small_vm, webhook, settings, django_capture_on_commit_callbacks):
    settings.NOTIFY_EMAIL_TO = ["ops@example.invalid"]
    vm = small_vm
    uri, path = vm.host.uri, disk_path(vm)
    services.quota_set(actor=operator, vm=vm, limit_bytes=int(0.25 * GIB), alert_percent=50, breach_action="suspend")

    services.storage_check(actor=None)
    assert _alerts(vm) == []  # an empty thin disk: nothing to say

    write_data(path, 160)  # 160 MiB of 256 MiB: over the 50% threshold
    with django_capture_on_commit_callbacks(execute=True):  # notifications leave once the check commits
        report = services.storage_check(actor=None)
    (alert,) = _alerts(vm)
    assert (alert.level, alert.state, alert.action_applied) == ("warning", "open", "")
    assert any(vm.name in line for line in report.raised)
    sent = webhook[-1]
    assert (sent["name"], sent["state"], sent["subject"]) == ("PortalStorageRaise", "firing", vm.name)
    assert vm.name in mail.outbox[-1].subject
    assert events("notification.deliver", outcome="success")  # one audit row per delivery
    assert events("storage.alert.raise", target_name=vm.name)[0].actor_name == "system"

    gw.snapshot_create(uri, vm.name, "keep")  # the snapshot keeps the 160 MiB...
    write_data(path, 140)  # ...while 140 MiB are written over them: 300 MiB, over the hard limit
    gw.domain_start(uri, vm.name)
    report = services.storage_check(actor=None)
    alert.refresh_from_db()
    assert (alert.level, alert.action_applied) == ("breach", "suspend")
    assert gw.domain_state(uri, vm.name) == "paused"
    assert events("storage.quota.suspend", outcome="success", target_name=vm.name)
    assert any(vm.name in line for line in report.over_limit)
    assert [line.split(":")[0] for line in report.suspended] == [vm.name]

    services.storage_check(actor=None)  # unchanged usage: no new event, no flapping
    assert len(events("storage.alert.escalate", target_name=vm.name)) == 1

    services.quota_expand(actor=operator, vm=vm, by_bytes=1 * GIB)  # 300 MiB of 1.25 GiB
    with django_capture_on_commit_callbacks(execute=True):
        report = services.storage_check(actor=None)
    alert.refresh_from_db()
    assert (alert.state, alert.action_applied) == ("cleared", "")
    assert gw.domain_state(uri, vm.name) == "running"  # the check resumed what it suspended
    assert events("storage.quota.resume", outcome="success", target_name=vm.name)
    assert (webhook[-1]["name"], webhook[-1]["state"]) == ("PortalStorageClear", "resolved")
    assert UsageSample.objects.filter(vm=vm).count() == 5
    # usage did not fall: the quota was raised, and the report says so, not "cleared"
    assert report.cleared == []
    assert any("was raised from 256 MiB" in line for line in report.eased)
    assert [line.split(":")[0] for line in report.resumed] == [vm.name]


def test_refuse_growth_blocks_new_volumes_while_breached(operator, small_vm):
    off_vm = small_vm
    overfill(off_vm)
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=int(0.25 * GIB), breach_action="refuse", confirmed=True)
    services.storage_check(actor=None)
    (alert,) = _alerts(off_vm)
    assert (alert.level, alert.action_applied) == ("breach", "refuse")
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=100 * GIB)
    # the quota now has room, but growth stays refused until the next check sees usage fall
    with pytest.raises(Conflict, match="refuses growth"):
        services.volume_create(actor=operator, vm=off_vm, size_bytes=1 * GIB)
    assert events("storage.volume.create", outcome="failed")
    services.storage_check(actor=None)
    alert.refresh_from_db()
    assert alert.state == "cleared"
    services.volume_create(actor=operator, vm=off_vm, size_bytes=1 * GIB)  # accepted now


def test_a_pool_inside_its_reserve_raises_an_alert(admin, host, test_pool, off_vm):
    services.pool_limit_set(actor=admin, host=host, pool=test_pool, max_overcommit=None, reserve_percent=99)
    services.storage_check(actor=None)
    alert = StorageAlert.objects.get(host=host, pool=test_pool, vm__isnull=True, state="open")
    assert alert.level == "breach"
    services.pool_limit_set(actor=admin, host=host, pool=test_pool, max_overcommit=None, reserve_percent=0)
    services.storage_check(actor=None)
    alert.refresh_from_db()
    assert alert.state == "cleared"
    assert UsageSample.objects.filter(host=host, pool=test_pool, vm__isnull=True).count() == 2


def test_acknowledging_an_alert_is_audited_once(operator, viewer, small_vm):
    off_vm = small_vm
    overfill(off_vm)
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=int(0.25 * GIB), confirmed=True)
    services.storage_check(actor=None)
    (alert,) = _alerts(off_vm)
    assert selectors.alert_badge_count(operator) >= 1
    with pytest.raises(Exception, match="permission"):
        services.alert_acknowledge(actor=viewer, alert_id=alert.pk)
    services.alert_acknowledge(actor=operator, alert_id=alert.pk)
    with pytest.raises(Conflict, match="already acknowledged by oscar-operator"):
        services.alert_acknowledge(actor=operator, alert_id=alert.pk)
    assert [e.outcome for e in events("storage.alert.acknowledge")] == ["denied", "success", "failed"]


def test_celery_beat_runs_the_check(settings, off_vm):
    from apps.storage.tasks import storage_check

    assert settings.CELERY_BEAT_SCHEDULE["storage-check"]["task"] == "apps.storage.tasks.storage_check"
    assert settings.CELERY_BEAT_SCHEDULE["storage-check"]["schedule"] == float(settings.STORAGE_CHECK_INTERVAL)
    result = storage_check()  # the task body, run here
    assert result["vms"] >= 1
    assert UsageSample.objects.filter(vm=off_vm).count() == 1


def test_snapshots_count_in_a_vms_allocation(operator, off_vm):
    uri, path = off_vm.host.uri, disk_path(off_vm)
    write_data(path, 64)
    before = gw.domain_disks_live(uri, off_vm.name).allocation
    gw.snapshot_create(uri, off_vm.name, "before-rewrite")  # internal qcow2 snapshot keeps the old clusters
    write_data(path, 64)  # the same 64 MiB again: new clusters, the old ones stay for the snapshot
    after = gw.domain_disks_live(uri, off_vm.name).allocation
    assert after - before >= 60 << 20
    view = services.quota_get(actor=operator, vm=off_vm)
    assert view.allocation == after
    services.storage_check(actor=None)
    assert UsageSample.objects.get(vm=off_vm).allocation == after


def test_an_unreachable_host_or_webhook_does_not_stop_the_check(operator, small_vm, settings):
    from apps.core.models import Host

    off_vm = small_vm
    Host.objects.create(name="ghost", uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    settings.NOTIFY_WEBHOOK_URL = "http://127.0.0.1:9/nothing-listens-here"
    overfill(off_vm)
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=int(0.25 * GIB), confirmed=True)
    report = services.storage_check(actor=None)
    assert [line.split(":")[0] for line in report.unreadable] == ["ghost"]
    assert StorageAlert.objects.get(vm=off_vm).level == "breach"  # raised although the webhook failed


def test_a_breach_action_changed_during_a_breach_applies_at_the_next_check(operator, small_vm):
    vm = small_vm
    uri = vm.host.uri
    overfill(vm)
    services.quota_set(actor=operator, vm=vm, limit_bytes=int(0.25 * GIB), confirmed=True)  # breach action: alert
    gw.domain_start(uri, vm.name)
    services.storage_check(actor=None)
    (alert,) = _alerts(vm)
    assert (alert.level, alert.action_applied) == ("breach", "")

    services.quota_set(actor=operator, vm=vm, breach_action="refuse")
    services.storage_check(actor=None)  # the breach goes on: same level, new action
    alert.refresh_from_db()
    assert (alert.state, alert.action_applied) == ("open", "refuse")
    with pytest.raises(Conflict, match="refuses growth"):
        services.volume_create(actor=operator, vm=vm, size_bytes=int(0.1 * GIB))

    services.quota_set(actor=operator, vm=vm, breach_action="suspend")
    report = services.storage_check(actor=None)
    alert.refresh_from_db()
    assert alert.action_applied == "suspend"
    assert gw.domain_state(uri, vm.name) == "paused"
    assert [line.split(":")[0] for line in report.suspended] == [vm.name]
    assert [e.params["on"] for e in events("storage.quota.refuse_growth")] == [True, False]  # refuse lifted

    services.quota_set(actor=operator, vm=vm, breach_action="alert")
    services.storage_check(actor=None)
    alert.refresh_from_db()
    assert alert.action_applied == ""
    assert gw.domain_state(uri, vm.name) == "running"  # what the check suspended, it resumed
    assert len(events("storage.alert.escalate")) + len(events("storage.alert.raise")) == 1  # one breach all along
