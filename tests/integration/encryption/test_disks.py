"""create-encrypted, list-encrypted, change-passphrase, header backup, escrow and recovery,
on real cryptsetup and the real libvirtd, through the services (jobs run in-process)."""

import os
import stat

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.common import stored_key

from .conftest import run_job

pytestmark = pytest.mark.libvirt


def _events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id").values_list("outcome", flat=True))


@pytest.fixture
def encrypted(shut_vm, operator, test_pool):
    job = services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool)
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    yield disk
    gw.volume_delete_if_exists(disk.host.uri, disk.pool, disk.volume)
    get = services.get_store()
    get.delete(disk.key_id)


def test_create_encrypted_makes_a_luks2_volume_with_its_key_in_the_store(encrypted, shut_vm):
    disk = encrypted
    assert disk.state == EncryptedDisk.State.READY
    info = cs.dump(disk.path)
    assert (info.version, info.cipher, info.key_size) == (2, "aes-xts-plain64", 512)
    assert info.pbkdf == "argon2id" and info.slot_numbers == [0]
    key = stored_key(services.get_store(), disk)
    assert len(key) == 64 and cs.test_key(disk.path, key)
    key_file = settings.ENCRYPTION_KEY_DIR / "disks" / f"{disk.key_id}.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(key_file.parent).st_mode) == 0o700
    assert key.hex().encode() not in key_file.read_bytes()
    targets = {d["target"]: d["path"] for d in gw.domain_disks_defined(shut_vm.host.uri, shut_vm.name)}
    # the guest is given the unlocked path, never the LUKS container
    assert targets[disk.target] == services.device_mapper().mapping_path(disk.mapping_name) != disk.path
    assert _events("encryption.disk.create") == ["requested", "success"]
    job = Job.objects.get(kind="encryption.disk.create")
    assert set(job.params) == {"size_gib", "pool", "kind", "volume", "disk_id"}


def test_list_encrypted_reports_cipher_key_size_pbkdf_slots_and_age(encrypted, operator, viewer):
    rows = services.disks_list(actor=operator)
    row = next(r for r in rows if r.disk.pk == encrypted.pk)
    assert (row.info.cipher, row.info.key_size, row.info.pbkdf, row.info.slot_numbers) == (
        "aes-xts-plain64",
        512,
        "argon2id",
        [0],
    )
    assert row.key_age_days == 0 and not row.rotation_due
    with pytest.raises(PermissionDenied):
        services.disks_list(actor=viewer)


