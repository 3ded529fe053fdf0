"""End to end on the real Celery worker and the real libvirtd: no key in any process's
command line or environment while the operations run, a VM booting on a libvirt/QEMU
LUKS disk, and automatic unlock of LUKS2 disks at start (device-mapper simulated)."""

import os
from pathlib import Path

import pytest

from apps.core.errors import GatewayError
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.common import stored_key
from tests.conftest import wait_for_job

from .conftest import ProcessWatcher, run_job

pytestmark = [pytest.mark.libvirt]


def _cleanup(disk):
    try:
        gw.domain_force_off(disk.host.uri, disk.vm.name)
    except Exception:
        pass
    if disk.secret_uuid:
        gw.secret_remove(disk.host.uri, disk.secret_uuid)
    gw.volume_delete_if_exists(disk.host.uri, disk.pool, disk.volume)
    services.get_store().delete(disk.key_id)


@pytest.mark.worker
def test_no_key_ever_shows_in_a_process_list_or_a_job(worker, shut_vm, operator, admin, test_pool):
    keys = []
    with ProcessWatcher() as watcher:
        job = services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool)
        job = wait_for_job(job.pk, timeout=120)
        assert job.state == Job.State.SUCCEEDED, job.error
        disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
        keys.append(stored_key(services.get_store(), disk))
        job = wait_for_job(services.disk_change_key(actor=operator, disk=disk, confirmed=True).pk, timeout=120)
        assert job.state == Job.State.SUCCEEDED, job.error
        disk.refresh_from_db()
        keys.append(stored_key(services.get_store(), disk))
        document = services.disk_escrow_export(actor=admin, disk=disk, recovery_passphrase="escrow passphrase 123")
        services.disk_recovery_test(
            actor=admin, disk=disk, escrow=document, recovery_passphrase="escrow passphrase 123"
        )
    try:
        assert watcher.saw(b"luksFormat") and watcher.saw(b"luksAddKey") and watcher.saw(b"--test-passphrase")
        for key in keys:
            assert not watcher.seen(key)
        assert not watcher.saw(b"escrow passphrase 123")
        for job in Job.objects.all():
            text = repr(job.params) + repr(job.result) + repr(job.log) + job.error
            assert all(k.hex() not in text for k in keys)
        log = Path(worker["log"]).read_bytes()
        assert all(k not in log and k.hex().encode() not in log for k in keys)
    finally:
        _cleanup(disk)


@pytest.mark.worker
def test_a_vm_boots_on_a_libvirt_luks_disk(worker, shut_vm, operator, test_pool):
    job = services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool, kind="qemu-luks")
    job = wait_for_job(job.pk, timeout=180)
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    try:
        info = cs.dump(disk.path)
        assert info.version == 1 and info.slot_numbers  # QEMU's LUKS (version 1), listed by cryptsetup
        assert cs.test_key(disk.path, stored_key(services.get_store(), disk).hex().encode())
        # a wrong secret value: QEMU cannot open the disk and the VM does not start
        gw.secret_set_value(disk.host.uri, disk.secret_uuid, os.urandom(64).hex().encode())
        with pytest.raises(GatewayError):
            gw.domain_start(disk.host.uri, shut_vm.name)
        # the portal's start sets the secret from the store: the VM boots on the encrypted disk
        job = wait_for_job(services.vm_start_unlocked(actor=operator, vm=shut_vm).pk, timeout=120)
        assert job.state == Job.State.SUCCEEDED, job.error
        assert gw.domain_state(disk.host.uri, shut_vm.name) == "running"
        assert disk.path in {d.path for d in gw.domain_get(disk.host.uri, shut_vm.name).disks}
        job = wait_for_job(services.vm_stop_locked(actor=operator, vm=shut_vm, force=True, confirmed=True).pk)
        assert job.state == Job.State.SUCCEEDED, job.error
        assert gw.domain_state(disk.host.uri, shut_vm.name) == "shut off"
    finally:
        _cleanup(disk)


def test_luks2_disks_are_opened_at_start_and_closed_at_stop(shut_vm, operator, test_pool, settings):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    uri = disk.host.uri
    try:
        job = run_job(services.vm_start_unlocked(actor=operator, vm=shut_vm))
        assert job.state == Job.State.SUCCEEDED, job.error
        disk.refresh_from_db()
        dm = services.device_mapper()
        assert isinstance(dm, cs.SimulatedDeviceMapper)  # this machine has no device-mapper
        assert disk.mapping and dm.is_open(disk.mapping)
        sources = {d["target"]: d["path"] for d in gw.domain_disks_defined(uri, shut_vm.name)}
        assert sources[disk.target] == dm.mapping_path(disk.mapping)
        assert gw.domain_state(uri, shut_vm.name) == "running"
        job = run_job(services.vm_stop_locked(actor=operator, vm=shut_vm, force=True, confirmed=True))
        assert job.state == Job.State.SUCCEEDED, job.error
        disk.refresh_from_db()
        assert disk.mapping == "" and not dm.is_open(disk.mapping_name)
        # closed, the definition still names the (now absent) unlocked path, never the container
        defined = {d["target"]: d["path"] for d in gw.domain_disks_defined(uri, shut_vm.name)}
        assert defined[disk.target] == sources[disk.target]
    finally:
        _cleanup(disk)


def test_a_wrong_stored_key_keeps_the_vm_off(shut_vm, operator, test_pool):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    try:
        # the header is re-made with another key behind the store's back
        os.truncate(disk.path, 0)
        os.truncate(disk.path, disk.size_bytes)
        cs.luks_format(disk.path, os.urandom(64), services.luks_params())
        job = run_job(services.vm_start_unlocked(actor=operator, vm=shut_vm))
        assert job.state == Job.State.FAILED and "does not open" in job.error
        assert gw.domain_state(disk.host.uri, shut_vm.name) == "shut off"
    finally:
        _cleanup(disk)


def test_the_portals_own_vm_start_and_stop_open_and_close_encrypted_disks(shut_vm, operator, test_pool):
    """vms.vm.start / vms.vm.force_off (the VM page's buttons) run the encryption hooks."""
    from apps.vms.services import vm_lifecycle

    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    dm = services.device_mapper()
    try:
        job = run_job(vm_lifecycle(actor=operator, vm=shut_vm, action="start"))
        assert job.state == Job.State.SUCCEEDED, job.error
        disk.refresh_from_db()
        assert disk.mapping and dm.is_open(disk.mapping)
        assert any("opened encrypted disk" in line["msg"] for line in job.log)
        job = run_job(vm_lifecycle(actor=operator, vm=shut_vm, action="force_off", confirmed=True))
        assert job.state == Job.State.SUCCEEDED, job.error
        disk.refresh_from_db()
        assert disk.mapping == "" and not dm.is_open(disk.mapping_name)
    finally:
        _cleanup(disk)
