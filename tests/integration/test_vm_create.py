"""New VMs from profiles on the real libvirtd: the hardened profile boots with secure boot
(OVMF) and a vTPM (swtpm) on an encrypted disk, its limits read back with virsh, change
live, and the VM is deleted with its disk and its key retired. One booted VM in this
module; the other tests create nothing, or fail part way on purpose."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.errors import Conflict, GatewayError, InvalidInput, NotFound
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.profiles import provision
from apps.profiles.models import VmProfile
from apps.profiles.schema import SHIPPED
from apps.vms.models import VirtualMachine
from tests.conftest import reauthenticate, unique
from tests.unit.test_profiles import certificate, own_keys

pytestmark = pytest.mark.libvirt


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", settings.LIBVIRT_URI, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout  # fmt: skip


def field(output: str, name: str) -> str:
    for line in output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    raise AssertionError(f"{name} not in {output!r}")


def profile(name: str) -> VmProfile:
    """The shipped profile (transactional tests flush the data migration's rows)."""
    spec = {k: v for k, v in SHIPPED[name].items() if k != "description"}
    found, created = VmProfile.objects.get_or_create(name=name, defaults={"spec": spec})
    if created:
        found.versions.create(version=1, spec=spec)
    return found


@pytest.fixture(scope="module", autouse=True)
def _run_store_removed_at_the_end():
    yield
    run_dir = settings.ENCRYPTION_KEY_DIR.parent
    if run_dir.parent.name == "test-encryption":
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def jobs_run_here(monkeypatch):
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)


def run(job: Job) -> Job:
    jobs.job_run(job.pk, worker="pytest")
    job.refresh_from_db()
    return job


@pytest.fixture
def untrusted_zone(host, test_network):
    from apps.network.models import Zone

    return Zone.objects.create(host=host, name=unique("untr"), kind="untrusted", network_name=test_network,
                               bridge="vbr-untr", network_state="active")  # fmt: skip


@pytest.fixture
def cleanup(libvirt_uri, test_pool):
    names: list[str] = []
    yield names
    for name in names:
        try:
            gw.domain_undefine(libvirt_uri, name)
        except NotFound:
            pass
        for vol in gw.pool_get(libvirt_uri, test_pool).volumes:
            if vol.name.startswith(f"{name}-"):
                gw.volume_delete_if_exists(libvirt_uri, test_pool, vol.name)


