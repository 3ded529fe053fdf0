"""encrypt-existing on a qcow2 disk: the image is turned into raw (copied beside, compared,
swapped in) and then encrypted, the data and the virtual size are kept and the VM's
definition says raw; backing chains and snapshots are refused with the reason, nothing
changed; a conversion stopped half-way starts over cleanly."""

import hashlib
import os
import subprocess

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.gateways import qemu_img
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.common import pool_by_name, stored_key
from apps.encryption.services.disks import RESUME_HINT
from tests.conftest import unique

from .conftest import luks2_payload_sha256, run_job

pytestmark = pytest.mark.libvirt

MIB = 1 << 20
VIRTUAL = 64 * MIB
# (offset, length, byte) written by qemu-io; everything else reads as zeros
PATTERN = [(0, MIB, 0xAB), (40 * MIB, 3 * MIB, 0xCD), (VIRTUAL - MIB, MIB, 0x5A)]


def _expected_sha256() -> str:
    data = bytearray(VIRTUAL)
    for offset, length, byte in PATTERN:
        data[offset : offset + length] = bytes([byte]) * length
    return hashlib.sha256(data).hexdigest()


def _qemu(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=120)


@pytest.fixture
def qcow2_disk(host, shut_vm, libvirt_uri, test_pool):
    """make(kind) -> path: a qcow2 image attached to the shut-off VM (as qcow2), holding
    PATTERN. kind "overlay": a qcow2 overlay of a base image holding PATTERN; kind
    "internal-snapshot": with an internal snapshot."""
    pool_dir = pool_by_name(host, test_pool).path
    made: list[str] = []

    def make(kind: str = "plain") -> str:
        path = os.path.join(pool_dir, f"{unique('q')}.qcow2")
        made.append(path)
        data = path
        if kind == "overlay":
            data = path + ".base"
            made.append(data)
        _qemu("qemu-img", "create", "-q", "-f", "qcow2", data, str(VIRTUAL))
        _qemu("qemu-io", "-f", "qcow2", *[a for o, n, b in PATTERN for a in ("-c", f"write -P {b} {o} {n}")], data)
        if kind == "overlay":
            _qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", data, "-F", "qcow2", path)
        if kind == "internal-snapshot":
            _qemu("qemu-img", "snapshot", "-c", "before-encryption", path)
        gw.pool_refresh(libvirt_uri, test_pool)
        target = gw.domain_disk_next_target(libvirt_uri, shut_vm.name)
        gw.domain_disk_attach_xml(
            libvirt_uri, shut_vm.name, gw.disk_encrypted_xml(source=path, target=target, fmt="qcow2")
        )
        return path

    yield make
    for path in made:
        for leftover in (path, *(os.path.join(pool_dir, n) for n in os.listdir(pool_dir) if n.startswith(path))):
            if os.path.exists(leftover):
                os.unlink(leftover)
    gw.pool_refresh(libvirt_uri, test_pool)


def _format_in_definition(uri: str, vm, path: str) -> str:
    """The driver type of the disk at `path`: named by the image itself, or, once it is an
    encrypted disk, by its unlocked path (a definition never names the LUKS container)."""
    unlocked = {container: mapped for mapped, container in services.container_paths(vm.host).items()}
    wanted = {path, unlocked.get(path, path)}
    return next(d["format"] for d in gw.domain_disks_defined(uri, vm.name) if d["path"] in wanted)


def _outcomes():
    return list(
        AuditEvent.objects.filter(action="encryption.disk.encrypt").order_by("id").values_list("outcome", flat=True)
    )


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _assert_encrypted_raw_with_the_data(path: str, disk: EncryptedDisk, tmp_path) -> None:
    info = cs.dump(path)
    assert info.version == 2 and not info.reencrypt_pending
    assert disk.size_bytes == VIRTUAL + cs.ENCRYPT_RESERVE_BYTES
    assert os.path.getsize(path) - info.data_offset >= VIRTUAL  # the guest keeps (at least) its virtual size
    key = stored_key(services.get_store(), disk)
    # decrypted through the LUKS layer, the payload starts with the raw image the qcow2 read as
    assert luks2_payload_sha256(path, key, VIRTUAL, tmp_path) == _expected_sha256()
    leftovers = [n for n in os.listdir(os.path.dirname(path)) if n.startswith(os.path.basename(path) + ".")]
    assert leftovers == []  # neither the raw copy nor the qcow2 original stays behind


