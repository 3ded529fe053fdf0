"""A worker that dies mid-job never leaves the job 'running'."""

import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.models import Job
from apps.vms import services
from tests.conftest import start_worker, stop_worker, unique, wait_for_job

pytestmark = [pytest.mark.libvirt, pytest.mark.worker]


def libvirtd_pid() -> int:
    return int(subprocess.run(["pgrep", "-xo", "libvirtd"], capture_output=True, text=True, timeout=5).stdout)


def test_a_worker_killed_mid_job_is_marked_failed_when_it_restarts(transactional_db, operator, vm):
    """kill -9 a worker in the middle of a job. To be sure the kill lands mid-job, libvirtd is
    frozen (SIGSTOP) so the job blocks inside its libvirt call. The same worker, restarted,
    marks the job failed: it is never left 'running'."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{unique('kill')}"
    hostname = f"{unique('killme')}@localhost"
    proc = start_worker(hostname, queue)
    daemon = libvirtd_pid()
    from hypervisor_web.celery import app

    session_queue = app.conf.task_default_queue
    with override_settings(CELERY_TASK_DEFAULT_QUEUE=queue):
        app.conf.task_default_queue = queue
        try:
            os.kill(daemon, signal.SIGSTOP)
            with transaction.atomic():
                job = jobs.job_enqueue(
                    actor=operator, kind="vms.vm.suspend", target=vm, host=vm.host, params={"action": "suspend"}
                )
            deadline = time.monotonic() + 30
            while Job.objects.get(pk=job.pk).state != Job.State.RUNNING:
                assert time.monotonic() < deadline, "the worker never started the job"
                time.sleep(0.05)
            proc.kill()
            proc.wait(timeout=10)
        finally:
            os.kill(daemon, signal.SIGCONT)
            app.conf.task_default_queue = session_queue
            if proc.poll() is None:
                proc.kill()
    job.refresh_from_db()
    assert (job.state, job.worker) == (Job.State.RUNNING, hostname)  # what a dead worker leaves behind
    proc = start_worker(hostname, queue)  # the same worker comes back
    try:
        job = wait_for_job(job.pk, timeout=30)
    finally:
        stop_worker(proc)
    assert job.state == Job.State.FAILED
    assert "restarted while running" in job.error
    assert AuditEvent.objects.filter(job_id=job.pk, outcome="failed").count() == 1


def test_stale_running_jobs_are_reaped(transactional_db, operator, vm):
    def running_job(heartbeat):
        return Job.objects.create(kind="vms.vm.suspend", target_type="virtualmachine", target_id=str(vm.pk),
                                  target_name=vm.name, actor=operator, actor_name=operator.username,
                                  state=Job.State.RUNNING, worker="gone@nowhere", heartbeat_at=heartbeat)  # fmt: skip

    stale = running_job(timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 5))
    fresh = running_job(timezone.now())
    assert jobs.jobs_reap_stale() == 1
    stale.refresh_from_db()
    assert (stale.state, "stopped reporting" in stale.error) == (Job.State.FAILED, True)
    assert Job.objects.get(pk=fresh.pk).state == Job.State.RUNNING
    assert AuditEvent.objects.get(job_id=stale.pk).outcome == "failed"


def test_a_redelivered_job_is_not_run_twice(worker, operator, vm):
    job = wait_for_job(services.vm_lifecycle(actor=operator, vm=vm, action="suspend").pk)
    assert job.state == Job.State.SUCCEEDED
    jobs.job_run(job.pk, worker="late-redelivery")  # acks_late redelivery of a finished job
    job.refresh_from_db()
    assert (job.state, job.attempts) == (Job.State.SUCCEEDED, 1)
    assert AuditEvent.objects.filter(job_id=job.pk, outcome="success").count() == 1


def test_progress_reaches_the_job_log(worker, operator, vm):
    job = wait_for_job(services.vm_lifecycle(actor=operator, vm=vm, action="suspend").pk)
    messages = [line["msg"] for line in job.log]
    assert any("suspend" in m for m in messages) and messages[-1] == "finished"