def test_hardened_vm_boots_with_secure_boot_vtpm_limits_then_changes_and_is_deleted(
    transactional_db, jobs_run_here, host, operator, test_pool, untrusted_zone, cleanup, libvirt_uri
):
    from apps.encryption.gateways import cryptsetup as cs
    from apps.encryption.models import EncryptedDisk, RetiredKey
    from apps.encryption.services import device_mapper, get_store
    from apps.vms.models import VmConfigRevision

    get_store().initialize()
    name = unique("hard")
    cleanup.append(name)
    overrides = {"vcpus": 1, "memory_mb": 128, "disks": [{"size_mb": 64, "encrypted": True}],
                 "limits": {"cpu_quota_percent": 50, "memory_max_mb": 1024, "io_bandwidth_mb": 10, "iops": 300}}
    job = provision.vm_create(actor=operator, host=host, name=name, profile=profile("hardened"),
                              overrides=overrides, pool=test_pool)  # fmt: skip
    vm = VirtualMachine.objects.get(host=host, name=name, present=True)
    assert (vm.last_state, vm.zone) == ("creating", untrusted_zone.name)  # the page works before the job
    job = run(job)
    assert job.state == "succeeded", job.error
    vm.refresh_from_db()
    assert vm.last_state == "running"
    outcomes = set(AuditEvent.objects.filter(target_id=str(vm.pk)).values_list("action", "outcome"))
    assert {("vms.vm.create", "requested"), ("vms.vm.create", "success"), ("encryption.disk.create", "success"),
            ("vms.vm.created", "success")} <= outcomes  # fmt: skip

    live = ET.fromstring(gw.domain_xml_live(libvirt_uri, name))  # noqa: S314 (libvirt's own XML)
    os_el = live.find("os")
    # libvirt resolved <os firmware='efi'> + secure-boot + enrolled-keys to OVMF's secure-boot
    # code with the Microsoft-enrolled variables (Debian's ovmf)
    loader = os_el.find("loader")
    assert (loader.get("secure"), loader.get("type"), loader.get("readonly")) == ("yes", "pflash", "yes")
    assert loader.text.endswith("OVMF_CODE_4M.ms.fd")
    assert live.find("features/smm").get("state") == "on"
    nvram = os_el.find("nvram")
    assert nvram.get("template").endswith("OVMF_VARS_4M.ms.fd") and Path(nvram.text).exists()
    tpm = live.find("devices/tpm")
    assert tpm.get("model") == "tpm-crb" and tpm.find("backend").get("version") == "2.0"
    swtpm = subprocess.run(["pgrep", "-af", "swtpm"], capture_output=True, text=True).stdout
    assert str(vm.uuid) in swtpm, "no swtpm process runs for the VM"
    disk = EncryptedDisk.objects.get(vm=vm)
    # the product's LUKS2 (cryptsetup: AES-256-XTS, Argon2id), opened by the host (device-mapper,
    # SIMULATED here: settings.ENCRYPTION_DEVICE_MAPPER); the guest is given the unlocked path,
    # never the container, and QEMU has no LUKS of its own to open
    assert disk.kind == EncryptedDisk.Kind.LUKS2 and disk.size_bytes == (64 + 16) << 20
    header = cs.dump(disk.path)
    assert (header.version, header.cipher, header.key_size, header.pbkdf) == (2, "aes-xts-plain64", 512, "argon2id")
    source = live.find("devices/disk/source").get("file")
    assert source == device_mapper().mapping_path(disk.mapping_name) and disk.path not in gw.domain_xml_live(
        libvirt_uri, name)
    assert list(live.find("devices/disk").iter("encryption")) == []
    # the create is the VM's first configuration revision, by the creating user
    first = VmConfigRevision.objects.filter(vm=vm).order_by("created", "pk").first()
    assert (first.author, first.author_name, first.source) == (operator, operator.username, "portal")
    assert first.reason == "vms.vm.create" and f"<name>{name}</name>" in first.xml and source in first.xml
    assert live.find("devices/interface/source").get("network") == untrusted_zone.network_name
    assert live.find("devices/interface/rom").get("enabled") == "no"
    assert live.find("launchSecurity") is None

    assert field(virsh("schedinfo", name), "vcpu_quota") == "50000"
    assert field(virsh("memtune", name), "hard_limit") == str(1024 * 1024)
    tune = virsh("blkdeviotune", name, "vda")
    assert (field(tune, "total_bytes_sec"), field(tune, "total_iops_sec")) == (str(10 << 20), "300")

    message = provision.vm_resources_change(actor=operator, vm=vm, vcpus=2, memory_mb=128,
                                            limits={"cpu_quota_percent": 25, "memory_max_mb": 768, "iops": 100})
    assert "vcpus take effect at the next start" in message
    assert field(virsh("schedinfo", name), "vcpu_quota") == "25000"
    assert field(virsh("memtune", name), "hard_limit") == str(768 * 1024)
    tune = virsh("blkdeviotune", name, "vda")
    assert (field(tune, "total_bytes_sec"), field(tune, "total_iops_sec")) == ("0", "100")
    change = AuditEvent.objects.get(action="vms.vm.resources", outcome="success")
    assert change.params["before"]["vcpus"] == 1 and change.params["after"]["vcpus"] == 2
    assert change.params["after"]["cpu_quota_us"] == 25000

    with pytest.raises(InvalidInput, match="Type the VM's name"):
        provision.vm_delete(actor=operator, vm=vm, confirm_name="nope", with_disks=True)
    job = run(provision.vm_delete(actor=operator, vm=vm, confirm_name=name, with_disks=True))
    assert job.state == "succeeded", job.error
    with pytest.raises(NotFound):
        gw.domain_get(libvirt_uri, name)
    assert gw.volume_find(libvirt_uri, test_pool, disk.volume) is None
    assert not EncryptedDisk.objects.filter(pk=disk.pk).exists()
    assert RetiredKey.objects.filter(key_id=disk.key_id).exists()
    assert not Path(source).exists()  # the mapping was closed
    assert not Path(nvram.text).exists()
    assert VirtualMachine.objects.filter(pk=vm.pk, present=False).exists()