def test_a_qcow2_disk_becomes_an_encrypted_raw_disk_with_its_data_and_size(
    shut_vm, qcow2_disk, operator, libvirt_uri, tmp_path
):
    path = qcow2_disk()
    job = run_job(services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.params["format"] == "qcow2" and job.params["original_size"] == VIRTUAL
    assert any("qemu-img convert" in line["msg"] for line in job.log)
    assert any("qemu-img compare" in line["msg"] for line in job.log)
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    assert disk.state == EncryptedDisk.State.READY
    _assert_encrypted_raw_with_the_data(path, disk, tmp_path)
    assert _format_in_definition(libvirt_uri, shut_vm, path) == "raw"
    assert _outcomes() == ["requested", "success"]


def test_a_failed_verification_keeps_the_qcow2_image_and_asking_again_converts_it(
    shut_vm, qcow2_disk, operator, libvirt_uri, tmp_path, monkeypatch, client
):
    path = qcow2_disk()
    before = _file_sha256(path)
    monkeypatch.setattr(qemu_img, "identical", lambda *a, **kw: False)  # the copy does not read the same
    job = run_job(services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True))
    assert job.state == Job.State.FAILED
    assert "did not read the same" in job.error and RESUME_HINT in job.error
    assert _file_sha256(path) == before and not cs.is_luks(path)  # the original, untouched
    assert _format_in_definition(libvirt_uri, shut_vm, path) == "qcow2"
    assert [n for n in os.listdir(os.path.dirname(path)) if n.startswith(os.path.basename(path) + ".")] == []
    client.force_login(operator)  # the disk's page says how to go on
    page = client.get(reverse("encryption:disk", args=[job.params["disk_id"]])).content.decode()
    assert "stopped before the end" in page and RESUME_HINT in page
    monkeypatch.undo()
    job = run_job(services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    _assert_encrypted_raw_with_the_data(path, EncryptedDisk.objects.get(pk=job.params["disk_id"]), tmp_path)
    assert _format_in_definition(libvirt_uri, shut_vm, path) == "raw"


def test_a_conversion_stopped_between_its_renames_is_undone_and_started_over(
    shut_vm, qcow2_disk, operator, libvirt_uri, tmp_path
):
    """What a crash leaves: a partial raw copy beside the image, and the image renamed away
    for the swap while the copy was not yet renamed in."""
    path = qcow2_disk()
    job = services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    with open(f"{path}.raw-{disk.key_id}.part", "wb") as fh:
        fh.write(b"half a copy")
    os.rename(path, f"{path}.qcow2-{disk.key_id}")
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert any("undoing a swap" in line["msg"] for line in job.log)
    _assert_encrypted_raw_with_the_data(path, EncryptedDisk.objects.get(pk=disk.pk), tmp_path)
    assert _format_in_definition(libvirt_uri, shut_vm, path) == "raw"


def test_backing_chains_and_snapshots_are_refused_and_nothing_changes(shut_vm, qcow2_disk, operator, libvirt_uri):
    overlay = qcow2_disk("overlay")
    internal = qcow2_disk("internal-snapshot")
    plain = qcow2_disk()
    sums = {p: _file_sha256(p) for p in (overlay, internal)}
    with pytest.raises(InvalidInput, match=r"qcow2 overlay of .*\.base: .*backing image.*Flatten it first"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=overlay, confirmed=True)
    with pytest.raises(InvalidInput, match=r"holds 1 internal snapshot\(s\) \(before-encryption\)"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=internal, confirmed=True)
    assert {p: _file_sha256(p) for p in (overlay, internal)} == sums
    gw.snapshot_create(libvirt_uri, shut_vm.name, "vm-snap")  # a libvirt snapshot of the VM (written into its disks)
    sums[plain] = _file_sha256(plain)  # (the snapshot wrote into every disk of the VM)
    with pytest.raises(Conflict, match=r"has 1 snapshot\(s\) \(vm-snap\).*Delete them first"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=plain, confirmed=True)
    assert _outcomes() == ["failed"] * 3
    failed = AuditEvent.objects.filter(action="encryption.disk.encrypt").order_by("id")
    assert "backing image" in failed[0].error and "internal snapshot" in failed[1].error
    assert "vm-snap" in failed[2].error
    assert not EncryptedDisk.objects.exists() and not Job.objects.exists()
    assert _file_sha256(plain) == sums[plain]
    for p in sums:
        assert not cs.is_luks(p) and _format_in_definition(libvirt_uri, shut_vm, p) == "qcow2"


def test_the_space_check_counts_the_raw_copy_of_a_qcow2_image(shut_vm, qcow2_disk, operator, monkeypatch):
    """The raw copy (the full virtual size) is written beside the qcow2 image before the
    header's 32 MiB and the saved head: room for the header alone is not enough."""
    from apps.encryption.gateways import files

    path = qcow2_disk()
    monkeypatch.setattr(files, "free_bytes", lambda directory: VIRTUAL + 2 * cs.ENCRYPT_RESERVE_BYTES - MIB)
    with pytest.raises(InvalidInput, match=r"Too little space .* needs 128 MiB free"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    assert not EncryptedDisk.objects.exists() and not cs.is_luks(path) and _outcomes() == ["failed"]
