"""Backups under faults: a wrong repository password, a missing key, a sealed key store
(the run fails closed: nothing is written), a lock left by a killed restic, a worker lost
mid-run (the run is failed, never listed as good). The password never reaches argv or the
environment of any command."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from pathlib import Path

import pytest
from django.test import override_settings

from apps.backups import selectors, services
from apps.backups.models import BackupRun
from apps.backups.services import common
from apps.core import jobs
from apps.core.gateways import restic
from apps.core.models import Job
from apps.encryption.services import get_store

from .conftest import run_job


def start_and_run(actor, vm, destination) -> BackupRun:
    run = services.backup_start(actor=actor, vm=vm, destination=destination)
    run_job(run.job)
    run.refresh_from_db()
    return run


def test_a_wrong_or_missing_password_fails_the_run_and_leaves_earlier_backups_intact(
    operator, shut_vm_with_data, destination
):
    vm, _ = shut_vm_with_data
    good = start_and_run(operator, vm, destination)
    repo = good.repository
    store = get_store()
    original = store.get(key_id=repo.key_id, vm_uuid=common.REPOSITORY_BINDING, volume=repo.path)
    store.put(key_id=repo.key_id, vm_uuid=common.REPOSITORY_BINDING, volume=repo.path, key=os.urandom(64),
              replace=True)  # fmt: skip

    bad = start_and_run(operator, vm, destination)

    assert bad.state == "failed" and not bad.good
    assert "does not open the backup repository" in bad.error
    assert "does not open" in bad.job.error
    store.delete(repo.key_id)  # the key is gone: fail closed, whatever is at the destination
    missing = start_and_run(operator, vm, destination)
    assert missing.state == "failed" and "missing from the key store" in missing.error

    store.put(key_id=repo.key_id, vm_uuid=common.REPOSITORY_BINDING, volume=repo.path, key=original)
    handle = common.open_repository(repo)
    assert [s.short_id for s in restic.snapshots(handle)] == [good.snapshot_id[:8]]
    restic.check(handle, timeout=60)


def test_a_sealed_key_store_fails_closed_and_writes_nothing(operator, shut_vm_with_data, destination, tmp_path):
    for name in ("keys", "run"):
        (tmp_path / name).mkdir(mode=0o700)
    with override_settings(ENCRYPTION_KEK_PROVIDER="passphrase", ENCRYPTION_KEY_DIR=tmp_path / "keys",
                           ENCRYPTION_RUNTIME_DIR=tmp_path / "run"):  # fmt: skip
        store = get_store()
        store.initialize(passphrase=b"a long test passphrase for the store")
        store.seal()
        vm, _ = shut_vm_with_data

        run = start_and_run(operator, vm, destination)

    assert run.state == "failed" and "sealed" in run.error
    assert not Path(destination).exists(), "something was written while the key store was sealed"


def test_a_lock_left_by_a_killed_restic_is_removed_and_the_repository_stays_consistent(
    operator, shut_vm_with_data, destination
):
    vm, _ = shut_vm_with_data
    good = start_and_run(operator, vm, destination)
    handle = common.open_repository(good.repository)
    # a restic backup killed mid-run (SIGKILL: no clean-up) leaves its lock and partial data
    read_end, write_end = os.pipe()
    os.write(write_end, handle.password)
    os.close(write_end)
    proc = subprocess.Popen(
        ["restic", "--repo", destination, "--password-file", f"/dev/fd/{read_end}", "--no-cache", "backup", "--stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(read_end,),
        env={"PATH": restic.PATH, "HOME": str(Path(destination).parent)},
    )  # fmt: skip
    os.close(read_end)
    deadline = time.monotonic() + 30
    while not glob.glob(f"{destination}/locks/*") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stdin.write(os.urandom(1 << 20))
    proc.kill()
    proc.wait()
    assert glob.glob(f"{destination}/locks/*"), "the killed run left no lock"
    with pytest.raises(restic.RepositoryLocked):
        restic.check(handle, timeout=60)

    job = run_job(services.backup_prune(actor=operator, repository=good.repository, keep_last=3))

    assert job.state == "succeeded", job.error
    assert not glob.glob(f"{destination}/locks/*")
    restic.check(handle, timeout=60)  # restic's own check passes after the killed run


def test_a_run_whose_worker_was_lost_is_failed_never_listed_as_good(operator, shut_vm_with_data, destination,
                                                                     monkeypatch):
    from apps.monitoring import notifications

    notices = []
    monkeypatch.setattr(notifications, "notify", lambda notice: notices.append(notice) or [])
    vm, _ = shut_vm_with_data
    run = services.backup_start(actor=operator, vm=vm, destination=destination)
    Job.objects.filter(pk=run.job_id).update(state=Job.State.RUNNING, worker="doomed@host")
    BackupRun.objects.filter(pk=run.pk).update(state=BackupRun.State.RUNNING, bytes_done=1 << 20, bytes_total=8 << 20)
    assert selectors.last_good(vm) is None  # running is not good, and neither is interrupted

    assert jobs.jobs_recover_worker("doomed@host") == 1  # the worker restarts
    assert services.backup_runs_reconcile() == 1

    run.refresh_from_db()
    assert run.state == "failed" and not run.good and "Interrupted" in run.error
    assert [(n.name, n.subject, n.state) for n in notices] == [("PortalBackupFailed", vm.name, "firing")]
    assert selectors.last_good(vm) is None
    run_job(run.job)  # delivered again: the finished job is left alone
    run.refresh_from_db()
    assert run.state == "failed" and len(notices) == 1  # failed once, notified once


@pytest.fixture
def small_destination():
    """A destination on a 12 MiB tmpfs of its own (unmounted afterwards)."""
    from django.conf import settings

    from tests.conftest import unique

    mountpoint = settings.BACKUP_ALLOWED_ROOTS[0] / unique("full")
    mountpoint.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mountpoint)],
                             capture_output=True, timeout=30)  # fmt: skip
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"this machine cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    yield str(mountpoint / "repo")
    subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
    mountpoint.rmdir()


def test_a_full_destination_fails_the_run_cleanly_and_earlier_backups_stay_restorable(
    operator, shut_vm_with_data, small_destination
):
    from .conftest import write_random

    vm, data_path = shut_vm_with_data
    good = start_and_run(operator, vm, small_destination)
    assert good.state == "succeeded", good.error
    write_random(data_path, 8)  # 8 new MiB do not fit in what is left

    full = start_and_run(operator, vm, small_destination)

    assert full.state == "failed" and not full.good
    assert "is full" in full.error, full.error
    job = run_job(services.backup_verify(actor=operator, run=good))  # restore + checksums + restic check
    assert job.state == "succeeded", job.error


def test_encrypted_disks_are_backed_up_as_their_containers_and_refused_while_running(
    operator, shut_vm_with_data, destination, libvirt_uri
):
    """A host-opened LUKS2 disk: the definition names the unlocked mapping, the backup
    reads the LUKS container (ciphertext stays ciphertext). While the VM runs it cannot be
    copied consistently: refused, nothing copied."""
    from apps.backups.services.backup import _disks_to_copy
    from apps.core.errors import Conflict
    from apps.core.gateways import libvirt as gw
    from apps.encryption.models import EncryptedDisk
    from apps.encryption.services.common import device_mapper

    vm, container = shut_vm_with_data  # its random-data disk stands in for a LUKS2 container
    disk = EncryptedDisk.objects.create(host=vm.host, vm=vm, vm_uuid=vm.uuid, path=container, target="vdb",
                                        kind=EncryptedDisk.Kind.LUKS2, state="ready", key_id="k1")  # fmt: skip
    mapping = device_mapper().mapping_path(disk.mapping_name)
    xml = gw.domain_xml_defined(libvirt_uri, vm.name).replace(container, mapping)
    assert mapping in xml

    copied = {d["target"]: d for d in _disks_to_copy(vm, xml, running=False)}
    assert copied["vdb"]["path"] == container and copied["vdb"]["encrypted"] and copied["vdb"]["format"] == "raw"
    with pytest.raises(Conflict, match="cannot be copied consistently while running"):
        _disks_to_copy(vm, xml, running=True)


def test_a_destination_that_is_not_writable_fails_the_run_with_the_reason_and_writes_nothing(
    operator, shut_vm_with_data
):
    """A read-only file system under the allowed root (root ignores mode bits, not that):
    the directory itself, then a new directory inside it. The run fails with the reason,
    nothing is written there, and no run counts as good."""
    from django.conf import settings

    from apps.audit.models import AuditEvent
    from tests.conftest import unique

    vm, _ = shut_vm_with_data
    mountpoint = settings.BACKUP_ALLOWED_ROOTS[0] / unique("ro")
    mountpoint.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "tmpfs", str(mountpoint)],
                             capture_output=True, timeout=30)  # fmt: skip
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"this machine cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    try:
        itself = start_and_run(operator, vm, str(mountpoint))
        assert itself.state == "failed" and not itself.good
        assert itself.error == f"The destination {mountpoint} is not writable."
        inside = start_and_run(operator, vm, str(mountpoint / "repo"))
        assert inside.state == "failed" and not inside.good
        assert "cannot be created: Read-only file system" in inside.error, inside.error
        assert list(mountpoint.iterdir()) == []
        assert selectors.last_good(vm) is None
        failed = AuditEvent.objects.filter(action="backups.vm.backup", outcome="failed").count()
        assert failed == 2
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
        mountpoint.rmdir()
