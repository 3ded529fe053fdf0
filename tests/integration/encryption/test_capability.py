"""LUKS2 disks (opened by the host with cryptsetup) are refused where the kernel cannot
open them, before anything is made; the qemu-luks kind is offered instead. These tests
switch the simulated mapper off, so the real kernel of this machine is read."""

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core.errors import InvalidInput
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk

pytestmark = pytest.mark.libvirt


def _kernel_has_device_mapper() -> bool:
    with open("/proc/misc") as fh:
        return any(line.split()[1:] == ["device-mapper"] for line in fh)


@pytest.fixture
def real_mapper(settings):
    settings.ENCRYPTION_DEVICE_MAPPER = "cryptsetup"
    if _kernel_has_device_mapper():
        pytest.skip("this machine's kernel has device-mapper: the refusal cannot be exercised here")


def test_the_capability_is_read_from_the_kernel(settings):
    capability = cs.device_mapper_capability()
    if _kernel_has_device_mapper():
        assert capability.mode in ("device-mapper", "missing")
    else:
        assert (capability.mode, capability.available) == ("missing", False)
        assert "no device-mapper" in capability.reason
    settings.ENCRYPTION_DEVICE_MAPPER = "simulated"
    assert services.luks2_capability().mode == "simulated"


def test_luks2_creation_is_refused_where_it_could_never_open(real_mapper, shut_vm, operator, test_pool):
    with pytest.raises(InvalidInput, match=r"cannot open LUKS2 disks: the kernel has no device-mapper.*qemu-luks"):
        services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool, kind="luks2")
    assert not EncryptedDisk.objects.exists() and not Job.objects.exists()
    event = AuditEvent.objects.get(action="encryption.disk.create")
    assert event.outcome == "failed" and "device-mapper" in event.error
    # the kind QEMU opens itself is accepted on the same host
    job = services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool, kind="qemu-luks")
    assert EncryptedDisk.objects.get(pk=job.params["disk_id"]).kind == "qemu-luks"


def test_in_place_encryption_is_refused_there_too(real_mapper, shut_vm, operator, data_disk):
    path, _digest, size = data_disk(8)
    with pytest.raises(InvalidInput, match="cannot open LUKS2 disks"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    assert not EncryptedDisk.objects.exists() and not cs.is_luks(path)


def test_the_encryption_page_shows_the_capability_and_offers_qemu_luks(real_mapper, client, operator, shut_vm):
    client.force_login(operator)
    page = client.get(reverse("encryption:index")).content.decode()
    assert 'data-testid="luks2-capability"><span class="badge state-failed">cannot open' in page
    assert '<option value="luks2" disabled' in page
    assert '<option value="qemu-luks" selected>' in page
