"""Create a VM from a profile, change its resources and limits, delete it.

`vm_create` checks everything before anything exists (name, profile + overrides against
the schema, the host's capabilities: SEV, secure boot, TPM, memory; the ISO is a pool
volume; quota and pool limits; zones), inserts the VM row (its page works at once; the
collector confirms it) and enqueues the job. The job creates the disks (encrypted ones
through the encryption services, as LUKS2 containers the host opens at every start),
defines and starts the domain, applies the limits, and on a failure part way removes what
it made, in reverse order."""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, NotFound, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.models import Host, Job
from apps.core.validators import validate_name
from apps.vms.history import record_revision, revision_capture
from apps.vms.models import VirtualMachine

from .models import VmOrigin, VmProfile
from .schema import MIN_MEMORY_MB, merged

MIB = 1 << 20
MAX_QUOTA_GIB = 1 << 20


@dataclass(frozen=True)
class Placement:
    """Where a VM goes: checked against a role's scope before it exists."""

    host_id: int
    zone: str

    def scope_path(self):
        return (self.host_id, self.zone, None)


@dataclass
class Plan:
    spec: dict
    zones: list  # network.Zone rows, in the spec's order
    zone: str  # the VM's zone label (its first network's zone, else "default")
    pools: dict  # pool name -> PoolInfo
    disks: list  # [(pool, size_bytes, encrypted)]
    iso: str
    sev: str
    caps: gw.HostCapabilities


def _encryption(disk: dict) -> str:
    """How a profile's disk is encrypted: "" (it is not), "luks2" (the default) or "qemu-luks"."""
    return disk.get("encryption", "luks2") if disk.get("encrypted") else ""


def _sev_kind(spec: dict) -> str:
    cpu = spec.get("cpu_features", {})
    return "sev-snp" if cpu.get("sev_snp") else "sev-es" if cpu.get("sev_es") else "sev" if cpu.get("sev") else ""


def capabilities_check(spec: dict, caps: gw.HostCapabilities, host_name: str) -> str:
    """Refuse what the host cannot give, with the reason; the SEV kind the spec asks for."""
    sev = _sev_kind(spec)
    have = {"sev": caps.sev, "sev-es": caps.sev_es, "sev-snp": caps.sev_snp}
    if sev and not have[sev]:
        label = sev.upper()
        raise InvalidInput(
            f"Host {host_name} has no {label}: this host has no SEV support in libvirt's domain capabilities "
            f"(memory encryption {label} cannot be given; the profile asks for it, so nothing was created)."
        )
    fw = spec.get("firmware", {})
    if fw.get("secure_boot") and not caps.secure_boot:
        raise InvalidInput(f"Host {host_name} has no secure-boot UEFI firmware (install Debian's ovmf).")
    if fw.get("keys"):
        from apps.core.gateways import firmware

        if not firmware.vars_tool_available():
            raise InvalidInput("The profile's own secure-boot keys need virt-fw-vars (pip install virt-firmware).")
        if not os.path.isfile(settings.VMS_OVMF_VARS_TEMPLATE):
            raise InvalidInput(f"The empty UEFI varstore {settings.VMS_OVMF_VARS_TEMPLATE} is missing "
                               "(install Debian's ovmf): the profile's own keys cannot be enrolled.")  # fmt: skip
    tpm = spec.get("tpm")
    if tpm and tpm.get("model", "tpm-crb") not in caps.tpm_models:
        raise InvalidInput(f"Host {host_name} offers no emulated TPM {tpm.get('model', 'tpm-crb')} (install swtpm).")
    if spec["memory_mb"] < MIN_MEMORY_MB:
        raise InvalidInput(f"memory_mb must be at least {MIN_MEMORY_MB} MiB.")
    if caps.memory_mib and spec["memory_mb"] > caps.memory_mib:
        raise InvalidInput(
            f"memory_mb {spec['memory_mb']} is above host {host_name}'s memory of {caps.memory_mib} MiB."
        )
    return sev


