"""Beat: policies start their runs when due (as the system), and the latest good backup of
each VM is verified when its last verification is too old. Scheduling only: the runs
themselves are exercised in test_backup_restore."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.backups import services
from apps.backups.models import BackupPolicy, BackupRun, BackupVerification
from apps.core.errors import InvalidInput
from apps.core.models import Job


def test_a_policy_starts_its_runs_when_due_and_not_before(admin, shut_vm_with_data, destination):
    vm, _ = shut_vm_with_data
    policy = services.backup_policy_create(actor=admin, name="nightly", destination=destination,
                                           selector="names", vm_names=[vm.name], interval_hours=24)  # fmt: skip

    started = services.backups_due()

    assert [r.vm for r in started] == [vm] and started[0].job.actor_name == "system"
    assert services.backups_due() == []  # not due again before its interval
    BackupPolicy.objects.filter(pk=policy.pk).update(last_scheduled_at=timezone.now() - timedelta(hours=25))
    assert services.backups_due() == []  # due, but the VM's run is still queued: refused, audited
    assert AuditEvent.objects.filter(action="backups.vm.backup.request", outcome="failed").exists()


def test_a_policy_outside_the_allowed_roots_is_refused(admin):
    with pytest.raises(InvalidInput, match="outside the allowed"):
        services.backup_policy_create(actor=admin, name="bad", destination="/srv/elsewhere")
    assert not BackupPolicy.objects.exists()


def test_the_latest_good_backup_is_verified_when_its_verification_is_old(shut_vm_with_data, destination):
    vm, _ = shut_vm_with_data
    repository = services.repository_for(destination)
    old = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=vm.host, repository=repository,
                                   state="succeeded", snapshot_id="aaaaaaaa")  # fmt: skip
    latest = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=vm.host,
                                      repository=repository, state="succeeded", snapshot_id="bbbbbbbb")  # fmt: skip
    BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=vm.host, repository=repository,
                             state="failed", error="Interrupted")  # fmt: skip

    jobs = services.backups_verify_due()

    assert [j.params["run"] for j in jobs] == [latest.pk]
    assert services.backups_verify_due() == []  # already queued
    Job.objects.filter(pk=jobs[0].pk).update(state="succeeded")
    BackupVerification.objects.create(run=latest, ok=True)
    assert services.backups_verify_due() == []  # verified recently
    BackupVerification.objects.filter(run=latest).update(checked_at=timezone.now() - timedelta(days=30))
    assert [j.params["run"] for j in services.backups_verify_due()] == [latest.pk]
    assert old.pk != latest.pk
