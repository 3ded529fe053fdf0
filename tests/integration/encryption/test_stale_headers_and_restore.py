"""A key change leaves older header backups stale (they still open the disk with the old
key) and they can be destroyed; a lost or damaged disk key comes back from its escrow."""

import io
import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core.errors import InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk, HeaderBackup
from apps.encryption.services.common import stored_key
from tests.conftest import reauthenticate

from .conftest import run_job

pytestmark = pytest.mark.libvirt

RECOVERY = "a long recovery passphrase"


def _cmd(*args):
    out = io.StringIO()
    call_command("vm_encryption", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def make_disk(operator, test_pool, host):
    made = []

    def make(vm):
        job = run_job(services.disk_create_encrypted(actor=operator, vm=vm, size_gib=1, pool=test_pool))
        assert job.state == Job.State.SUCCEEDED, job.error
        disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
        made.append(disk)
        return disk

    yield make
    store = services.get_store()
    for disk in made:
        gw.volume_delete_if_exists(host.uri, disk.pool, disk.volume)
        # the run's key store is shared: leave no damaged key file for the next test (KEK rotation)
        store.delete(EncryptedDisk.objects.get(pk=disk.pk).key_id)


def _change_key(operator, disk):
    job = run_job(services.disk_change_key(actor=operator, disk=disk, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk.refresh_from_db()


# ---------------------------------------------------------------- stale header backups


def test_a_key_change_marks_older_header_backups_stale_and_they_can_be_destroyed(shut_vm, operator, make_disk):
    disk = make_disk(shut_vm)
    old_key = stored_key(services.get_store(), disk)
    assert run_job(services.disk_header_backup(actor=operator, disk=disk)).state == Job.State.SUCCEEDED
    backup = HeaderBackup.objects.get(disk=disk)
    assert backup.key_id == disk.key_id and not backup.stale and os.path.exists(backup.path)
    assert "header" not in _cmd("key-reminders")  # only "no escrow" is left

    _change_key(operator, disk)
    # the real danger: the old key no longer opens the disk, but it does with the old header
    assert not cs.test_key(disk.path, old_key)
    assert cs.test_key(disk.path, old_key, header=backup.path)
    backup.refresh_from_db()
    assert backup.stale
    reminders = _cmd("key-reminders")
    assert "header backup predates the last key change: header-backup again" in reminders
    assert "stale header backups still open the disk with the old key (1): destroy-stale-headers" in reminders

    with pytest.raises(CommandError, match="needs confirmation"):  # no terminal, no --yes
        _cmd("destroy-stale-headers", shut_vm.name)
    assert os.path.exists(backup.path)
    out = _cmd("destroy-stale-headers", shut_vm.name, "--yes")
    assert f"destroyed {backup.path}" in out
    assert not os.path.exists(backup.path) and not HeaderBackup.objects.filter(pk=backup.pk).exists()
    event = AuditEvent.objects.filter(action="encryption.disk.header_backup_destroy").latest("id")
    assert event.outcome == "success" and event.params["files"] == [backup.path]
    assert "stale header backup" not in _cmd("key-reminders")
    with pytest.raises(CommandError, match="no stale header backup"):
        _cmd("destroy-stale-headers", shut_vm.name, "--yes")


def test_stale_header_backups_show_on_the_disk_page_and_are_destroyed_there(client, shut_vm, operator, make_disk):
    disk = make_disk(shut_vm)
    assert run_job(services.disk_header_backup(actor=operator, disk=disk)).state == Job.State.SUCCEEDED
    _change_key(operator, disk)
    backup = HeaderBackup.objects.get(disk=disk)
    client.force_login(operator)
    page = client.get(reverse("encryption:disk", args=[disk.pk])).content.decode()
    assert 'data-testid="stale-header-backups"' in page and backup.path in page
    assert "stale header backups still open the disk with the old key (1)" in page  # the reminders
    index = client.get(reverse("encryption:index")).content.decode()
    assert "stale header backups still open the disk with the old key (1)" in index
    url = reverse("encryption:destroy_stale", args=[disk.pk])
    assert client.post(url, {"confirm": "yes"}).status_code == 302 and os.path.exists(backup.path)  # no re-auth yet
    reauthenticate(client)
    assert client.post(url, {}).status_code == 400 and os.path.exists(backup.path)  # unconfirmed
    refused = AuditEvent.objects.filter(action="encryption.disk.header_backup_destroy").latest("id")
    assert refused.outcome == "failed" and "confirmation" in refused.error
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert not os.path.exists(backup.path)


# ---------------------------------------------------------------- restore from escrow


def _export(tmp_path, vm, name="escrow.json"):
    passfile = tmp_path / "pass"
    passfile.write_text(RECOVERY + "\n")
    escrow = tmp_path / name
    _cmd("escrow-export", vm.name, "--output", str(escrow), "--passphrase-file", str(passfile))
    return escrow, passfile


def _damage(store, disk):
    path = store.directory / "disks" / f"{disk.key_id}.key"
    os.chmod(path, 0o600)
    path.write_bytes(b"{}")
    os.chmod(path, 0o400)


@pytest.mark.parametrize("loss", ["deleted", "corrupted"])
def test_a_lost_disk_key_is_restored_from_escrow_and_tested(shut_vm, make_disk, tmp_path, loss):
    disk = make_disk(shut_vm)
    store = services.get_store()
    key = stored_key(store, disk)
    escrow, passfile = _export(tmp_path, shut_vm)
    if loss == "deleted":
        store.delete(disk.key_id)
    else:
        _damage(store, disk)
    with pytest.raises(Exception, match="Restore it from escrow"):
        stored_key(store, disk)
    with pytest.raises(CommandError, match="needs confirmation"):
        _cmd("restore-key", shut_vm.name, "--escrow", str(escrow), "--passphrase-file", str(passfile))
    out = _cmd("restore-key", shut_vm.name, "--escrow", str(escrow), "--passphrase-file", str(passfile), "--yes")
    assert "restored from escrow; recovery test passed" in out
    assert stored_key(store, disk) == key and cs.test_key(disk.path, stored_key(store, disk))
    disk.refresh_from_db()
    assert disk.recovery_tested_at is not None
    event = AuditEvent.objects.filter(action="encryption.key.restore").latest("id")
    assert event.outcome == "success" and event.params["recovery_test"] == "passed"
    assert RECOVERY not in f"{event.params} {event.error}" and key.hex() not in f"{event.params}"
    # the stored key works again: a second restore has nothing to do
    with pytest.raises(CommandError, match="nothing to restore"):
        _cmd("restore-key", shut_vm.name, "--escrow", str(escrow), "--passphrase-file", str(passfile), "--yes")


def test_restore_refuses_a_wrong_passphrase_and_another_disks_escrow(shut_vm, admin, make_disk, tmp_path):
    disk = make_disk(shut_vm)
    other = make_disk(shut_vm)
    store = services.get_store()
    document = services.disk_escrow_export(actor=admin, disk=other, recovery_passphrase=RECOVERY)
    _damage(store, disk)
    with pytest.raises(InvalidInput, match="belongs to"):
        services.disk_key_restore(actor=admin, disk=disk, escrow=document, recovery_passphrase=RECOVERY, confirmed=True)
    with pytest.raises(InvalidInput, match="Wrong recovery passphrase"):
        services.disk_key_restore(
            actor=admin, disk=other, escrow=document, recovery_passphrase="not the passphrase", confirmed=True
        )
    outcomes = AuditEvent.objects.filter(action="encryption.key.restore").values_list("outcome", "error")
    assert [o for o, _ in outcomes] == ["failed", "failed"]
    assert any("belongs to" in e for _, e in outcomes) and any("Wrong recovery passphrase" in e for _, e in outcomes)
    with pytest.raises(Exception):  # the damaged key file was left as it was
        stored_key(store, disk)


def test_restore_from_the_page_needs_reauthentication_and_the_keys_permission(
    client, admin, operator, shut_vm, make_disk, tmp_path
):
    disk = make_disk(shut_vm)
    store = services.get_store()
    escrow, _ = _export(tmp_path, shut_vm)
    store.delete(disk.key_id)
    url = reverse("encryption:key_restore", args=[disk.pk])

    def post(**extra):
        data = {"escrow": SimpleUploadedFile("e.json", escrow.read_bytes()), "recovery_passphrase": RECOVERY}
        return client.post(url, {**data, **extra})

    client.force_login(operator)
    assert post(confirm="yes").status_code == 403
    client.force_login(admin)
    response = post(confirm="yes")
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:reauth"))
    reauthenticate(client)
    assert post().status_code == 400  # unconfirmed
    assert post(confirm="yes").status_code == 302
    assert cs.test_key(disk.path, stored_key(store, disk))


def test_a_lost_key_store_is_restored_from_the_escrow_files(shut_vm, admin, make_disk, tmp_path):
    import shutil

    disks = [make_disk(shut_vm), make_disk(shut_vm)]
    store = services.get_store()
    keys = [stored_key(store, d) for d in disks]
    files = []
    for i, disk in enumerate(disks):
        path = tmp_path / f"escrow-{i}.json"
        path.write_bytes(services.disk_escrow_export(actor=admin, disk=disk, recovery_passphrase=RECOVERY))
        files.append(str(path))
    junk = tmp_path / "junk.json"
    junk.write_text('{"binding": {"vm_uuid": "not-a-uuid"}}')
    passfile = tmp_path / "pass"
    passfile.write_text(RECOVERY + "\n")
    shutil.rmtree(store.directory)  # the whole key store is lost
    with pytest.raises(CommandError, match="1 of 3 escrow file"):
        _cmd("--yes", "restore-store", *files, str(junk), "--passphrase-file", str(passfile))
    store = services.get_store()
    for disk, key in zip(disks, keys, strict=True):
        assert stored_key(store, disk) == key and cs.test_key(disk.path, key)
    summary = AuditEvent.objects.filter(action="encryption.store.restore").latest("id")
    assert summary.params == {"files": 3, "restored": 2} and summary.outcome == "failed"
    assert AuditEvent.objects.filter(action="encryption.key.restore", outcome="success").count() == 2


def test_a_qemu_luks_disk_key_is_tested_and_restored_with_its_libvirt_secret(shut_vm, admin, operator, test_pool, host):
    """QEMU opens these disks with the key in hex (the libvirt secret's value): the recovery
    test and the restore check the header with that passphrase (the secret is private: its
    value cannot be read back here)."""
    job = run_job(
        services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool, kind="qemu-luks")
    )
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    store = services.get_store()
    try:
        key = stored_key(store, disk)
        document = services.disk_escrow_export(actor=admin, disk=disk, recovery_passphrase=RECOVERY)
        result = services.disk_recovery_test(actor=admin, disk=disk, escrow=document, recovery_passphrase=RECOVERY)
        assert result["stored_opens"] and result["escrow_opens"]
        store.delete(disk.key_id)
        services.disk_key_restore(actor=admin, disk=disk, escrow=document, recovery_passphrase=RECOVERY, confirmed=True)
        assert stored_key(store, disk) == key
    finally:
        gw.volume_delete_if_exists(host.uri, disk.pool, disk.volume)
        gw.secret_remove(host.uri, disk.secret_uuid)
        store.delete(disk.key_id)


def test_header_backups_written_before_tracking_are_registered_and_the_old_ones_marked_stale(
    host, shut_vm, settings, tmp_path
):
    import importlib
    from datetime import timedelta

    from django.apps import apps
    from django.utils import timezone

    migration = importlib.import_module("apps.encryption.migrations.0002_header_backups")
    settings.ENCRYPTION_HEADER_BACKUP_DIR = tmp_path
    disk = EncryptedDisk.objects.create(
        host=host, vm=shut_vm, vm_uuid=shut_vm.uuid, path="/p/d.img", volume="d.img", key_id="a" * 32,
        state=EncryptedDisk.State.READY, key_created_at=timezone.now() - timedelta(days=1),
    )  # fmt: skip
    old, new = tmp_path / f"{shut_vm.name}-d.img-1.luksheader", tmp_path / f"{shut_vm.name}-d.img-2.luksheader"
    old.write_bytes(b"h")
    new.write_bytes(b"h")
    two_days_ago = (timezone.now() - timedelta(days=2)).timestamp()
    os.utime(old, (two_days_ago, two_days_ago))
    (tmp_path / "another-vm-d.img-1.luksheader").write_bytes(b"h")
    migration.register_existing_backups(apps, None)
    rows = {b.path: (b.stale, b.key_id) for b in HeaderBackup.objects.filter(disk=disk)}
    assert rows == {str(old): (True, ""), str(new): (False, disk.key_id)}