def _zones(host: Host, spec: dict):
    from apps.network.models import Zone

    zones = []
    for index, net in enumerate(spec.get("networks", [])):
        if "zone" in net:
            zone = Zone.objects.filter(host=host, name=net["zone"]).first()
            if zone is None:
                raise InvalidInput(f"networks[{index}]: host {host.name} has no zone named {net['zone']!r}.")
        else:
            zone = Zone.objects.filter(host=host, kind=net["zone_kind"]).order_by("name").first()
            if zone is None:
                raise InvalidInput(f"networks[{index}]: host {host.name} has no zone of kind {net['zone_kind']!r}.")
        if zone.network_state != "active":
            raise InvalidInput(f"Zone {zone.name} is {zone.network_state}, not active: no VM can join it yet.")
        zones.append(zone)
    return zones


def _iso_check(host: Host, iso: str) -> str:
    if not iso:
        return ""
    if not os.path.isabs(iso) or "\x00" in iso:
        raise InvalidInput(f"The boot ISO must be the path of a volume in a storage pool, not {iso[:80]!r}.")
    real = os.path.realpath(iso)
    volume = gw.volume_find_by_path(host.uri, real)
    inside = any(real.startswith(t.path.rstrip("/") + "/") for t in gw.pool_targets(host.uri) if t.path)
    if volume is None or not inside:
        raise InvalidInput(f"The boot ISO {iso[:120]} is not a volume of any storage pool on {host.name}.")
    return real


def plan(*, actor, host: Host, name: str, profile: VmProfile, overrides: dict | None, pool: str, iso: str,
         quota_gib: int | None = None) -> Plan:  # fmt: skip
    """Every check of a new VM, before anything is created (raises InvalidInput)."""
    validate_name(name, "VM name")
    if quota_gib is not None and (not isinstance(quota_gib, int) or isinstance(quota_gib, bool)
                                  or not 1 <= quota_gib <= MAX_QUOTA_GIB):  # fmt: skip
        raise InvalidInput(f"The VM's quota is a whole number of GiB from 1 to {MAX_QUOTA_GIB}, not {quota_gib!r}.")
    if VirtualMachine.objects.filter(host=host, name=name, present=True).exists():
        raise Conflict(f"Host {host.name} already has a VM named {name}.")
    try:
        gw.domain_get(host.uri, name)
        raise Conflict(f"Host {host.name} already has a libvirt domain named {name}.")
    except NotFound:
        pass
    spec = merged(profile.spec, overrides)
    caps = gw.host_domain_capabilities(host.uri)
    sev = capabilities_check(spec, caps, host.name)
    if spec.get("firmware", {}).get("keys"):
        from .secure_boot import keys_check

        keys_check(spec["firmware"]["keys"])  # and not expired: they are about to be enrolled
    zones = _zones(host, spec)
    zone = zones[0].name if zones else "default"
    authorize(actor, "vms.create", Placement(host.pk, zone), action="vms.vm.create")
    for z in zones[1:]:
        authorize(actor, "vms.create", Placement(host.pk, z.name), action="vms.vm.create")
    from apps.encryption.services.common import LUKS2_HEADER_BYTES

    pools, disks, per_pool = {}, [], {}
    for index, disk in enumerate(spec.get("disks", [])):
        pool_name = disk.get("pool") or pool
        if not pool_name:
            raise InvalidInput(f"disks[{index}]: choose a storage pool.")
        validate_name(pool_name, "pool name")
        if pool_name not in pools:
            try:
                pools[pool_name] = gw.pool_get(host.uri, pool_name)
            except NotFound:
                raise InvalidInput(f"disks[{index}]: host {host.name} has no storage pool {pool_name!r}.") from None
        size = disk["size_mb"] * MIB
        encrypted = bool(disk.get("encrypted"))
        disks.append((pool_name, size, encrypted))
        # a LUKS2 container's header (16 MiB) comes on top of the guest's size
        header = LUKS2_HEADER_BYTES if _encryption(disk) == "luks2" else 0
        info, grow, alloc = per_pool.get(pool_name, (pools[pool_name], 0, 0))
        per_pool[pool_name] = (info, grow + size + header, alloc + (header or MIB))
    from apps.storage.services import new_vm_space_check

    if quota_gib:  # a quota of its own, set with the VM: the storage permission over where it goes
        authorize(actor, "storage.change", Placement(host.pk, zone), action="vms.vm.create")
    new_vm_space_check(host, name, per_pool, quota_bytes=quota_gib << 30 if quota_gib else None)
    if any(encrypted for _p, _s, encrypted in disks):
        from apps.encryption.services import get_store
        from apps.encryption.services.common import require_luks2_openable

        authorize(actor, "encryption.change", Placement(host.pk, zone), action="vms.vm.create")
        if any(_encryption(d) == "luks2" for d in spec.get("disks", [])):
            try:
                require_luks2_openable(host)  # the host opens LUKS2 disks at every start (device-mapper)
            except InvalidInput as exc:
                raise InvalidInput(
                    f"{exc.message.split('. Every start')[0]}: every start of the VM would fail. Give the "
                    'encrypted disks "encryption": "qemu-luks" (LUKS1 that QEMU opens itself), which works here.'
                ) from None
        get_store().require_unsealed()
    return Plan(spec, zones, zone, pools, disks, _iso_check(host, iso), sev, caps)