def test_a_vm_boots_with_the_profiles_own_secure_boot_keys_enrolled_in_its_varstore(
    transactional_db, jobs_run_here, host, operator, test_pool, cleanup, libvirt_uri
):
    from apps.core.gateways import firmware

    name = unique("ownkeys")
    cleanup.append(name)
    cn = f"Portal test PK {name}"
    overrides = {"memory_mb": 128, "firmware": own_keys(certificate(cn))}
    job = run(provision.vm_create(actor=operator, host=host, name=name, profile=profile("minimal"),
                                  overrides=overrides, pool=test_pool))  # fmt: skip
    assert job.state == "succeeded", job.error
    live = ET.fromstring(gw.domain_xml_live(libvirt_uri, name))  # noqa: S314 (libvirt's own XML)
    loader, nvram = live.find("os/loader"), live.find("os/nvram")
    # OVMF's secure-boot code without Microsoft's variables, on the VM's own varstore
    assert loader.get("secure") == "yes" and loader.text.endswith("OVMF_CODE_4M.secboot.fd")
    assert nvram.text == f"{settings.VMS_NVRAM_DIR}/{name}_VARS.fd"
    enrolled = firmware.vars_certificates(nvram.text)
    assert enrolled["PK"] == enrolled["KEK"] == enrolled["db"] == [f"CN={cn}"]
    assert enrolled["SecureBootEnable"] == ["on"]
    assert gw.domain_state(libvirt_uri, name) == "running"

    vm = VirtualMachine.objects.get(host=host, name=name)
    from apps.core.gateways.libvirt.xml import domain_security_parse
    from apps.vms.security import vm_security_summary

    vm.security = domain_security_parse(gw.domain_xml_live(libvirt_uri, name))  # what the collector writes
    item = {i.key: i for i in vm_security_summary(vm)}["secure_boot"]
    assert (item.status, item.value) == ("good", "on (own keys)"), item
    provision.vm_delete_now(vm, actor=operator, with_disks=True)
    assert not Path(nvram.text).exists()


class _WorkerKilled(BaseException):
    """Stands for the worker process dying mid-job: nothing after it runs, no undo either."""


@pytest.mark.parametrize("killed_at", ["domain_define", "domain_start"])
def test_a_create_whose_worker_was_lost_is_cleaned_up_when_it_is_marked_failed(
    killed_at, db, host, operator, test_pool, cleanup, libvirt_uri, monkeypatch
):
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)  # queued only: the "worker" below runs it
    name = unique("lost")
    cleanup.append(name)
    job = provision.vm_create(actor=operator, host=host, name=name, profile=profile("minimal"), pool=test_pool,
                              overrides={"disks": [{"size_mb": 16}]})  # fmt: skip
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING, worker="w-killed")
    job.refresh_from_db()
    vm = VirtualMachine.objects.get(host=host, name=name)
    real = getattr(gw, killed_at)

    def killed(uri, arg):
        if killed_at == "domain_start":
            real(uri, arg)  # defined; the worker dies as it starts it
        raise _WorkerKilled

    monkeypatch.setattr(gw, killed_at, killed)
    with pytest.raises(_WorkerKilled):
        provision._create(vm, vm.origin.spec, job, None, lambda percent, message="": None, [])
    monkeypatch.undo()
    made = [v.name for v in gw.pool_get(libvirt_uri, test_pool).volumes if v.name.startswith(f"{name}-")]
    assert made == [f"{name}-disk0.qcow2"]  # what the lost worker left

    assert jobs.jobs_recover_worker("w-killed") == 1  # the worker starts again
    job.refresh_from_db()
    assert job.state == "failed" and "What it had made is removed" in job.error
    assert not [v for v in gw.pool_get(libvirt_uri, test_pool).volumes if v.name.startswith(f"{name}-")]
    with pytest.raises(NotFound):
        gw.domain_get(libvirt_uri, name)
    assert VirtualMachine.objects.get(pk=vm.pk).present is False
    cleaned = AuditEvent.objects.get(action="vms.vm.create.clean_up")
    assert cleaned.outcome == "success" and cleaned.actor_name == "system"


