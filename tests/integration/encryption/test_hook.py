"""Every start opens the encrypted disks, not only the portal's: a plain `virsh start`
against the real libvirtd runs the installed qemu hook (scripts/libvirt-hook-qemu), which
calls `manage.py libvirt_hook` on this test run's database and key store. At rest the
definition names the unlocked path, never the LUKS container, so a start that could not
open the disk fails with the portal's message. Device-mapper is simulated on this machine.

These tests are transactional: the hook runs in another process and must see the rows."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.hook import hook_registry_sync
from tests.conftest import ROOT

from .conftest import run_job

pytestmark = [pytest.mark.libvirt]

HOOK = Path("/etc/libvirt/hooks/qemu")


@pytest.fixture(autouse=True)
def _hook_installed():
    source = ROOT / "scripts" / "libvirt-hook-qemu"
    if not HOOK.exists() or HOOK.read_bytes() != source.read_bytes():
        pytest.fail(f"{HOOK} is not the project's hook: run scripts/setup-system.sh (make setup installs it).")


def virsh(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", settings.LIBVIRT_URI, *args], capture_output=True, text=True, timeout=300)


def _sources(disk) -> dict:
    return {d["target"]: d["path"] for d in gw.domain_disks_defined(disk.host.uri, disk.vm.name)}


def _entry(disk) -> Path:
    return Path(settings.ENCRYPTION_HOOK_REGISTRY_DIR) / f"{disk.vm.uuid}.json"


def _events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


@pytest.fixture
def make_encrypted(transactional_db, jobs_run_here, shut_vm, operator, test_pool):
    made = []

    def make(kind="luks2"):
        job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool, kind=kind))
        assert job.state == Job.State.SUCCEEDED, job.error
        disk = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
        made.append(disk)
        return disk

    yield make
    for disk in made:
        try:
            gw.domain_force_off(disk.host.uri, disk.vm.name)
        except Exception:
            pass
        services.device_mapper().close(disk.mapping_name)
        if disk.secret_uuid:
            gw.secret_remove(disk.host.uri, disk.secret_uuid)
        gw.volume_delete_if_exists(disk.host.uri, disk.pool, disk.volume)
        services.get_store().delete(disk.key_id)
        _entry(disk).unlink(missing_ok=True)


def test_a_plain_virsh_start_opens_the_disk_and_destroy_closes_it(make_encrypted):
    disk = make_encrypted()
    dm = services.device_mapper()
    # at rest: the guest's disk is the unlocked path, which does not exist yet
    assert _sources(disk)[disk.target] == dm.mapping_path(disk.mapping_name) != disk.path
    assert not dm.is_open(disk.mapping_name)
    entry = json.loads(_entry(disk).read_text())
    assert entry["project"] == str(ROOT) and entry["vm_id"] == disk.vm.pk
    assert oct(_entry(disk).stat().st_mode & 0o777) == "0o400"

    result = virsh("start", disk.vm.name)
    assert result.returncode == 0, result.stderr
    assert gw.domain_state(disk.host.uri, disk.vm.name) == "running"
    assert dm.is_open(disk.mapping_name)
    assert EncryptedDisk.objects.get(pk=disk.pk).mapping == disk.mapping_name
    (event,) = _events("encryption.vm.unlock")
    assert (event.actor_name, event.outcome, event.params) == (
        "system",
        "success",
        {"trigger": "libvirt hook", "opened": [disk.target]},
    )

    result = virsh("destroy", disk.vm.name)
    assert result.returncode == 0, result.stderr
    assert not dm.is_open(disk.mapping_name)
    assert EncryptedDisk.objects.get(pk=disk.pk).mapping == ""
    (event,) = _events("encryption.vm.lock")
    assert event.params == {"trigger": "libvirt hook", "closed": [disk.target]}


def test_a_start_that_cannot_open_the_disk_fails_with_our_message(make_encrypted):
    disk = make_encrypted()
    key_file = settings.ENCRYPTION_KEY_DIR / "disks" / f"{disk.key_id}.key"
    away = key_file.with_name("moved-away")
    os.rename(key_file, away)
    try:
        result = virsh("start", disk.vm.name)
    finally:
        os.rename(away, key_file)
    assert result.returncode != 0
    assert "hypervisor-portal refuses to start" in result.stderr and "missing from the key store" in result.stderr
    assert gw.domain_state(disk.host.uri, disk.vm.name) == "shut off"
    assert not services.device_mapper().is_open(disk.mapping_name)
    assert disk.path not in _sources(disk).values()  # the guest was never given the container
    (event,) = _events("encryption.vm.unlock")
    assert event.outcome == "failed" and event.params == {"trigger": "libvirt hook"}
    assert "missing" in event.error


def test_a_definition_naming_the_container_is_refused_then_repaired_by_the_portal(make_encrypted, operator):
    disk = make_encrypted()
    # a definition from before the rule (the container itself as the guest's disk)
    gw.domain_disk_set_source(disk.host.uri, disk.vm.name, disk.target, disk.path, block=False)
    result = virsh("start", disk.vm.name)
    assert result.returncode != 0 and "points disk" in result.stderr and "LUKS container" in result.stderr
    assert gw.domain_state(disk.host.uri, disk.vm.name) == "shut off"
    job = run_job(services.vm_start_unlocked(actor=operator, vm=disk.vm))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert _sources(disk)[disk.target] == services.device_mapper().mapping_path(disk.mapping_name)
    assert gw.domain_state(disk.host.uri, disk.vm.name) == "running"


def test_a_qemu_luks_disk_starts_outside_the_portal_but_not_without_its_key(make_encrypted):
    disk = make_encrypted(kind="qemu-luks")
    secret = virsh("secret-dumpxml", disk.secret_uuid)
    assert "ephemeral='no'" in secret.stdout and "private='yes'" in secret.stdout
    key_file = settings.ENCRYPTION_KEY_DIR / "disks" / f"{disk.key_id}.key"
    away = key_file.with_name("moved-away")
    os.rename(key_file, away)
    try:
        refused = virsh("start", disk.vm.name)
    finally:
        os.rename(away, key_file)
    assert refused.returncode != 0 and "hypervisor-portal refuses to start" in refused.stderr
    assert gw.domain_state(disk.host.uri, disk.vm.name) == "shut off"
    result = virsh("start", disk.vm.name)  # libvirt keeps the secret's value: no portal involved
    assert result.returncode == 0, result.stderr
    assert disk.path in _sources(disk).values()  # QEMU opens the LUKS itself


def test_the_hook_leaves_domains_it_does_not_know_alone(make_domain, transactional_db, host):
    name = make_domain()
    xml = f"<domain><name>{name}</name><uuid>{gw.domain_get(host.uri, name).uuid}</uuid></domain>"
    for op in (["prepare", "begin"], ["release", "end"], ["started", "begin"]):
        result = subprocess.run([str(HOOK), name, *op, "-"], input=xml, capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stderr) == (0, "")
    result = virsh("start", name)
    assert result.returncode == 0, result.stderr


def test_the_registry_entry_goes_with_the_last_encrypted_disk(make_encrypted, operator):
    disk = make_encrypted()
    assert _entry(disk).exists()
    job = run_job(services.disk_delete(actor=operator, disk=disk, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    assert not _entry(disk).exists()
    hook_registry_sync(disk.vm)  # idempotent: no disk, no entry
    assert not _entry(disk).exists()


def test_the_beat_task_repairs_definitions_and_registers_vms(make_encrypted):
    from apps.encryption.services.hook import definitions_protect

    disk = make_encrypted()
    # e.g. an old definition
    gw.domain_disk_set_source(disk.host.uri, disk.vm.name, disk.target, disk.path, block=False)
    _entry(disk).unlink()
    assert definitions_protect(actor=None) == [f"{disk.vm.name}:{disk.target}"]
    assert _sources(disk)[disk.target] == services.device_mapper().mapping_path(disk.mapping_name)
    assert _entry(disk).exists()
    assert [e.params for e in _events("encryption.vm.definition_repair")] == [{"disk": disk.target}]
    assert definitions_protect(actor=None) == []


def test_the_hook_path_never_calls_libvirt(make_encrypted, monkeypatch):
    """libvirtd waits for its hook: a libvirt call from it would deadlock. The hook's work
    runs here with every libvirt call of the gateway made to fail."""
    from apps.core.gateways.libvirt import connection
    from apps.encryption.services.hook import hook_prepare, hook_release

    disk = make_encrypted()
    xml = virsh("dumpxml", "--inactive", disk.vm.name).stdout

    def no_libvirt(*args, **kwargs):
        raise AssertionError("libvirt called from the hook path")

    dm = services.device_mapper()
    with monkeypatch.context() as patched:
        patched.setattr(connection, "call", no_libvirt)
        assert hook_prepare(vm_id=disk.vm.pk, uuid=str(disk.vm.uuid), xml=xml) == [disk.target]
        assert dm.is_open(disk.mapping_name)
        assert hook_release(vm_id=disk.vm.pk, uuid=str(disk.vm.uuid)) == [disk.target]
        assert not dm.is_open(disk.mapping_name)


def test_the_hook_refuses_while_the_store_is_sealed(make_encrypted, admin, settings, tmp_path):
    """The sealed-store refusal of the hook's work, in this process (the hook process reads
    this run's fixed store, which a test cannot seal without harming the others)."""
    from apps.encryption.services.hook import hook_prepare

    disk = make_encrypted()
    xml = virsh("dumpxml", "--inactive", disk.vm.name).stdout
    settings.ENCRYPTION_KEY_DIR = tmp_path / "keys"
    settings.ENCRYPTION_RUNTIME_DIR = tmp_path / "run"
    settings.ENCRYPTION_KEK_PROVIDER = "passphrase"
    services.store_initialize(actor=admin, passphrase="the store passphrase, long enough")
    services.store_seal(actor=admin, confirmed=True)
    with pytest.raises(Conflict, match="sealed"):
        hook_prepare(vm_id=disk.vm.pk, uuid=str(disk.vm.uuid), xml=xml)
    assert not services.device_mapper().is_open(disk.mapping_name)
    (event,) = _events("encryption.vm.unlock")
    assert event.outcome == "failed" and "sealed" in event.error


def test_a_disk_whose_encryption_did_not_finish_keeps_the_vm_off_with_a_reason(make_encrypted, operator):
    disk = make_encrypted()
    EncryptedDisk.objects.filter(pk=disk.pk).update(state=EncryptedDisk.State.ENCRYPTING)
    result = virsh("start", disk.vm.name)
    assert result.returncode != 0 and f"Disk {disk.target}" in result.stderr and "did not finish" in result.stderr
    job = run_job(services.vm_start_unlocked(actor=operator, vm=disk.vm))
    assert job.state == Job.State.FAILED and "did not finish" in job.error
    assert gw.domain_state(disk.host.uri, disk.vm.name) == "shut off"
