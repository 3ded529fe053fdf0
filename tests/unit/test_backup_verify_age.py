"""How old a VM's last verification may be is what its backup policies allow (the strictest
enabled policy that covers it), BACKUP_VERIFY_MAX_AGE_DAYS for a VM no policy covers: the
Backups page flags by it, beat verifies by it, the posture check passes or fails by it."""

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.backups import selectors, services
from apps.backups.models import BackupPolicy, BackupRepository, BackupRun, BackupVerification
from apps.monitoring import posture
from apps.monitoring.models import Status
from apps.vms.models import VirtualMachine


@pytest.fixture
def verified_three_days_ago(host, settings):
    """Two VMs (zones "gold" and "default"), each with a good backup verified 3 days ago."""
    settings.BACKUP_VERIFY_MAX_AGE_DAYS = 7
    repo = BackupRepository.objects.create(path="/var/backups/hypervisor-portal/age", key_id="a" * 16)
    vms = {}
    for name, zone in (("strict", "gold"), ("relaxed", "default")):
        vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=name, zone=zone)
        run = BackupRun.objects.create(vm=vm, vm_name=name, vm_uuid=str(vm.uuid), host=host, repository=repo,
                                       state="succeeded", snapshot_id="abcdef12",
                                       finished_at=timezone.now())  # fmt: skip
        check = BackupVerification.objects.create(run=run, ok=True)
        BackupVerification.objects.filter(pk=check.pk).update(checked_at=timezone.now() - timedelta(days=3))
        vms[name] = (vm, run)
    return vms


def _overdue(admin, client) -> dict[str, bool]:
    statuses = {s.vm.name: s.verification_overdue for s in selectors.vm_statuses(admin)}
    client.force_login(admin)
    page = client.get(reverse("backups:index")).content.decode()
    for name, overdue in statuses.items():
        start = page.index(f'<tr data-vm="{name}">')
        row = page[start : page.index("</tr>", start)]
        assert ('data-testid="verify-overdue"' in row) is overdue, (name, row)
    return statuses


@pytest.mark.django_db
def test_the_policy_that_covers_a_vm_sets_how_old_its_verification_may_be(client, admin, host,
                                                                           verified_three_days_ago):  # fmt: skip
    strict_vm, strict_run = verified_three_days_ago["strict"]
    # no policy: the setting (7 days) holds, 3 days is fine everywhere
    assert _overdue(admin, client) == {"strict": False, "relaxed": False}
    assert services.backups_verify_due() == []
    assert posture._backups(host)[0] == Status.PASS

    # a zone policy that wants a verification every 2 days covers "strict" only
    BackupPolicy.objects.create(name="gold", selector="zone", zone="gold", destination="/var/backups/x",
                                verify_max_age_days=2)  # fmt: skip
    assert selectors.verify_max_age_days([strict_vm]) == {strict_vm.pk: 2}
    assert _overdue(admin, client) == {"strict": True, "relaxed": False}
    assert [j.params["run"] for j in services.backups_verify_due()] == [strict_run.pk]
    status, evidence = posture._backups(host)
    assert status == Status.FAIL and evidence.endswith(": strict") and "2-7 days (per policy)" in evidence

    # the strictest of several policies wins; a disabled policy counts for nothing
    BackupPolicy.objects.create(name="all-lax", selector="all", destination="/var/backups/y", verify_max_age_days=30)
    BackupPolicy.objects.create(name="off", selector="names", vm_names=["relaxed"], destination="/var/backups/z",
                                verify_max_age_days=1, enabled=False)  # fmt: skip
    allowed = selectors.verify_max_age_days(VirtualMachine.objects.order_by("name"))
    assert allowed == {verified_three_days_ago["relaxed"][0].pk: 30, strict_vm.pk: 2}
    assert _overdue(admin, client) == {"strict": True, "relaxed": False}


@pytest.mark.django_db
def test_beat_runs_the_backup_and_posture_tasks(host, settings, verified_three_days_ago):
    """The beat entries name real tasks with their intervals; their bodies run here: the
    verification task queues the verification the strict policy asks for."""
    from django.utils.module_loading import import_string

    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["backups-due"]["schedule"] == float(settings.BACKUP_DUE_CHECK_INTERVAL)
    assert schedule["backups-verify-due"]["schedule"] == 3600.0
    assert schedule["monitoring-posture-check"]["schedule"] == float(settings.POSTURE_CHECK_INTERVAL)
    assert schedule["monitoring-worker-heartbeat"]["schedule"] == 60.0
    for entry in ("backups-due", "monitoring-posture-check", "monitoring-worker-heartbeat"):
        assert callable(import_string(schedule[entry]["task"]).apply)
    assert import_string(schedule["backups-due"]["task"]).apply().get() == 0  # no policy: nothing due
    BackupPolicy.objects.create(name="gold", selector="zone", zone="gold", destination="/var/backups/x",
                                verify_max_age_days=2)  # fmt: skip
    assert import_string(schedule["backups-verify-due"]["task"]).apply().get() == 1
    from apps.core.models import Job

    (job,) = Job.objects.filter(kind="backups.run.verify")
    assert job.params["run"] == verified_three_days_ago["strict"][1].pk
