"""Manual unlock for critical VMs: an admin switches a VM to manual unlock (re-authenticated,
audited); its disks then open only with the passphrase an admin types at start, held in a
LUKS key slot and nowhere in the portal; no start outside that (the portal's automatic one,
`virsh start` through the hook) opens them; change-passphrase changes that passphrase; the
VM list shows the VMs waiting for it. Device-mapper is simulated on this machine; the rest
is real (cryptsetup, libvirtd and its hook). Transactional: the hook reads the rows."""

import subprocess
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.errors import InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk, RetiredKey, UnlockPolicy
from apps.encryption.services.common import stored_key
from tests.conftest import reauthenticate

from .conftest import ProcessWatcher, run_job

pytestmark = [pytest.mark.libvirt]

PASSPHRASE = "critical-vm passphrase 4711"
NEW_PASSPHRASE = "another critical passphrase 0815"


def virsh(*args):
    return subprocess.run(["virsh", "-c", settings.LIBVIRT_URI, *args], capture_output=True, text=True, timeout=300)


def _outcomes(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id").values_list("outcome", flat=True))


@pytest.fixture
def disk(transactional_db, jobs_run_here, shut_vm, operator, test_pool):
    job = run_job(services.disk_create_encrypted(actor=operator, vm=shut_vm, size_gib=1, pool=test_pool))
    assert job.state == Job.State.SUCCEEDED, job.error
    d = EncryptedDisk.objects.select_related("vm", "host").get(pk=job.params["disk_id"])
    yield d
    try:
        gw.domain_force_off(d.host.uri, d.vm.name)
    except Exception:
        pass
    services.device_mapper().close(d.mapping_name)
    gw.volume_delete_if_exists(d.host.uri, d.pool, d.volume)
    (settings.ENCRYPTION_HOOK_REGISTRY_DIR / f"{d.vm.uuid}.json").unlink(missing_ok=True)


@pytest.fixture
def manual(disk, admin):
    services.vm_unlock_policy_set(actor=admin, vm=disk.vm, mode="manual", passphrase=PASSPHRASE, confirmed=True)
    return disk


def test_switching_to_manual_is_admin_only_reauthenticated_and_audited(client, disk, admin, operator):
    store = services.get_store()
    key = stored_key(store, disk)
    with pytest.raises(PermissionDenied):
        services.vm_unlock_policy_set(actor=operator, vm=disk.vm, mode="manual", passphrase=PASSPHRASE, confirmed=True)
    client.force_login(admin)
    url = reverse("encryption:vm_unlock_policy", args=[disk.host.name, disk.vm.name])
    form = {"mode": "manual", "passphrase": PASSPHRASE, "passphrase_again": PASSPHRASE, "confirm": "yes"}
    response = client.post(url, form)
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:reauth"))
    assert not UnlockPolicy.objects.exists()
    reauthenticate(client)  # password and the admin's code: refused otherwise
    assert client.post(url, {**form, "passphrase": "too short", "passphrase_again": "too short"}).status_code == 400
    assert client.post(url, form).status_code == 302
    assert UnlockPolicy.objects.get(vm=disk.vm).mode == "manual"
    # the typed passphrase now opens the disk; the stored key no longer does and is retired
    assert cs.test_key(disk.path, PASSPHRASE.encode()) and not cs.test_key(disk.path, key)
    assert len(cs.dump(disk.path).slot_numbers) == 1
    assert RetiredKey.objects.filter(key_id=disk.key_id).exists()
    assert _outcomes("encryption.vm.unlock_policy") == ["denied", "failed", "success"]
    event = AuditEvent.objects.filter(action="encryption.vm.unlock_policy", outcome="success").get()
    assert event.params == {"mode": "manual", "disks": [disk.target]}
    # a manual VM's disk no longer opens with its retired key: the beat task destroys it in time
    assert services.retired_keys_destroy(now=timezone.now() + timedelta(days=31)) == [disk.key_id]


def test_a_start_with_the_typed_passphrase_opens_and_starts_a_wrong_one_is_refused(manual, admin, operator):
    vm, dm = manual.vm, services.device_mapper()
    with pytest.raises(PermissionDenied):
        services.vm_start_manual(actor=operator, vm=vm, passphrase=PASSPHRASE)
    with pytest.raises(InvalidInput, match=f"does not open disk {manual.target}"):
        services.vm_start_manual(actor=admin, vm=vm, passphrase="not the passphrase at all")
    assert gw.domain_state(vm.host.uri, vm.name) == "shut off" and not dm.is_open(manual.mapping_name)
    assert services.vm_start_manual(actor=admin, vm=vm, passphrase=PASSPHRASE) == "running"
    assert dm.is_open(manual.mapping_name)
    assert _outcomes("encryption.vm.manual_unlock") == ["denied", "failed", "success"]
    # the hook saw the disks open and let the start through; stopping closes them
    assert AuditEvent.objects.get(action="encryption.vm.unlock").params["trigger"] == "libvirt hook"
    assert virsh("destroy", vm.name).returncode == 0
    assert not dm.is_open(manual.mapping_name)


def test_no_automatic_start_opens_a_manual_vm(manual, operator):
    vm = manual.vm
    result = virsh("start", vm.name)
    assert result.returncode != 0 and "requires a manual unlock" in result.stderr
    job = run_job(services.vm_start_unlocked(actor=operator, vm=vm))
    assert job.state == Job.State.FAILED and "requires a manual unlock" in job.error
    assert gw.domain_state(vm.host.uri, vm.name) == "shut off"
    assert not services.device_mapper().is_open(manual.mapping_name)
    # nor can the portal change its key, escrow it or add a disk it would hold a key for
    with pytest.raises(InvalidInput, match="unlocked manually"):
        services.disk_change_key(actor=operator, disk=manual, confirmed=True)
    with pytest.raises(InvalidInput, match="unlocked manually"):
        services.disk_create_encrypted(actor=operator, vm=vm, size_gib=1)


def test_change_passphrase_changes_the_typed_passphrase(manual, tmp_path):
    old_file, new_file = tmp_path / "old", tmp_path / "new"
    old_file.write_text(PASSPHRASE + "\n")
    new_file.write_text(NEW_PASSPHRASE + "\n")
    call_command(
        "vm_encryption",
        "change-passphrase",
        manual.vm.name,
        "--passphrase-file",
        str(old_file),
        "--new-passphrase-file",
        str(new_file),
    )
    assert cs.test_key(manual.path, NEW_PASSPHRASE.encode()) and not cs.test_key(manual.path, PASSPHRASE.encode())
    assert _outcomes("encryption.vm.passphrase_change") == ["success"]
    with pytest.raises(InvalidInput, match="does not open"):
        services.vm_passphrase_change(actor=None, vm=manual.vm, passphrase=PASSPHRASE, new_passphrase="x" * 20)
    assert _outcomes("encryption.vm.passphrase_change") == ["success", "failed"]


def test_back_to_automatic_puts_a_new_key_in_the_store(manual, admin):
    with pytest.raises(InvalidInput, match="does not open"):
        services.vm_unlock_policy_set(actor=admin, vm=manual.vm, mode="automatic", passphrase="wrong", confirmed=True)
    services.vm_unlock_policy_set(actor=admin, vm=manual.vm, mode="automatic", passphrase=PASSPHRASE, confirmed=True)
    disk = EncryptedDisk.objects.get(pk=manual.pk)
    assert disk.key_id != manual.key_id
    assert cs.test_key(disk.path, stored_key(services.get_store(), disk))
    assert not cs.test_key(disk.path, PASSPHRASE.encode())
    result = virsh("start", disk.vm.name)  # automatic again, through the hook
    assert result.returncode == 0, result.stderr
    assert services.device_mapper().is_open(disk.mapping_name)


def test_the_vm_list_shows_the_vms_waiting_for_a_manual_unlock(client, manual, viewer):
    client.force_login(viewer)
    page = client.get(reverse("vms:list")).content.decode()
    row = page[page.index(f'data-vm="{manual.vm.name}"') :]
    row = row[: row.index("</tr>")]
    assert 'data-testid="manual-unlock"' in row and "waits for manual unlock" in row


def test_the_passphrase_is_never_in_the_database_a_job_or_a_command_line(disk, admin, operator):
    with ProcessWatcher() as watcher:
        services.vm_unlock_policy_set(actor=admin, vm=disk.vm, mode="manual", passphrase=PASSPHRASE, confirmed=True)
        with pytest.raises(InvalidInput):
            services.vm_start_manual(actor=admin, vm=disk.vm, passphrase=NEW_PASSPHRASE)
        services.vm_start_manual(actor=admin, vm=disk.vm, passphrase=PASSPHRASE)
        virsh("destroy", disk.vm.name)
        services.vm_passphrase_change(actor=admin, vm=disk.vm, passphrase=PASSPHRASE, new_passphrase=NEW_PASSPHRASE)
    assert watcher.saw(b"luksAddKey") and watcher.saw(b"--test-passphrase")
    assert not watcher.seen(PASSPHRASE.encode()) and not watcher.seen(NEW_PASSPHRASE.encode())
    dump = StringIO()
    call_command("dumpdata", stdout=dump)
    assert PASSPHRASE not in dump.getvalue() and NEW_PASSPHRASE not in dump.getvalue()
    assert "encryption.vm.manual_unlock" in dump.getvalue()  # the dump holds the audit events
    assert all(job.params == {} or "passphrase" not in str(job.params) for job in Job.objects.all())