def vm_create(*, actor, host: Host, name: str, profile: VmProfile, overrides: dict | None = None, pool: str = "",
              iso: str = "", quota_gib: int | None = None) -> Job:  # fmt: skip
    """Check, insert the VM row (with its own quota when `quota_gib` is given), and enqueue
    the create job."""
    params = {"name": name, "profile": profile.name, "profile_version": profile.version, "pool": pool,
              "iso": iso[:200], "overrides": overrides or {}, "quota_gib": quota_gib}  # fmt: skip
    target = ("virtualmachine", "", f"{host.name}/{name}"[:200])
    authorize(actor, "vms.create", anywhere=True, action="vms.vm.create", target=target)
    with audited(actor=actor, action="vms.vm.create", target=target, params=params) as ev:
        p = plan(actor=actor, host=host, name=name, profile=profile, overrides=overrides, pool=pool, iso=iso,
                 quota_gib=quota_gib)  # fmt: skip
        with transaction.atomic():
            vm = VirtualMachine.objects.create(
                host=host, uuid=uuidlib.uuid4(), name=name, zone=p.zone, last_state="creating",
                vcpus=p.spec["vcpus"], memory_kib=p.spec["memory_mb"] * 1024,
                disk_capacity=sum(size for _p, size, _e in p.disks),
            )  # fmt: skip
            VmOrigin.objects.create(vm=vm, profile_name=profile.name, profile_version=profile.version, spec=p.spec)
            if quota_gib:
                from apps.storage.services import new_vm_quota_set

                new_vm_quota_set(actor=actor, vm=vm, limit_bytes=quota_gib << 30)
            job = jobs.job_enqueue(actor=actor, kind="vms.vm.create", target=vm, host=host,
                                   params={**params, "iso": p.iso})  # fmt: skip
        ev.recorded = True
    return job


def _domain_type(spec: dict) -> str:
    """kvm where /dev/kvm exists, but a secure-boot guest needs SMM, which some KVMs (nested
    ones, as on the CI machines) lack: VMS_SECURE_BOOT_DOMAIN_TYPE says what to use there."""
    if spec.get("firmware", {}).get("secure_boot") and settings.VMS_SECURE_BOOT_DOMAIN_TYPE:
        return settings.VMS_SECURE_BOOT_DOMAIN_TYPE
    return "kvm" if os.path.exists("/dev/kvm") else "qemu"


def guest_spec(vm_name: str, uuid: str, spec: dict, *, disks: list[tuple[str, str]], networks: list[str],
               iso: str = "", sev: str = "", caps: gw.HostCapabilities | None = None,
               memtune: bool = True, nvram_path: str = "") -> gw.GuestSpec:  # fmt: skip
    """The profile's spec as the gateway's GuestSpec (disks: [(path, format)])."""
    limits = spec.get("limits", {})
    fw = spec.get("firmware", {})
    tpm = spec.get("tpm")
    mem = spec.get("memory_options", {})
    bandwidth = limits.get("io_bandwidth_mb", 0) * MIB
    iops = limits.get("iops", 0)
    return gw.GuestSpec(
        name=vm_name,
        uuid=uuid,
        memory_mib=spec["memory_mb"],
        vcpus=spec["vcpus"],
        disks=tuple(gw.GuestDisk(path, fmt, bandwidth, iops) for path, fmt in disks),
        networks=tuple(networks),
        iso_path=iso,
        uefi=fw.get("type", "bios") == "uefi",
        secure_boot=bool(fw.get("secure_boot")),
        enrolled_keys=fw.get("enrolled_keys", True) and "keys" not in fw,  # own keys: OVMF's empty varstore
        nvram_path=nvram_path,
        tpm_model=(tpm or {}).get("model", "tpm-crb") if tpm else "",
        cpu_quota_percent=limits.get("cpu_quota_percent", 0),
        memory_hard_limit_mib=limits.get("memory_max_mb", 0) if memtune else 0,
        sev=sev,
        sev_cbitpos=caps.sev_cbitpos if caps and caps.sev_cbitpos else 47,
        sev_reduced_phys_bits=caps.sev_reduced_phys_bits if caps and caps.sev_reduced_phys_bits else 1,
        hugepages=bool(mem.get("hugepages")),
        locked=bool(mem.get("locked")),
        no_shared_pages=bool(mem.get("no_shared_pages")),
        domain_type=_domain_type(spec),
    )


