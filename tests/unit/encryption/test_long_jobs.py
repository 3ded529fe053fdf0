"""Long jobs (in-place encryption blocks in cryptsetup for hours): the heartbeat keeps
moving while the handler blocks, so the stale-job reaper leaves the job alone; such jobs
run in the task whose time limits exceed ENCRYPTION_COMMAND_TIMEOUT, below the broker's
visibility timeout. And who a job runs as when its user is gone."""

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from apps.core import jobs, tasks
from apps.core.models import Job


def _running_job(**fields) -> Job:
    return Job.objects.create(
        kind="encryption.disk.encrypt",
        target_type="virtualmachine",
        target_id="1",
        target_name="vm",
        actor_name="system",
        state=Job.State.RUNNING,
        worker="busy@here",
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS - 1),
        **fields,
    )


def test_the_heartbeat_moves_while_a_handler_blocks_and_the_reaper_leaves_the_job(transactional_db):
    job = _running_job()
    before = job.heartbeat_at
    with jobs.heartbeat(job, every=0.05):
        time.sleep(0.5)  # a long cryptsetup call
        later = timezone.now() + timedelta(seconds=10)  # past the stale cutoff of the first heartbeat
        assert jobs.jobs_reap_stale(now=later) == 0
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING and job.heartbeat_at > before
    stopped_at = job.heartbeat_at
    time.sleep(0.2)
    job.refresh_from_db()
    assert job.heartbeat_at == stopped_at  # the thread ended with the block


def test_long_jobs_run_in_the_long_task_with_limits_above_the_command_timeout(monkeypatch, db):
    import apps.encryption.services  # noqa: F401  (registers the handlers)

    timeout = settings.ENCRYPTION_COMMAND_TIMEOUT
    assert jobs.is_long("encryption.disk.encrypt") and not jobs.is_long("encryption.disk.change_key")
    assert jobs.task_for("encryption.disk.encrypt") is tasks.run_long_job
    assert jobs.task_for("encryption.disk.change_key") is tasks.run_job
    assert tasks.run_long_job.soft_time_limit > timeout and tasks.run_long_job.time_limit > timeout
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] > tasks.run_long_job.time_limit
    sent = []

    class Result:
        id = "task-1"

    monkeypatch.setattr(tasks.run_long_job, "apply_async", lambda args: sent.append(("long", args)) or Result())
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args: sent.append(("short", args)) or Result())
    job = _running_job()
    jobs._send(job.pk)
    other = _running_job()
    Job.objects.filter(pk=other.pk).update(kind="encryption.disk.change_key")
    jobs._send(other.pk)
    assert sent == [("long", [job.pk]), ("short", [other.pk])]


def test_a_job_runs_as_the_system_only_when_a_command_asked_without_a_user(db, django_user_model):
    user = django_user_model.objects.create_user(username="gone-soon", password="x" * 12)
    assert jobs.job_actor(_running_job()) is None  # system
    job = _running_job(actor=user)
    Job.objects.filter(pk=job.pk).update(actor_name=user.username)
    assert jobs.job_actor(Job.objects.get(pk=job.pk)) == user
    user.delete()
    with pytest.raises(PermissionDenied, match="no longer exists"):
        jobs.job_actor(Job.objects.get(pk=job.pk))
