"""Fixtures of the backup tests: the key store ready, jobs run in this process (the code
the Celery task runs), a shut-off VM with a raw disk of random data, and destinations
under this run's allowed backup root."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from django.conf import settings

from apps.core import jobs
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption.services import get_store
from apps.vms.models import VirtualMachine
from apps.vms.services import inventory_sync
from tests.conftest import unique


@pytest.fixture(scope="session", autouse=True)
def _backup_dirs_removed_at_the_end():
    yield
    shutil.rmtree(settings.BACKUP_STAGING_DIR.parent, ignore_errors=True)
    run_dir = settings.ENCRYPTION_KEY_DIR.parent
    if run_dir.parent.name == "test-encryption":
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _store_ready():
    get_store().initialize()


@pytest.fixture(autouse=True)
def _no_celery(monkeypatch):
    """Jobs run here with run_job; the commit must not also hand them to a worker."""
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)


def run_job(job: Job) -> Job:
    jobs.job_run(job.pk, worker="pytest")
    job.refresh_from_db()
    return job


@pytest.fixture
def destination():
    """A new directory path under the allowed root (not created: the first backup makes it)."""
    return str(settings.BACKUP_ALLOWED_ROOTS[0] / unique("repo"))


def write_random(path: str, mib: int) -> str:
    digest = hashlib.sha256()
    with open(path, "r+b") as fh:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


@pytest.fixture
def shut_vm_with_data(host, make_domain, libvirt_uri, test_pool):
    """A shut-off VM (16 MiB empty qcow2 boot disk) with an 8 MiB raw disk of random data."""
    made = []
    name = make_domain(running=False, disk_gib=16 / 1024)
    vol = gw.volume_create(libvirt_uri, test_pool, f"{unique('data')}.img", 8 << 20, fmt="raw")
    made.append(vol.name)
    write_random(vol.path, 8)
    gw.domain_disk_attach(libvirt_uri, name, vol.path, fmt="raw")
    inventory_sync(host)
    yield VirtualMachine.objects.get(host=host, name=name), vol.path
    for vol_name in made:
        try:
            gw.volume_delete(libvirt_uri, test_pool, vol_name)
        except Exception:
            pass