def limits_apply(uri: str, vm_name: str, limits: dict, targets: list[str]) -> bool:
    """The profile's limits on a domain, live when it runs (and in its definition). Limits
    absent from `limits` are lifted. True when applied live."""
    pct = limits.get("cpu_quota_percent")
    from apps.core.gateways.libvirt.guest import CPU_PERIOD_US, quota_us

    bandwidth = limits.get("io_bandwidth_mb", 0) * MIB
    iops = limits.get("iops", 0)
    return gw.domain_set_limits(
        uri, vm_name,
        cpu_period_us=CPU_PERIOD_US, cpu_quota_us=quota_us(pct) if pct else -1,
        memory_hard_limit_kib=limits["memory_max_mb"] * 1024 if limits.get("memory_max_mb") else -1,
        iotune={t: (bandwidth, iops) for t in targets},
    )  # fmt: skip


def _create_lost(job: Job) -> None:
    """A create job whose worker was lost (killed, restarted) left the VM half made: remove
    what it may have made, as its own failure would have (the domain and its disks, the
    plain disks made before the domain was defined, the varstore with the profile's keys),
    and record it. Each step tolerates what is not there."""
    from apps.core.gateways import firmware

    from .secure_boot import vars_path

    vm = VirtualMachine.objects.select_related("host").filter(pk=job.target_id).first()
    if vm is None:
        return
    origin = VmOrigin.objects.filter(vm=vm).first()
    with audited(actor=None, action="vms.vm.create.clean_up", target=vm, params={"job": job.pk}) as ev:
        result = vm_delete_now(vm, actor=None, with_disks=True, job=job)
        for index, disk in enumerate((origin.spec if origin else {}).get("disks", [])):
            pool = disk.get("pool") or job.params.get("pool", "")
            if pool and not disk.get("encrypted"):
                gw.volume_delete_if_exists(vm.host.uri, pool, f"{vm.name}-disk{index}.qcow2")
        firmware.vars_remove(vars_path(vm.name))
        VirtualMachine.objects.filter(pk=vm.pk).update(present=False, last_state="failed")
        ev.params["removed"] = result["deleted_disks"]


@jobs.handler("vms.vm.create", long=True, on_lost=_create_lost,
              lost_hint="What it had made is removed: create the VM again.")  # fmt: skip
