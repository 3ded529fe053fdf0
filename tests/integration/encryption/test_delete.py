"""Deleting an encrypted disk from the storage page goes through the encryption services:
the disk is closed and detached, its volume deleted, its key retired (kept wrapped for a
grace period, then destroyed by the beat task, audited) and its record removed, so the
VM starts again."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.errors import InvalidInput, NotFound
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.models import EncryptedDisk, RetiredKey
from apps.encryption.services.common import stored_key
from apps.storage import services as storage_services
from tests.conftest import reauthenticate

from .conftest import run_job

pytestmark = pytest.mark.libvirt


@pytest.fixture
def encrypted(shut_vm, operator, test_pool):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    yield disk
    try:
        gw.domain_force_off(disk.host.uri, disk.vm.name)
    except Exception:
        pass
    gw.volume_delete_if_exists(disk.host.uri, disk.pool, disk.volume)
    services.get_store().delete(disk.key_id)


def _outcomes(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id").values_list("outcome", flat=True))


def test_deleting_an_encrypted_volume_from_the_storage_page_retires_its_key(client, operator, encrypted):
    disk, vm = encrypted, encrypted.vm
    store = services.get_store()
    key = stored_key(store, disk)
    # an opened mapping (as a start would leave it) is closed by the delete
    dm = services.device_mapper()
    dm.open(disk.path, disk.mapping_name, key)
    EncryptedDisk.objects.filter(pk=disk.pk).update(mapping=disk.mapping_name)
    client.force_login(operator)
    url = reverse("storage:volume_delete", args=[vm.host.name, vm.name, disk.target])
    reauthenticate(client)  # a volume delete asks for the password again (REAUTH_POLICY)
    response = client.post(url, {"confirm": "yes"})
    assert response.status_code in (200, 302)
    job = Job.objects.get(kind="encryption.disk.delete")
    assert set(job.params) == {"disk_id", "target", "volume"}
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert not EncryptedDisk.objects.filter(pk=disk.pk).exists()
    assert not dm.is_open(disk.mapping_name)
    assert disk.target not in {d["target"] for d in gw.domain_disks_defined(vm.host.uri, vm.name)}
    assert gw.volume_find(vm.host.uri, disk.pool, disk.volume) is None
    retired = RetiredKey.objects.get(key_id=disk.key_id)
    assert retired.destroyed_at is None and retired.path == disk.path
    assert retired.destroy_after > timezone.now() + timedelta(days=29)
    # kept (wrapped) through the grace period: a backup of the volume can still be read
    assert stored_key(store, disk) == key
    assert _outcomes("encryption.disk.delete") == ["requested", "success"]
    assert _outcomes("encryption.key.retire") == ["success"]
    # the VM starts again: nothing points at the deleted disk
    job = run_job(services.vm_start_unlocked(actor=operator, vm=vm))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


def test_the_beat_task_destroys_retired_keys_after_the_grace_period(operator, encrypted):
    disk = encrypted
    job = run_job(storage_services.volume_delete(actor=operator, vm=disk.vm, target=disk.target, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    store = services.get_store()
    assert services.retired_keys_destroy(actor=None) == []  # still in its grace period
    later = timezone.now() + timedelta(days=31)
    assert services.retired_keys_destroy(actor=None, now=later) == [disk.key_id]
    with pytest.raises(NotFound):
        stored_key(store, disk)
    assert RetiredKey.objects.get(key_id=disk.key_id).destroyed_at is not None
    assert _outcomes("encryption.key.destroy") == ["success"]
    assert services.retired_keys_destroy(actor=None, now=later) == []


def test_an_unconfirmed_or_live_delete_is_refused_and_audited(operator, encrypted):
    disk = encrypted
    with pytest.raises(InvalidInput, match="destroys its data"):
        storage_services.volume_delete(actor=operator, vm=disk.vm, target=disk.target)
    assert EncryptedDisk.objects.filter(pk=disk.pk, state=EncryptedDisk.State.READY).exists()
    assert _outcomes("encryption.disk.delete") == ["failed"]
    assert not Job.objects.filter(kind__in=["encryption.disk.delete", "storage.volume.delete"]).exists()


def test_storage_counts_an_encrypted_disk_as_its_container_volume(operator, encrypted, host):
    """The definition names the unlocked path; quotas and pool pages count the container."""
    from apps.storage.disks import host_snapshot, vm_disks

    disk = encrypted
    counted = {d.target: d for d in vm_disks(disk.vm).disks}[disk.target]
    assert (counted.path, counted.capacity) == (disk.path, disk.size_bytes)
    (dom,) = [d for d in host_snapshot(host).domains if d.name == disk.vm.name]
    assert {d.target: d.path for d in dom.disks}[disk.target] == disk.path
    assert dom.provisioned >= disk.size_bytes
