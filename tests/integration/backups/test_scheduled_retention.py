"""Beat applies each policy's retention after its runs: through the beat task function
(`tasks.backups_due`, what Celery beat calls), with real backups into a real restic
repository. Pruning takes restic's exclusive lock, so it waits while anything runs on that
repository, and a policy's runs wait while its retention runs. A failed retention is
audited, alerts, and is tried again on the next beat."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.backups import services, tasks
from apps.backups.models import BackupPolicy, BackupRun
from apps.backups.services import common
from apps.backups.services.restore import PRUNE, VERIFY
from apps.core.gateways import restic
from apps.core.models import Job
from apps.vms.models import VirtualMachine

from .conftest import run_job


@pytest.fixture
def notices(monkeypatch):
    from apps.monitoring import notifications

    seen = []
    monkeypatch.setattr(notifications, "notify", lambda notice: seen.append(notice) or [])
    return seen


def test_beat_applies_a_policys_retention_after_its_runs_and_never_beside_them(
    admin, shut_vm_with_data, destination, notices
):
    vm, _ = shut_vm_with_data
    policy = services.backup_policy_create(actor=admin, name="keep-one", destination=destination, selector="names",
                                           vm_names=[vm.name], keep_last=1, keep_daily=0, keep_weekly=0,
                                           keep_monthly=0)  # fmt: skip

    assert tasks.backups_due() == 1
    first = BackupRun.objects.get()
    assert not Job.objects.filter(kind=PRUNE).exists(), "retention was queued beside a queued run"
    assert run_job(first.job).state == "succeeded"

    assert tasks.backups_due() == 0  # no run due; the policy's retention is, now its run finished
    prune = Job.objects.get(kind=PRUNE)
    assert prune.actor_name == "system" and prune.params["policy"] == policy.pk and prune.params["keep_last"] == 1
    assert AuditEvent.objects.filter(action=f"{PRUNE}.request", outcome="success", actor_name="system").exists()
    assert tasks.backups_due() == 0 and Job.objects.filter(kind=PRUNE).count() == 1  # not queued twice

    # due again, but its retention is queued (restic's exclusive lock): the runs wait for a later beat
    BackupPolicy.objects.filter(pk=policy.pk).update(last_scheduled_at=timezone.now() - timedelta(hours=25))
    assert tasks.backups_due() == 0 and BackupRun.objects.count() == 1
    assert run_job(prune).state == "succeeded"
    assert prune.result == {"removed_snapshots": 0, "forgotten_runs": 0}

    assert tasks.backups_due() == 1  # the postponed runs start; no retention beside them
    second = BackupRun.objects.exclude(pk=first.pk).get()
    assert Job.objects.filter(kind=PRUNE).count() == 1
    assert run_job(second.job).state == "succeeded"

    assert tasks.backups_due() == 0
    prune = run_job(Job.objects.filter(kind=PRUNE).latest("pk"))
    assert prune.state == "succeeded", prune.error
    assert prune.result == {"removed_snapshots": 1, "forgotten_runs": 1}
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.forgotten_at is not None and second.good
    handle = common.open_repository(second.repository)
    assert [s.short_id for s in restic.snapshots(handle, tags=[f"vm:{vm.uuid}"])] == [second.snapshot_id[:8]]
    assert AuditEvent.objects.filter(action=PRUNE, outcome="success", job_id=prune.pk).exists()
    assert tasks.backups_due() == 0 and Job.objects.filter(kind=PRUNE).count() == 2  # nothing new to prune
    assert notices == []


def test_retention_waits_for_a_restore_and_a_failed_one_alerts_and_is_retried(
    admin, host, destination, notices
):
    policy = services.backup_policy_create(actor=admin, name="gone", destination=destination, keep_last=2)
    BackupPolicy.objects.filter(pk=policy.pk).update(last_scheduled_at=timezone.now())  # no run due: retention only
    repository = services.repository_for(destination)  # its row only: no restic repository there (gone)
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="pruned")
    run = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=host, repository=repository,
                                   policy=policy, state="succeeded", snapshot_id="aaaaaaaa",
                                   finished_at=timezone.now())  # fmt: skip
    verify = services.backup_verify(actor=admin, run=run)

    assert services.repository_busy(repository) == "a restore or verification"
    assert tasks.backups_due() == 0 and not Job.objects.filter(kind=PRUNE).exists()
    Job.objects.filter(pk=verify.pk).update(state=Job.State.FAILED)
    assert Job.objects.filter(kind=VERIFY).count() == 1

    assert [j.params["policy"] for j in services.backups_prune_due()] == [policy.pk]
    job = run_job(Job.objects.get(kind=PRUNE))

    assert job.state == "failed" and "is gone" in job.error
    assert AuditEvent.objects.filter(action=PRUNE, outcome="failed", job_id=job.pk).exists()
    assert [(n.name, n.subject, n.state) for n in notices] == [
        ("PortalBackupRetentionFailed", repository.path, "firing")
    ]
    assert len(services.backups_prune_due()) == 1  # tried again on the next beat