def _run_create(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    actor = jobs.job_actor(job)
    authorize(actor, "vms.create", vm, action=job.kind)
    origin = VmOrigin.objects.get(vm=vm)
    undo: list = []
    try:
        return _create(vm, origin.spec, job, actor, progress, undo)
    except BaseException as exc:
        progress(95, f"failed ({str(getattr(exc, 'message', exc))[:200]}): removing what was created")
        for step in reversed(undo):
            try:
                step()
            except Exception as cleanup_exc:  # keep undoing the rest; the job's log says what stayed
                progress(96, f"clean-up step failed: {str(cleanup_exc)[:200]}")
        VirtualMachine.objects.filter(pk=vm.pk).update(present=False, last_state="failed")
        raise


def _create(vm: VirtualMachine, spec: dict, job: Job, actor, progress, undo: list) -> dict:
    from apps.network.models import Zone

    uri, host = vm.host.uri, vm.host
    p_iso = job.params.get("iso", "")
    sev = _sev_kind(spec)
    caps = gw.host_domain_capabilities(uri)
    capabilities_check(spec, caps, host.name)  # the host may have changed since the request
    networks = []
    for net in spec.get("networks", []):
        q = Zone.objects.filter(host=host)
        q = q.filter(name=net["zone"]) if "zone" in net else q.filter(kind=net["zone_kind"]).order_by("name")
        zone = q.first()
        if zone is None:
            raise InvalidInput("A zone of the profile is gone since the request.")
        networks.append(zone.network_name)
    plain, encrypted = [], []
    for index, disk in enumerate(spec.get("disks", [])):
        pool = disk.get("pool") or job.params.get("pool", "")
        size = disk["size_mb"] * MIB
        (encrypted if disk.get("encrypted") else plain).append((index, pool, size, _encryption(disk)))
    paths = []
    for index, pool, size, _kind in plain:
        progress(10 + index, f"creating disk {index} ({size >> 20} MiB) in {pool}")
        volume = f"{vm.name}-disk{index}.qcow2"
        info = gw.volume_create(uri, pool, volume, size)
        undo.append(lambda pool=pool, volume=volume: gw.volume_delete_if_exists(uri, pool, volume))
        paths.append((info.path, "qcow2"))
    nvram_path = ""
    keys = spec.get("firmware", {}).get("keys")
    if keys:
        from .secure_boot import vars_create

        progress(25, "enrolling the profile's own secure-boot keys (PK, KEK, db) into the VM's varstore")
        nvram_path = vars_create(vm.name, str(vm.uuid), keys)
        from apps.core.gateways import firmware

        undo.append(lambda: firmware.vars_remove(nvram_path))
    limits = spec.get("limits", {})
    # <memtune> is set once the guest runs: at start libvirt raises QEMU's locked-memory
    # rlimit to the hard limit, which needs CAP_SYS_RESOURCE; set live, it is a cgroup limit
    gspec = guest_spec(vm.name, str(vm.uuid), spec, disks=paths, networks=networks, iso=p_iso, sev=sev,
                       caps=caps, memtune=False, nvram_path=nvram_path)  # fmt: skip
    progress(30, "defining the domain")
    gw.domain_define(uri, gw.domain_guest_xml(gspec))
    undo.append(lambda: gw.domain_undefine(uri, vm.name))
    if encrypted:
        from apps.encryption.models import EncryptedDisk
        from apps.encryption.services import disk_create_with_vm, disk_delete_with_vm

        def _drop_encrypted():
            for disk in EncryptedDisk.objects.filter(vm=vm):
                disk_delete_with_vm(actor=actor, disk=disk, job=job)

        undo.insert(0, _drop_encrypted)  # after the domain is undefined
        for index, pool, size, kind in encrypted:
            progress(40 + index, f"creating encrypted disk {index} ({size >> 20} MiB, {kind}) in {pool}")
            # (iotune: limits_apply, once it runs)
            disk_create_with_vm(actor=actor, vm=vm, pool=pool, size_bytes=size, job=job, kind=kind)
    progress(60, "starting the VM")
    from apps.vms.services import BEFORE_START

    for hook in BEFORE_START:  # as every start: the encryption app opens the LUKS2 disks with their keys
        hook(vm, progress)
    gw.domain_start(uri, vm.name)
    targets = [d["target"] for d in gw.domain_disks_defined(uri, vm.name) if d.get("device", "disk") == "disk"]
    if limits:
        progress(80, "applying the limits")
        limits_apply(uri, vm.name, limits, targets if (limits.get("io_bandwidth_mb") or limits.get("iops")) else [])
    state = gw.domain_state(uri, vm.name)
    VirtualMachine.objects.filter(pk=vm.pk).update(last_state=state, last_seen=timezone.now(), present=True)
    revision_capture(vm=vm, actor=actor, reason=job.kind)  # configuration history: its first revision
    record(actor=actor, action="vms.vm.created", target=vm, outcome="success",
           params={"profile": job.params.get("profile"), "state": state}, job=job)  # fmt: skip
    return {"vm": vm.name, "state": state, "disks": len(paths) + len(encrypted)}


# ---------------------------------------------------------------- change


RESTART_FIELDS = ("vcpus", "memory_mb")


def vm_resources_change(*, actor, vm: VirtualMachine, vcpus: int, memory_mb: int, limits: dict) -> str:
    """New vCPUs, memory and limits for a VM: the same validation as a new VM (the schema,
    the host's memory), audited with before and after. Limits apply at once (live when it
    runs); vCPUs and memory go into its definition. Returns what needs a restart."""
    from apps.core.gateways.libvirt.guest import domain_limits_parse

    with audited(actor=actor, action="vms.vm.resources", target=vm, perm="vms.change") as ev:
        origin = VmOrigin.objects.filter(vm=vm).first()
        base = dict(origin.spec) if origin else {}
        spec = merged({**base, "vcpus": vcpus, "memory_mb": memory_mb, "limits": limits}, None)
        caps = gw.host_domain_capabilities(vm.host.uri)
        capabilities_check(spec, caps, vm.host.name)
        uri = vm.host.uri
        before_xml = gw.domain_xml_defined(uri, vm.name)
        before = domain_limits_parse(before_xml)
        ev.params["before"] = before
        targets = [d["target"] for d in gw.domain_disks_defined(uri, vm.name)]
        live = limits_apply(uri, vm.name, limits, targets)
        gw.domain_set_resources(uri, vm.name, vcpus=vcpus, memory_kib=memory_mb * 1024)
        after_xml = gw.domain_xml_defined(uri, vm.name)
        after = domain_limits_parse(after_xml)
        record_revision(vm, after_xml, actor, reason="vms.vm.resources")  # configuration history
        ev.params["after"] = after
        if origin:
            VmOrigin.objects.filter(pk=origin.pk).update(spec=spec)
        restart = [f for f in RESTART_FIELDS if before.get(f) != after.get(f)] if live else []
        ev.params["needs_restart"] = restart
    if restart:
        changed = " and ".join(f.replace("_mb", "") for f in restart)
        return f"Limits applied now; {changed} take effect at the next start."
    return "Saved; limits apply now." if live else "Saved; everything takes effect at the next start."


# ---------------------------------------------------------------- delete


def vm_delete(*, actor, vm: VirtualMachine, confirm_name: str, with_disks: bool) -> Job:
    """Delete a VM (typed confirmation of its name), with its disks or without."""
    params = {"with_disks": bool(with_disks)}
    with audited(actor=actor, action="vms.vm.delete", target=vm, perm="vms.delete", params=params) as ev:
        if confirm_name != vm.name:
            raise InvalidInput(f"Type the VM's name ({vm.name}) to confirm its deletion.")
        with transaction.atomic():
            job = jobs.job_enqueue(actor=actor, kind="vms.vm.delete", target=vm, host=vm.host, params=params)
        ev.recorded = True
    return job


@jobs.handler("vms.vm.delete", long=True)
def _run_delete(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    actor = jobs.job_actor(job)
    authorize(actor, "vms.delete", vm, action=job.kind)
    return vm_delete_now(vm, actor=actor, with_disks=job.params.get("with_disks", False), job=job, progress=progress)


def vm_delete_now(vm: VirtualMachine, *, actor, with_disks: bool, job=None, progress=None) -> dict:
    progress = progress or (lambda percent, message="": None)
    uri = vm.host.uri
    try:
        disks = gw.domain_disks_defined(uri, vm.name)
        present = True
    except NotFound:
        disks, present = [], False
    if present and gw.domain_state(uri, vm.name) != "shut off":
        progress(10, f"forcing {vm.name} off")
        gw.domain_force_off(uri, vm.name)
    removed = []
    if with_disks:
        from apps.encryption.models import EncryptedDisk
        from apps.encryption.services import disk_delete_with_vm

        for disk in EncryptedDisk.objects.filter(vm=vm):
            progress(30, f"deleting encrypted disk {disk.volume} (its key is retired)")
            disk_delete_with_vm(actor=actor, disk=disk, job=job)
            removed.append(disk.path)
    if present:
        progress(60, f"undefining {vm.name}")
        gw.domain_undefine(uri, vm.name)
    if with_disks:
        for disk in disks:
            path = disk.get("path") or ""
            if not path or path in removed or disk.get("device") == "cdrom":
                continue
            volume = gw.volume_find_by_path(uri, path)
            if volume is not None:
                progress(80, f"deleting {volume.name} from {volume.pool}")
                gw.volume_delete_if_exists(uri, volume.pool, volume.name)
                removed.append(path)
    VirtualMachine.objects.filter(pk=vm.pk).update(present=False, last_state="deleted")
    return {"vm": vm.name, "deleted_disks": removed}


__all__ = ["PortalError", "plan", "vm_create", "vm_delete", "vm_resources_change", "limits_apply", "guest_spec"]
