"""A VM with a real LUKS2 container (cryptsetup, opened by the host; the device-mapper step is
the test settings' SIMULATED mapper): its LUKS header and disk key are backed up apart from
the disk image, in a restic repository of their own, wrapped; verification checks the saved
key opens the restored container; a restore to a new VM gives that VM the disk under a new
key id in the key store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from apps.backups import services
from apps.backups.models import BackupRepository, BackupRun, BackupVerification
from apps.backups.services import common
from apps.core.errors import Conflict
from apps.core.gateways import libvirt as gw
from apps.core.gateways import restic
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk
from apps.encryption.services import device_mapper, get_store, luks_params
from apps.encryption.services.common import stored_key
from apps.vms.models import VirtualMachine
from apps.vms.services import inventory_sync
from tests.conftest import unique

from .conftest import run_job

pytestmark = pytest.mark.libvirt


@pytest.fixture
def vm_with_luks2(host, make_domain, libvirt_uri, test_pool):
    """A shut-off VM whose vdb is a 20 MiB LUKS2 container (its key in the store); the
    definition names the unlocked mapping, as the encryption app makes it."""
    name = make_domain(running=False, disk_gib=16 / 1024)
    vol = gw.volume_ensure_raw(libvirt_uri, test_pool, f"{unique('enc')}.img", 20 << 20)
    key = os.urandom(64)
    cs.luks_format(vol.path, key, luks_params())
    inventory_sync(host)
    vm = VirtualMachine.objects.get(host=host, name=name)
    store = get_store()
    disk = EncryptedDisk.objects.create(
        host=host, vm=vm, vm_uuid=vm.uuid, path=vol.path, pool=test_pool, volume=vol.name, target="vdb",
        kind=EncryptedDisk.Kind.LUKS2, state=EncryptedDisk.State.READY, key_id=store.new_key_id(),
    )  # fmt: skip
    store.put(key_id=disk.key_id, vm_uuid=str(vm.uuid), volume=vol.path, key=key)
    mapping = device_mapper().mapping_path(disk.mapping_name)
    gw.domain_disk_attach_xml(libvirt_uri, name, gw.disk_encrypted_xml(source=mapping, target="vdb"))
    yield vm, disk, key
    gw.volume_delete_if_exists(libvirt_uri, test_pool, vol.name)


def test_luks_headers_and_keys_are_backed_up_apart_and_a_luks2_disk_restores_to_a_new_vm(
    operator, vm_with_luks2, destination, libvirt_uri, test_pool, tmp_path
):
    vm, disk, key = vm_with_luks2
    run = services.backup_start(actor=operator, vm=vm, destination=destination)
    job = run_job(run.job)
    run.refresh_from_db()
    assert job.state == "succeeded", job.error

    # apart: a repository of its own (its own password in the store), a snapshot tagged luks-keys
    assert run.keys_snapshot_id and run.keys_repository.path == f"{destination}-keys"
    assert run.keys_repository.purpose == BackupRepository.Purpose.KEYS
    assert run.keys_repository.key_id != run.repository.key_id
    disk_snaps = restic.snapshots(common.open_repository(run.repository))
    assert not any("keys-" in p for s in disk_snaps for p in s.paths), "key material went in with the disks"
    keys_handle = common.open_repository(run.keys_repository)
    [snap] = restic.snapshots(keys_handle, tags=["luks-keys"])
    assert snap.id.startswith(run.keys_snapshot_id) and f"vm:{vm.uuid}" in snap.tags
    restic.restore(keys_handle, snap.id, str(tmp_path), timeout=60)
    saved = {p.name: p for p in tmp_path.rglob("*") if p.is_file()}
    assert {"vdb.luksheader", "vdb.key.json", "encryption.json"} <= set(saved)
    blob = saved["vdb.key.json"].read_bytes()
    assert key.hex().encode() not in blob and key not in blob, "the disk key was saved unwrapped"
    assert cs.test_key(disk.path, key, header=str(saved["vdb.luksheader"]))
    assert not list(Path(settings.BACKUP_STAGING_DIR).glob("keys-*")), "exported key material was left behind"
    # the disk repository is never reused for key material (nor the reverse)
    with pytest.raises(Conflict, match="cannot also hold"):
        common.repository_for(destination, BackupRepository.Purpose.KEYS)

    # verification: checksums, restic check, and the saved key opens the restored container
    job = run_job(services.backup_verify(actor=operator, run=run))
    assert job.state == "succeeded", job.error
    assert BackupVerification.objects.get(run=run).details["keys"] == "1 open their disks"

    # restore to a new VM: the container comes back, its key goes into the store under a new id
    new_name = unique("restored")
    try:
        job = run_job(services.backup_restore(actor=operator, run=run, new_name=new_name, pool=test_pool))
        assert job.state == "succeeded", job.error
        new_vm = VirtualMachine.objects.get(host=vm.host, name=new_name, present=True)
        new_disk = EncryptedDisk.objects.get(vm=new_vm)
        assert new_disk.key_id != disk.key_id and new_disk.path != disk.path and new_disk.is_ready
        assert stored_key(get_store(), new_disk) == key
        assert cs.test_key(new_disk.path, key)
        defined = {d["target"]: d["path"] for d in gw.domain_disks_parse(gw.domain_xml_defined(libvirt_uri, new_name))}
        assert defined["vdb"] == device_mapper().mapping_path(new_disk.mapping_name)
        assert stored_key(get_store(), disk) == key  # the original is untouched
    finally:
        try:
            gw.domain_undefine(libvirt_uri, new_name)
        finally:
            for path in Path(gw.pool_path(libvirt_uri, test_pool)).glob(f"{new_name}-*"):
                path.unlink()
            for leftover in EncryptedDisk.objects.filter(vm__name=new_name):
                get_store().delete(leftover.key_id)

    # a backup without saved key material cannot give a new VM its disk: refused with the reason
    BackupRun.objects.filter(pk=run.pk).update(keys_snapshot_id="")
    run.refresh_from_db()
    with pytest.raises(Conflict, match="no key material saved"):
        services.backup_restore(actor=operator, run=run, new_name=unique("refused"), pool=test_pool)
