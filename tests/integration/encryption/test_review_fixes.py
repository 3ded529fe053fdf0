"""The security review's findings, each as a specification: a key change that died after
removing the old slot is finished, not lost; destructive services need a confirmation;
a job whose user was deleted is denied; a crafted escrow file is refused; the first store
passphrase has a minimum length and unsealing is throttled; long jobs keep their heartbeat
and run in the long task."""

import io
import json
import os
import time

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.keystore import escrow_wrap
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.common import stored_key

from .conftest import run_job

pytestmark = pytest.mark.libvirt

PASSPHRASE = "a recovery passphrase typed by the admin"


def _events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id").values_list("outcome", flat=True))


@pytest.fixture
def encrypted(shut_vm, operator, test_pool):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    yield disk
    gw.volume_delete_if_exists(disk.host.uri, disk.pool, disk.volume)


# ------------------------------------------------------------ 1. change-key crash recovery


def test_a_change_that_died_after_removing_the_old_slot_is_finished_by_the_next_one(encrypted, operator):
    """The worker died after killing the old slot and before recording the new key id: the
    only slot left opens with the pending key. The next change must not delete that key."""
    store = services.get_store()
    disk = encrypted
    old_key_id, old_key = disk.key_id, stored_key(store, disk)
    pending = store.new_key_id()
    pending_key = os.urandom(64)
    store.put(key_id=pending, vm_uuid=str(disk.vm_uuid), volume=disk.path, key=pending_key)
    EncryptedDisk.objects.filter(pk=disk.pk).update(pending_key_id=pending)
    new_slot = cs.add_key(disk.path, old_key, pending_key, services.luks_params())
    old_slot = next(s for s in cs.dump(disk.path).slot_numbers if s != new_slot)
    cs.kill_slot(disk.path, old_slot, pending_key)
    assert not cs.test_key(disk.path, old_key) and cs.test_key(disk.path, pending_key)
    disk.refresh_from_db()
    # the operator asks again: a new job with a new goal
    job = run_job(services.disk_change_key(actor=operator, disk=disk, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk.refresh_from_db()
    assert disk.key_id == job.params["new_key_id"] and disk.pending_key_id == ""
    final_key = stored_key(store, disk)
    assert cs.test_key(disk.path, final_key)
    assert not cs.test_key(disk.path, pending_key) and len(cs.dump(disk.path).slot_numbers) == 1
    assert store.key_ids().count(disk.key_id) == 1
    assert old_key_id not in store.key_ids() and pending not in store.key_ids()


def test_a_pending_key_that_opens_nothing_is_still_forgotten(encrypted, operator):
    store = services.get_store()
    pending = store.new_key_id()
    store.put(key_id=pending, vm_uuid=str(encrypted.vm_uuid), volume=encrypted.path, key=os.urandom(64))
    EncryptedDisk.objects.filter(pk=encrypted.pk).update(pending_key_id=pending)
    encrypted.refresh_from_db()
    job = run_job(services.disk_change_key(actor=operator, disk=encrypted, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    encrypted.refresh_from_db()
    assert pending not in store.key_ids() and cs.test_key(encrypted.path, stored_key(store, encrypted))


def test_a_second_key_change_is_refused_while_one_is_queued_or_running(encrypted, operator):
    first = services.disk_change_key(actor=operator, disk=encrypted, confirmed=True)
    with pytest.raises(Conflict, match="already being changed"):
        services.disk_change_key(actor=operator, disk=encrypted, confirmed=True)
    Job.objects.filter(pk=first.pk).update(state=Job.State.RUNNING)
    with pytest.raises(Conflict, match="already being changed"):
        services.disk_change_key(actor=operator, disk=encrypted, confirmed=True)
    assert Job.objects.filter(kind="encryption.disk.change_key").count() == 1
    assert _events("encryption.disk.change_key") == ["requested", "failed", "failed"]
    assert run_job(Job.objects.get(pk=first.pk)).state == Job.State.SUCCEEDED
    encrypted.refresh_from_db()
    second = run_job(services.disk_change_key(actor=operator, disk=encrypted, confirmed=True))
    assert second.state == Job.State.SUCCEEDED, second.error


# ------------------------------------------------------------ 2. long jobs


def test_in_place_encryption_keeps_its_heartbeat_and_resume_is_refused_while_it_runs(
    shut_vm, data_disk, operator, monkeypatch
):
    path, _, _ = data_disk(8)
    beats = []
    real_heartbeat = jobs.heartbeat

    def recording_heartbeat(job, **kwargs):
        beats.append((job.pk, cs.is_luks(path)))
        return real_heartbeat(job, **kwargs)

    monkeypatch.setattr(jobs, "heartbeat", recording_heartbeat)
    job = services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    assert jobs.task_for(job.kind).name == "apps.core.tasks.run_long_job"
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING)
    with pytest.raises(Conflict, match="already under way"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    Job.objects.filter(pk=job.pk).update(state=Job.State.QUEUED)
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert beats == [(job.pk, False)]  # the cryptsetup call ran inside the heartbeat


# ------------------------------------------------------------ 3. confirmation in the services


def test_destructive_services_refuse_without_confirmation(host, shut_vm, data_disk, encrypted, admin, operator):
    path, _, size = data_disk(8)
    with pytest.raises(InvalidInput, match="needs confirmation"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path)
    with pytest.raises(InvalidInput, match="needs confirmation"):
        services.disk_change_key(actor=operator, disk=encrypted)
    with pytest.raises(InvalidInput, match="needs confirmation"):
        services.store_seal(actor=admin)
    with pytest.raises(InvalidInput, match="needs confirmation"):
        services.kek_rotate(actor=admin, host=host)
    for action in ("encryption.disk.encrypt", "encryption.store.seal", "encryption.kek.rotate"):
        assert _events(action) == ["failed"], action
    assert _events("encryption.disk.change_key") == ["failed"]
    assert not Job.objects.exclude(kind="encryption.disk.create").exists()
    assert not cs.is_luks(path) and os.path.getsize(path) == size
    assert not services.store_status(actor=admin).rotating


def test_the_command_asks_and_refuses_without_a_terminal_or_yes(host, shut_vm, encrypted):
    out = io.StringIO()
    with pytest.raises(CommandError, match="--yes"):
        call_command("vm_encryption", "--no-wait", "change-passphrase", shut_vm.name, stdout=out)
    with pytest.raises(CommandError, match="--yes"):
        call_command("vm_encryption", "rotate-kek", stdout=out)
    assert not Job.objects.exclude(kind="encryption.disk.create").exists()
    call_command("vm_encryption", "--no-wait", "--yes", "change-passphrase", shut_vm.name, stdout=out)
    assert Job.objects.filter(kind="encryption.disk.change_key").count() == 1


# ------------------------------------------------------------ 4. deleted actor


def test_a_job_whose_user_was_deleted_is_denied_not_run_as_the_system(encrypted, make_user, shut_vm, test_pool):
    import apps.storage.services.volumes  # noqa: F401  (registers the storage job handlers)
    from apps.accounts.models import Role

    doomed = make_user(role=Role.OPERATOR)
    job = services.disk_header_backup(actor=doomed, disk=encrypted)
    storage_job = Job.objects.create(
        kind="storage.volume.create",
        host=shut_vm.host,
        target_type="virtualmachine",
        target_id=str(shut_vm.pk),
        target_name=shut_vm.name,
        params={"pool": test_pool, "volume": f"ghost-{os.getpid()}.qcow2", "bytes": 1 << 20},
        actor=doomed,
        actor_name=doomed.username,
    )
    doomed.delete()
    job = run_job(Job.objects.get(pk=job.pk))
    assert job.actor_id is None and job.state == Job.State.FAILED and "no longer exists" in job.error
    assert _events("encryption.disk.header_backup") == ["requested", "denied"]
    encrypted.refresh_from_db()
    assert encrypted.header_backup_at is None
    storage_job = run_job(storage_job)
    assert storage_job.state == Job.State.FAILED and "no longer exists" in storage_job.error
    assert _events("storage.volume.create") == ["denied"]
    assert gw.volume_find(shut_vm.host.uri, test_pool, storage_job.params["volume"]) is None


# ------------------------------------------------------------ 5. crafted escrow


@pytest.mark.parametrize(
    "binding",
    [
        ["not", "a", "dict"],
        "a string",
        {"vm_uuid": "*", "volume": "*"},  # no key_id; vm_uuid and volume filled in below
        {"key_id": 7, "vm_uuid": "*", "volume": "*"},
    ],
)
def test_a_crafted_escrow_file_is_refused_with_a_message(encrypted, admin, binding):
    if isinstance(binding, dict):
        binding = {k: (str(encrypted.vm_uuid) if k == "vm_uuid" else encrypted.path if k == "volume" else v)
                   for k, v in binding.items()}  # fmt: skip
    document = escrow_wrap(os.urandom(64), PASSPHRASE.encode(), binding, memory_kib=8192, iterations=1)
    assert json.loads(document)["binding"] == binding
    with pytest.raises(InvalidInput):
        services.disk_recovery_test(actor=admin, disk=encrypted, escrow=document, recovery_passphrase=PASSPHRASE)
    assert _events("encryption.key.recovery_test") == ["failed"]


# ------------------------------------------------------------ 7. store passphrase


def test_the_first_store_passphrase_needs_12_characters_and_unsealing_is_throttled(
    admin, settings, tmp_path, monkeypatch
):
    settings.ENCRYPTION_KEY_DIR = tmp_path / "keys"
    settings.ENCRYPTION_RUNTIME_DIR = tmp_path / "run"
    settings.ENCRYPTION_KEK_PROVIDER = "passphrase"
    settings.LOGIN_FAILURE_LIMIT = 3
    with pytest.raises(InvalidInput, match="at least 12"):
        services.store_unseal(actor=admin, passphrase="short")
    with pytest.raises(InvalidInput, match="at least 12"):
        services.store_initialize(actor=admin, passphrase="short")
    assert not services.get_store().initialized()
    good = "the first store passphrase"
    services.store_unseal(actor=admin, passphrase=good)  # initialises
    services.store_seal(actor=admin, confirmed=True)
    for _ in range(3):
        with pytest.raises(InvalidInput, match="Wrong passphrase"):
            services.store_unseal(actor=admin, passphrase="not the passphrase at all")
    started = time.monotonic()
    with pytest.raises(Conflict, match="Too many"):
        services.store_unseal(actor=admin, passphrase=good)  # even the right one, for a while
    assert time.monotonic() - started < 1  # refused before any key derivation
    assert services.get_store().sealed()
    assert _events("encryption.store.unseal") == ["failed", "success", "failed", "failed", "failed", "failed"]
    from django.core.cache import cache

    cache.clear()  # the window passed
    services.store_unseal(actor=admin, passphrase=good)
    assert not services.get_store().sealed()
