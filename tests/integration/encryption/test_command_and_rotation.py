"""`manage.py vm_encryption` (the seed's commands) and KEK rotation as a job."""

import io
import os
import stat

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.common import stored_key

from .conftest import run_job

pytestmark = pytest.mark.libvirt


def _cmd(*args):
    out = io.StringIO()
    call_command("vm_encryption", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def cleanup(host):
    yield
    for disk in EncryptedDisk.objects.exclude(pool=""):
        gw.volume_delete_if_exists(host.uri, disk.pool, disk.volume)


def test_the_seed_commands_work_as_the_system_actor(host, shut_vm, test_pool, tmp_path, cleanup):
    out = _cmd("--no-wait", "create-encrypted", shut_vm.name, "1", "--pool", test_pool)
    assert "queued" in out
    job = run_job(Job.objects.get(kind="encryption.disk.create"))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert AuditEvent.objects.filter(action="encryption.disk.create", actor_name="system").count() == 2
    listing = _cmd("list-encrypted")
    assert shut_vm.name in listing and "aes-xts-plain64" in listing and "argon2id" in listing
    _cmd("--no-wait", "--yes", "change-passphrase", shut_vm.name)
    assert run_job(Job.objects.get(kind="encryption.disk.change_key")).state == Job.State.SUCCEEDED
    _cmd("--no-wait", "header-backup", shut_vm.name)
    assert run_job(Job.objects.get(kind="encryption.disk.header_backup")).state == Job.State.SUCCEEDED
    passfile = tmp_path / "recovery-pass"
    passfile.write_text("a long recovery passphrase\n")
    escrow = tmp_path / "escrow.json"
    _cmd("escrow-export", shut_vm.name, "--output", str(escrow), "--passphrase-file", str(passfile))
    assert stat.S_IMODE(os.stat(escrow).st_mode) == 0o400
    assert "passed" in _cmd("recovery-test", shut_vm.name, "--escrow", str(escrow), "--passphrase-file", str(passfile))
    passfile.write_text("the wrong passphrase\n")
    with pytest.raises(CommandError, match="Wrong recovery passphrase"):
        _cmd("recovery-test", shut_vm.name, "--escrow", str(escrow), "--passphrase-file", str(passfile))
    with pytest.raises(CommandError, match="exists"):
        _cmd("escrow-export", shut_vm.name, "--output", str(escrow), "--passphrase-file", str(passfile))


def test_the_command_checks_roles_with_as_user(host, shut_vm, viewer, operator, test_pool, cleanup):
    with pytest.raises(CommandError, match="permission"):
        _cmd("--as", viewer.username, "--no-wait", "create-encrypted", shut_vm.name, "1", "--pool", test_pool)
    _cmd("--as", operator.username, "--no-wait", "create-encrypted", shut_vm.name, "1", "--pool", test_pool)
    assert Job.objects.get(kind="encryption.disk.create").actor == operator
    with pytest.raises(CommandError, match="No VM named"):
        _cmd("--no-wait", "change-passphrase", "no-such-vm")


def test_kek_rotation_rewraps_every_key_without_touching_a_disk(host, shut_vm, admin, operator, test_pool, cleanup):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    store = services.get_store()
    key = stored_key(store, disk)
    header = cs.dump(disk.path)
    with open(disk.path, "rb") as fh:
        head = fh.read(1 << 20)
    before = store.current_version()
    with pytest.raises(Exception, match="encryption.keys"):
        services.kek_rotate(actor=operator, host=host, confirmed=True)
    job = run_job(services.kek_rotate(actor=admin, host=host, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.result["kek_version"] == before + 1 and job.result["retired"] == [before]
    assert store.describe(disk.key_id).kek_version == before + 1
    assert stored_key(store, disk) == key
    assert cs.dump(disk.path) == header
    with open(disk.path, "rb") as fh:
        assert fh.read(1 << 20) == head
    assert "kek_version" in Job.objects.get(pk=job.pk).params and len(job.params) == 1


def test_key_reminders_name_old_keys_and_missing_escrow(host, shut_vm, operator, test_pool, cleanup):
    from datetime import timedelta

    from django.utils import timezone

    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    out = _cmd("key-reminders")
    assert f"{shut_vm.name} {disk.target}: no escrow" in out and "no header backup" in out and "days old" not in out
    EncryptedDisk.objects.filter(pk=disk.pk).update(key_created_at=timezone.now() - timedelta(days=400))
    assert "key is 400 days old" in _cmd("key-reminders")
    assert "rotate!" in _cmd("list-encrypted")


# ---------------------------------------------------------------- operator clarity


def _ready_disk(operator, vm, pool):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=vm, size_gib=1, pool=pool))
    assert job.state == Job.State.SUCCEEDED, job.error
    return EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])


def _failed_disk(host, vm, tmp_path):
    return EncryptedDisk.objects.create(
        host=host,
        vm=vm,
        vm_uuid=vm.uuid,
        path=str(tmp_path / "gone.img"),
        target="vdz",
        key_id="f" * 32,
        state=EncryptedDisk.State.FAILED,
    )