def test_change_passphrase_replaces_the_key_and_keeps_the_disk_openable(encrypted, operator):
    store = services.get_store()
    old_key = stored_key(store, encrypted)
    job = run_job(services.disk_change_key(actor=operator, disk=encrypted, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.get(pk=encrypted.pk)
    new_key = stored_key(store, disk)
    assert new_key != old_key and disk.pending_key_id == ""
    assert cs.test_key(disk.path, new_key) and not cs.test_key(disk.path, old_key)
    assert len(cs.dump(disk.path).slot_numbers) == 1
    assert encrypted.key_id not in store.key_ids()
    # re-delivered job: nothing left to do, the disk still opens
    job = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING)
    job = run_job(job)
    disk.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and stored_key(store, disk) == new_key
    assert cs.test_key(disk.path, new_key)


def test_change_key_resumes_after_a_crash_between_add_and_kill(encrypted, operator):
    """Simulate a worker dying after luksAddKey: both slots exist; the rerun finishes."""
    store = services.get_store()
    old_key = stored_key(store, encrypted)
    pending = store.new_key_id()
    EncryptedDisk.objects.filter(pk=encrypted.pk).update(pending_key_id=pending)
    disk = EncryptedDisk.objects.get(pk=encrypted.pk)
    new_key = os.urandom(64)
    store.put(key_id=pending, vm_uuid=str(disk.vm_uuid), volume=disk.path, key=new_key)
    cs.add_key(disk.path, old_key, new_key, services.luks_params())
    assert len(cs.dump(disk.path).slot_numbers) == 2
    job = services.disk_change_key(actor=operator, disk=disk, confirmed=True)
    Job.objects.filter(pk=job.pk).update(params={**job.params, "new_key_id": pending})
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    disk.refresh_from_db()
    assert disk.key_id == pending and cs.test_key(disk.path, new_key) and not cs.test_key(disk.path, old_key)
    assert len(cs.dump(disk.path).slot_numbers) == 1


def test_header_backup_writes_a_0400_copy_of_the_header(encrypted, operator):
    job = run_job(services.disk_header_backup(actor=operator, disk=encrypted))
    assert job.state == Job.State.SUCCEEDED, job.error
    backup = job.result["file"]
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o400
    key = stored_key(services.get_store(), encrypted)
    assert cs.test_key(encrypted.path, key, header=backup)
    os.chmod(backup, 0o600)
    os.unlink(backup)


def test_escrow_export_and_recovery_test(encrypted, admin, operator):
    passphrase = "a recovery passphrase typed by the admin"
    with pytest.raises(PermissionDenied):
        services.disk_escrow_export(actor=operator, disk=encrypted, recovery_passphrase=passphrase)
    document = services.disk_escrow_export(actor=admin, disk=encrypted, recovery_passphrase=passphrase)
    key = stored_key(services.get_store(), encrypted)
    assert key not in document and key.hex().encode() not in document and passphrase.encode() not in document
    result = services.disk_recovery_test(actor=admin, disk=encrypted, escrow=document, recovery_passphrase=passphrase)
    assert result == {"stored_opens": True, "escrow_opens": True, "escrow_current": True}
    with pytest.raises(InvalidInput, match="Wrong recovery passphrase"):
        services.disk_recovery_test(
            actor=admin, disk=encrypted, escrow=document, recovery_passphrase="not the passphrase at all"
        )
    assert _events("encryption.key.recovery_test") == ["success", "failed"]
    assert _events("encryption.key.escrow_export") == ["denied", "success"]
    # nothing secret reached the audit log
    for event in AuditEvent.objects.all():
        text = f"{event.params} {event.error}"
        assert passphrase not in text and key.hex() not in text


def test_escrow_after_a_key_change_is_reported_stale(encrypted, admin, operator):
    passphrase = "a recovery passphrase typed by the admin"
    document = services.disk_escrow_export(actor=admin, disk=encrypted, recovery_passphrase=passphrase)
    run_job(services.disk_change_key(actor=operator, disk=encrypted, confirmed=True))
    disk = EncryptedDisk.objects.get(pk=encrypted.pk)
    with pytest.raises(InvalidInput, match="predates the last key change"):
        services.disk_recovery_test(actor=admin, disk=disk, escrow=document, recovery_passphrase=passphrase)


def test_tampered_key_file_fails_the_job_and_leaves_disk_and_store_as_before(encrypted, operator):
    store = services.get_store()
    key_file = settings.ENCRYPTION_KEY_DIR / "disks" / f"{encrypted.key_id}.key"
    original = key_file.read_bytes()
    header_before = cs.dump(encrypted.path)
    tampered = bytearray(original)
    pos = tampered.index(b'"wrapped": "') + 20
    tampered[pos] = ord("A") if tampered[pos] != ord("A") else ord("B")
    os.chmod(key_file, 0o600)
    key_file.write_bytes(bytes(tampered))
    os.chmod(key_file, 0o400)
    job = run_job(services.disk_change_key(actor=operator, disk=encrypted, confirmed=True))
    assert job.state == Job.State.FAILED
    assert "altered or belongs to another" in job.error
    assert cs.dump(encrypted.path) == header_before
    assert key_file.read_bytes() == bytes(tampered) and store.key_ids().count(encrypted.key_id) == 1
    assert _events("encryption.disk.change_key")[-1] == "failed"
    os.chmod(key_file, 0o600)
    key_file.write_bytes(original)
    os.chmod(key_file, 0o400)


def test_key_file_with_wrong_mode_is_refused(encrypted, operator):
    key_file = settings.ENCRYPTION_KEY_DIR / "disks" / f"{encrypted.key_id}.key"
    os.chmod(key_file, 0o644)
    try:
        job = run_job(services.disk_header_backup(actor=operator, disk=encrypted))
        assert job.state == Job.State.SUCCEEDED  # a header backup needs no key
        job = run_job(services.disk_change_key(actor=operator, disk=encrypted, confirmed=True))
        assert job.state == Job.State.FAILED and "mode 0644" in job.error
        assert cs.dump(encrypted.path).slot_numbers == [0]
    finally:
        os.chmod(key_file, 0o400)


def test_bad_inputs_are_refused_with_an_audit_event(shut_vm, operator, viewer, test_pool):
    with pytest.raises(InvalidInput, match="between 1 and"):
        services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=0, pool=test_pool)
    with pytest.raises(InvalidInput, match="whole number"):
        services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib="1; rm -rf /", pool=test_pool)
    with pytest.raises(InvalidInput, match="quota|free"):  # the quota is checked first
        services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=4096, pool=test_pool)
    with pytest.raises(PermissionDenied):
        services.disk_create_encrypted(actor=viewer, vm=shut_vm, size_gib=1, pool=test_pool)
    assert _events("encryption.disk.create") == ["failed", "failed", "failed", "denied"]
    assert not EncryptedDisk.objects.exists() and not Job.objects.exists()


def test_sealed_store_refuses_work_and_changes_nothing(shut_vm, operator, admin, test_pool, settings, tmp_path):
    settings.ENCRYPTION_KEY_DIR = tmp_path / "keys"
    settings.ENCRYPTION_RUNTIME_DIR = tmp_path / "run"
    settings.ENCRYPTION_KEK_PROVIDER = "passphrase"
    services.store_initialize(actor=admin, passphrase="the store passphrase, long enough")
    services.store_seal(actor=admin, confirmed=True)
    with pytest.raises(Conflict, match="sealed"):
        services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool)
    assert not EncryptedDisk.objects.exists()
    with pytest.raises(InvalidInput, match="Wrong passphrase"):
        services.store_unseal(actor=admin, passphrase="a wrong passphrase here")
    with pytest.raises(PermissionDenied):
        services.store_unseal(actor=operator, passphrase="the store passphrase, long enough")
    services.store_unseal(actor=admin, passphrase="the store passphrase, long enough")
    assert not services.store_status(actor=admin).sealed
    assert _events("encryption.store.unseal") == ["failed", "denied", "success"]


def test_a_disk_that_is_not_luks_is_refused(shut_vm, operator, admin, data_disk):
    path, digest, size = data_disk(4)
    disk = EncryptedDisk.objects.create(
        host=shut_vm.host, vm=shut_vm, vm_uuid=shut_vm.uuid, path=path, key_id="0" * 32, state="ready"
    )
    with pytest.raises(Conflict, match="not a LUKS device"):
        services.disk_header_backup(actor=operator, disk=disk)
    rows = services.disks_list(actor=operator)
    assert next(r for r in rows if r.disk.pk == disk.pk).error == f"{path} is not a LUKS device."
    assert _events("encryption.disk.header_backup") == ["failed"]
    with open(path, "rb") as fh:
        import hashlib

        assert hashlib.sha256(fh.read()).hexdigest() == digest