def test_a_failure_part_way_removes_what_was_created(
    transactional_db, jobs_run_here, host, operator, test_pool, cleanup, libvirt_uri, monkeypatch
):
    from apps.encryption.models import EncryptedDisk, RetiredKey
    from apps.encryption.services import device_mapper, get_store

    get_store().initialize()
    name = unique("fail")
    cleanup.append(name)

    opened = []

    def start_fails(uri, vm_name):  # a stand-in for a start that fails (e.g. the host is out of memory)
        opened.extend(d.mapping for d in EncryptedDisk.objects.all() if device_mapper().is_open(d.mapping))
        raise GatewayError("simulated start failure")

    defined = []
    real_define = gw.domain_define
    monkeypatch.setattr(gw, "domain_define", lambda uri, xml: defined.append(xml) or real_define(uri, xml))
    monkeypatch.setattr(gw, "domain_start", start_fails)
    iso = gw.volume_ensure_raw(libvirt_uri, test_pool, f"{unique('iso')}.iso", 1 << 20)  # a pool volume: accepted
    try:
        job = run(provision.vm_create(actor=operator, host=host, name=name, profile=profile("minimal"),
                                      pool=test_pool, iso=iso.path,
                                      overrides={"disks": [{"size_mb": 16}, {"size_mb": 16, "encrypted": True}]}))
        assert job.state == "failed" and "simulated start failure" in job.error
        # the LUKS2 disk was made and opened before the start failed: closed, deleted, its key retired
        created = AuditEvent.objects.get(action="encryption.disk.create", outcome="success")
        assert created.params["kind"] == "luks2"
        assert not EncryptedDisk.objects.exists()
        retired = RetiredKey.objects.get(vm_name=name)
        assert opened == [f"portal-{retired.key_id[:12]}"] and not device_mapper().is_open(opened[0])
        assert f"<source file=\"{iso.path}\"" in defined[0] and '<boot dev="cdrom"' in defined[0]
        assert gw.volume_find(libvirt_uri, test_pool, iso.name) is not None  # not the job's to remove
    finally:
        gw.volume_delete_if_exists(libvirt_uri, test_pool, iso.name)
    with pytest.raises(NotFound):
        gw.domain_get(libvirt_uri, name)
    assert not [v for v in gw.pool_get(libvirt_uri, test_pool).volumes if v.name.startswith(f"{name}-")]
    assert VirtualMachine.objects.get(host=host, name=name).present is False