def test_list_encrypted_has_a_state_column_and_errors_leave_the_cipher_column(
    host, shut_vm, operator, test_pool, tmp_path, cleanup
):
    disk = _ready_disk(operator, shut_vm, test_pool)
    _failed_disk(host, shut_vm, tmp_path)
    lines = _cmd("list-encrypted").splitlines()
    header = lines[0].split()
    assert header[:5] == ["VM", "DISK", "TYPE", "STATE", "CIPHER"]
    ready = next(line.split() for line in lines if disk.path in line)
    failed = next(line for line in lines if "gone.img" in line)
    assert ready[3] == "ready" and ready[4] == "aes-xts-plain64"
    fields = failed.split()
    assert fields[3] == "failed" and fields[4] == "-"  # the cipher column says no cipher, not the error
    assert failed.index("error:") > failed.index("gone.img")


def test_a_failed_disk_gets_no_header_backup_or_escrow_reminder(host, shut_vm, operator, test_pool, tmp_path, cleanup):
    disk = _ready_disk(operator, shut_vm, test_pool)
    _failed_disk(host, shut_vm, tmp_path)
    out = _cmd("key-reminders")
    assert f"{shut_vm.name} {disk.target}: no escrow" in out and "no header backup" in out
    assert "vdz" not in out


def test_yes_and_no_wait_work_anywhere_on_the_command_line(host, shut_vm, operator, test_pool, cleanup):
    _cmd("create-encrypted", shut_vm.name, "1", "--pool", test_pool, "--no-wait")
    assert run_job(Job.objects.get(kind="encryption.disk.create")).state == Job.State.SUCCEEDED
    for args in (
        ("change-passphrase", shut_vm.name, "--yes", "--no-wait"),
        ("--yes", "change-passphrase", shut_vm.name, "--no-wait"),
        ("--no-wait", "change-passphrase", "--yes", shut_vm.name),
    ):
        assert "queued" in _cmd(*args)
        job = run_job(Job.objects.filter(kind="encryption.disk.change_key").latest("id"))
        assert job.state == Job.State.SUCCEEDED, job.error
    _cmd("--as", operator.username, "change-passphrase", shut_vm.name, "--no-wait", "--yes", "--host", host.name)
    assert Job.objects.filter(kind="encryption.disk.change_key", actor=operator).count() == 1


def test_an_unknown_host_is_an_error_for_every_action(host, shut_vm):
    for args in (["list-encrypted"], ["key-reminders"], ["status"], ["change-passphrase", shut_vm.name]):
        with pytest.raises(CommandError, match="No host named 'no-such-host'"):
            _cmd(*args, "--host", "no-such-host")
        with pytest.raises(CommandError, match="No host named 'no-such-host'"):
            _cmd("--host", "no-such-host", *args)


def test_missing_escrow_and_passphrase_files_are_clear_errors(host, shut_vm, operator, test_pool, tmp_path, cleanup):
    _ready_disk(operator, shut_vm, test_pool)
    passfile = tmp_path / "pass"
    passfile.write_text("a long recovery passphrase\n")
    missing = str(tmp_path / "no-such-file")
    with pytest.raises(CommandError, match=r"Cannot read the escrow file .*no-such-file: No such file"):
        _cmd("recovery-test", shut_vm.name, "--escrow", missing, "--passphrase-file", str(passfile))
    with pytest.raises(CommandError, match=r"Cannot read the escrow file"):
        _cmd("--yes", "restore-key", shut_vm.name, "--escrow", missing, "--passphrase-file", str(passfile))
    with pytest.raises(CommandError, match=r"Cannot read the passphrase file .*no-such-file: No such file"):
        _cmd("escrow-export", shut_vm.name, "--output", str(tmp_path / "e.json"), "--passphrase-file", missing)
    assert not (tmp_path / "e.json").exists()


def test_a_stale_escrow_says_it_predates_a_key_change(host, shut_vm, operator, test_pool, tmp_path, cleanup):
    disk = _ready_disk(operator, shut_vm, test_pool)
    passfile = tmp_path / "pass"
    passfile.write_text("a long recovery passphrase\n")
    escrow = tmp_path / "escrow.json"
    _cmd("escrow-export", shut_vm.name, "--output", str(escrow), "--passphrase-file", str(passfile))
    assert "no escrow" not in _cmd("key-reminders")
    _cmd("--no-wait", "--yes", "change-passphrase", shut_vm.name)
    assert run_job(Job.objects.get(kind="encryption.disk.change_key")).state == Job.State.SUCCEEDED
    with pytest.raises(CommandError, match="predates the last key change"):
        _cmd("recovery-test", shut_vm.name, "--escrow", str(escrow), "--passphrase-file", str(passfile))
    assert f"{shut_vm.name} {disk.target}: " in _cmd("key-reminders")
    assert "escrow predates the last key change" in _cmd("key-reminders")
    event = AuditEvent.objects.filter(action="encryption.key.recovery_test").latest("id")
    assert event.outcome == "failed" and "predates" in event.error
