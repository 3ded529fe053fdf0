"""A real Celery worker process killed (SIGKILL) in the middle of a backup, its restic child
killed with it: the worker, restarted, marks the job and the run failed (never listed as
good); the backup retried runs past the dead run's lock to a good snapshot, which verifies
(restore, checksums, `restic check`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from django.test import override_settings

from apps.backups import selectors, services
from apps.backups.models import BackupRun
from apps.backups.services import common
from apps.core import jobs
from apps.core.gateways import restic
from apps.core.models import Job
from tests.conftest import start_worker, stop_worker, unique, wait_for_job

pytestmark = [pytest.mark.libvirt, pytest.mark.worker]
REAL_SEND = jobs._send  # the package conftest stops jobs going to Celery; this test wants a real worker


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_a_worker_killed_mid_backup_fails_the_run_and_the_retry_gives_a_verified_snapshot(
    transactional_db, monkeypatch, operator, shut_vm_with_data, destination
):
    from hypervisor_web.celery import app

    monkeypatch.setattr(jobs, "_send", REAL_SEND)
    vm, _ = shut_vm_with_data
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{unique('bkill')}"
    hostname = f"{unique('bkill')}@localhost"
    session_queue = app.conf.task_default_queue
    proc = start_worker(hostname, queue)
    with override_settings(CELERY_TASK_DEFAULT_QUEUE=queue):
        app.conf.task_default_queue = queue
        try:
            with transaction.atomic():
                run = services.backup_start(actor=operator, vm=vm, destination=destination)
            # catch restic's backup (after its repository was made) and freeze it: the kill lands mid-backup
            deadline, child = time.monotonic() + 60, None
            while child is None:
                assert time.monotonic() < deadline, "the worker never ran restic backup"
                child = next((p for p, cmd in children(proc.pid) if " backup " in cmd and destination in cmd), None)
                time.sleep(0.01)
            os.kill(child, signal.SIGSTOP)
            assert BackupRun.objects.get(pk=run.pk).state == BackupRun.State.RUNNING
            proc.kill()  # SIGKILL: the worker gets no chance to clean up
            proc.wait(timeout=10)
            os.kill(child, signal.SIGKILL)  # and restic dies with it (its lock stays behind)
            run.refresh_from_db()
            assert run.state == BackupRun.State.RUNNING and selectors.last_good(vm) is None

            proc = start_worker(hostname, queue)  # the same worker comes back: the lost job and run fail
            job = wait_for_job(run.job_id, timeout=30)
            assert job.state == Job.State.FAILED and "restarted while running" in job.error
            deadline = time.monotonic() + 30
            while BackupRun.objects.get(pk=run.pk).state != BackupRun.State.FAILED:
                assert time.monotonic() < deadline, "the interrupted run was not marked failed"
                time.sleep(0.2)
            run.refresh_from_db()
            assert not run.good and "Interrupted" in run.error and selectors.last_good(vm) is None

            # retried: runs past the dead run's stale lock, gives a good snapshot that verifies
            with transaction.atomic():
                retry = services.backup_start(actor=operator, vm=vm, destination=destination)
            assert wait_for_job(retry.job_id, timeout=90).state == Job.State.SUCCEEDED
            retry.refresh_from_db()
            assert retry.good and selectors.last_good(vm).pk == retry.pk
            with transaction.atomic():
                verify = services.backup_verify(actor=operator, run=retry)
            job = wait_for_job(verify.pk, timeout=90)
            assert job.state == Job.State.SUCCEEDED, job.error
        finally:
            app.conf.task_default_queue = session_queue
            stop_worker(proc)
    handle = common.open_repository(retry.repository)
    assert [s.id[:8] for s in restic.snapshots(handle)] == [retry.snapshot_id[:8]]  # the killed run left none
    restic.check(handle, timeout=60)