@pytest.mark.parametrize(
    "name, overrides, iso, words",
    [
        ("bad name!", None, "", "Invalid VM name"),
        ("ok-name", {"cpu_features": {"sev": True}}, "", "this host has no SEV"),
        ("ok-name", {"cpu_features": {"sev_snp": True}}, "", "has no SEV-SNP"),
        ("ok-name", {"disks": [{"size_mb": 0}]}, "", "disks[0].size_mb: 0 is less than the minimum of 1"),
        ("ok-name", {"disks": [{"size_mb": 1 << 30}]}, "", "beyond pool"),
        ("ok-name", {"memory_mb": 8}, "", "memory_mb: 8 is less than the minimum of 16"),
        ("ok-name", {"memory_mb": 1 << 24}, "", "above host"),
        ("ok-name", {"colour": "red"}, "", "unknown key 'colour'"),
        ("ok-name", {"vcpus": "2"}, "", "vcpus: must be an integer"),
        ("ok-name", None, "/etc/hostname", "is not a volume of any storage pool"),
        ("ok-name", {"networks": [{"zone": "no-such-zone"}]}, "", "has no zone named 'no-such-zone'"),
        ("ok-name", {"firmware": own_keys(certificate("old", days=-1))}, "", "keys.pk: the certificate expired"),
        ("ok-name", {"firmware": own_keys("not a certificate")}, "", "firmware.keys.pk: not a PEM certificate"),
    ],
)
def test_bad_input_is_refused_clearly_nothing_is_created_and_it_is_audited(
    db, host, operator, test_pool, libvirt_uri, name, overrides, iso, words
):
    before_vols = {v.name for v in gw.pool_get(libvirt_uri, test_pool).volumes}
    with pytest.raises((InvalidInput, Conflict)) as exc:
        provision.vm_create(actor=operator, host=host, name=name, profile=profile("minimal"), overrides=overrides,
                            pool=test_pool, iso=iso)  # fmt: skip
    assert words in exc.value.message
    assert not VirtualMachine.objects.filter(name=name).exists()
    assert not Job.objects.exists()
    assert {v.name for v in gw.pool_get(libvirt_uri, test_pool).volumes} == before_vols
    refusal = AuditEvent.objects.get(action="vms.vm.create")
    assert (refusal.outcome, refusal.actor_name) == ("failed", operator.username)
    assert words in refusal.error


def test_quota_and_pool_limits_are_checked_before_anything_and_a_vm_can_be_created_with_its_own_quota(
    db, host, operator, test_pool, libvirt_uri, monkeypatch
):
    from decimal import Decimal

    from apps.storage.models import PoolLimit, StorageDefaults, VmQuota
    from apps.storage.quota_rules import defaults_from_settings

    monkeypatch.setattr(jobs, "_send", lambda job_id: None)
    StorageDefaults.objects.create(id=1, **{**defaults_from_settings(), "quota_bytes": 32 << 20})
    before_vols = {v.name for v in gw.pool_get(libvirt_uri, test_pool).volumes}

    def refused(words, **kw):
        name = unique("quota")
        with pytest.raises(InvalidInput) as exc:
            provision.vm_create(actor=operator, host=host, name=name, profile=profile("minimal"), pool=test_pool, **kw)
        assert words in exc.value.message, exc.value.message
        assert not VirtualMachine.objects.filter(name=name).exists() and not Job.objects.exists()
        assert AuditEvent.objects.filter(action="vms.vm.create", outcome="failed", error__contains=words).exists()

    refused("32 MiB over the default quota of 32 MiB")  # the minimal profile's 64 MiB disk
    refused("over the quota of 1 GiB", quota_gib=1, overrides={"disks": [{"size_mb": 2048}]})
    refused("a whole number of GiB", quota_gib=0)
    refused("a whole number of GiB", quota_gib="5")
    PoolLimit.objects.create(host=host, pool=test_pool, max_overcommit=Decimal("0.01"))
    capacity_mb = gw.pool_get(libvirt_uri, test_pool).capacity >> 20
    refused("over its maximum overcommit of 0.01x", quota_gib=1 << 16,
            overrides={"disks": [{"size_mb": capacity_mb // 50 + 1}]})  # fmt: skip
    PoolLimit.objects.filter(host=host, pool=test_pool).delete()
    assert {v.name for v in gw.pool_get(libvirt_uri, test_pool).volumes} == before_vols

    name = unique("quota")  # its own quota lifts the default's: created, with the quota set and audited
    provision.vm_create(actor=operator, host=host, name=name, profile=profile("minimal"), pool=test_pool, quota_gib=1)
    vm = VirtualMachine.objects.get(name=name)
    assert VmQuota.objects.get(vm=vm).limit_bytes == 1 << 30
    assert AuditEvent.objects.filter(action="storage.quota.set", outcome="success", target_id=str(vm.pk)).exists()


def test_a_host_that_cannot_open_luks2_refuses_an_encrypted_disk_and_says_what_works(
    db, host, operator, test_pool, monkeypatch
):
    from apps.encryption.gateways import cryptsetup as cs
    from apps.encryption.services import common, get_store

    get_store().initialize()

    class NoDeviceMapper:  # STAND-IN for a host whose kernel has no dm-crypt (this one has none either)
        def capability(self):
            return cs.MapperCapability("missing", "the kernel has no device-mapper")

    monkeypatch.setattr(common, "device_mapper", NoDeviceMapper)
    with pytest.raises(InvalidInput) as exc:
        provision.vm_create(actor=operator, host=host, name=unique("nodm"), profile=profile("minimal"),
                            overrides={"disks": [{"size_mb": 16, "encrypted": True}]}, pool=test_pool)  # fmt: skip
    assert "cannot open LUKS2 disks: the kernel has no device-mapper" in exc.value.message
    assert '"encryption": "qemu-luks"' in exc.value.message
    assert not VirtualMachine.objects.exists() and not Job.objects.exists()


def test_the_pages_follow_the_roles_and_scopes(db, client, host, personas, make_user, test_pool, monkeypatch):
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)
    profile("minimal")
    url = reverse("profiles:vm_create")
    form = {"host": host.name, "name": unique("page"), "profile": "minimal", "pool": test_pool,
            "overrides": '{"vcpus": 2}'}  # fmt: skip
    for role in ("viewer", "auditor", "outsider"):
        client.force_login(personas[role])
        assert client.post(url, form).status_code == 403
    zoned = make_user(role=Role.OPERATOR, scope="zone", zone="elsewhere")
    client.force_login(zoned)
    assert client.post(url, form).status_code == 403  # the VM would be in zone "default"
    assert AuditEvent.objects.filter(action="vms.vm.create", outcome="denied", actor_name=zoned.username).exists()

    client.force_login(personas["operator"])
    assert client.get(reverse("profiles:vm_new")).status_code == 200
    response = client.post(url, form)
    assert response.status_code == 302
    vm = VirtualMachine.objects.get(name=form["name"])
    assert response.url.startswith(reverse("vms:detail", args=[host.name, vm.name]))
    assert vm.origin.spec["vcpus"] == 2 and vm.last_state == "creating"
    from apps.vms.services import inventory_sync

    inventory_sync(host)  # the collector reads the host before the job defines the domain
    assert VirtualMachine.objects.get(pk=vm.pk).present
    page = client.get(reverse("vms:detail", args=[host.name, vm.name]))
    assert page.status_code == 200 and b"creating" in page.content
    bad = client.post(url, {**form, "name": unique("page"), "overrides": '{"vcpus": 2'})
    assert bad.status_code == 400 and b"not valid JSON" in bad.content
    assert AuditEvent.objects.filter(action="vms.vm.create", outcome="failed",
                                     error__contains="not valid JSON").exists()  # fmt: skip
    elsewhere = client.post(url, {**form, "name": unique("page"), "host": "no-such-host"})  # never another host
    assert elsewhere.status_code == 400 and b"No host named" in elsewhere.content
    assert not Job.objects.filter(kind="vms.vm.create", target_name__startswith="page-").exclude(
        target_id=str(vm.pk)).exists()  # fmt: skip

    resources = reverse("profiles:vm_resources", args=[host.name, vm.name])
    refused = client.post(resources, {"vcpus": 0, "memory_mb": 8})
    assert refused.status_code == 400 and b"Memory (MiB)" in refused.content
    assert AuditEvent.objects.filter(action="vms.vm.resources", outcome="failed").exists()
    client.force_login(personas["viewer"])
    assert client.post(resources, {"vcpus": 1, "memory_mb": 64}).status_code == 403
    client.force_login(personas["operator"])

    delete = reverse("profiles:vm_delete", args=[host.name, vm.name])
    assert client.post(delete, {"confirm_name": vm.name}).status_code == 302  # to re-authenticate
    assert not Job.objects.filter(kind="vms.vm.delete").exists()
    reauthenticate(client)
    assert client.post(delete, {"confirm_name": vm.name}).status_code == 302
    assert Job.objects.filter(kind="vms.vm.delete", target_id=str(vm.pk)).exists()


def test_profiles_are_versioned_admin_edited_and_round_trip_as_json(db, client, personas):
    hardened = profile("hardened")
    client.force_login(personas["operator"])
    assert client.get(reverse("profiles:detail", args=["hardened"])).status_code == 200
    save = reverse("profiles:save", args=["hardened"])
    assert client.post(save, {"spec": "{}"}).status_code == 403

    client.force_login(personas["admin"])
    exported = client.get(reverse("profiles:export", args=["hardened"])).content.decode()
    spec = {**hardened.spec, "vcpus": 4}
    import json

    assert client.post(save, {"spec": json.dumps(spec), "description": "4 vCPUs"}).status_code == 302
    hardened.refresh_from_db()
    assert (hardened.version, hardened.spec["vcpus"]) == (2, 4)
    assert list(hardened.versions.values_list("version", flat=True)) == [2, 1]
    bad = client.post(save, {"spec": json.dumps({**spec, "tpm": {"model": "tpm-x"}})})
    assert bad.status_code == 400 and b"tpm.model" in bad.content
    broken = client.post(save, {"spec": "{not json"})  # refused by the form: audited, nothing saved
    assert broken.status_code == 400 and b"not valid JSON" in broken.content
    assert AuditEvent.objects.filter(action="profiles.profile.save", outcome="failed",
                                     error__contains="not valid JSON").exists()  # fmt: skip
    hardened.refresh_from_db()
    assert hardened.version == 2
    hardened.refresh_from_db()
    assert hardened.version == 2
    assert AuditEvent.objects.filter(action="profiles.profile.save", outcome="failed").exists()

    copy = json.loads(exported)
    copy["name"] = "hardened-copy"
    assert client.post(reverse("profiles:import"), {"document": json.dumps(copy)}).status_code == 302
    imported = VmProfile.objects.get(name="hardened-copy")
    assert imported.spec == {k: v for k, v in json.loads(exported).items() if k not in ("name", "description")}
    unknown = client.post(reverse("profiles:import"), {"document": json.dumps({**copy, "secure": True})})
    assert unknown.status_code == 400 and b"unknown key" in unknown.content


def test_delete_without_disks_keeps_them(transactional_db, jobs_run_here, host, operator, make_domain, libvirt_uri,
                                         test_pool):  # fmt: skip
    from apps.vms.services import inventory_sync

    name = make_domain(running=False)
    inventory_sync(host)
    vm = VirtualMachine.objects.get(host=host, name=name)
    job = run(provision.vm_delete(actor=operator, vm=vm, confirm_name=name, with_disks=False))
    assert job.state == "succeeded", job.error
    assert job.result["deleted_disks"] == []
    with pytest.raises(NotFound):
        gw.domain_get(libvirt_uri, name)
    assert gw.volume_find(libvirt_uri, test_pool, f"{name}.qcow2") is not None
    gw.volume_delete_if_exists(libvirt_uri, test_pool, f"{name}.qcow2")
    assert AuditEvent.objects.filter(action="vms.vm.delete", outcome="success", target_id=str(vm.pk)).exists()
