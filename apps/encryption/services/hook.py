"""The portal's side of the libvirt qemu hook (scripts/libvirt-hook-qemu, installed as
/etc/libvirt/hooks/qemu): every start of a VM with encrypted disks, from the portal,
`virsh start` or autostart at host boot, first opens its disks; every release closes them.

The hook finds the portal that manages a domain in a registry: one root-only JSON file per
domain UUID under settings.ENCRYPTION_HOOK_REGISTRY_DIR, naming this project, its python
and the environment that selects its settings (so concurrent test runs, each with its own
database and key store, and the production portal never mix up their VMs). The portal
writes the entry when a VM gets an encrypted disk and removes it with its last one.

`hook_prepare` and `hook_release` run inside libvirtd's hook, which must not call back into
libvirt: they read the domain XML libvirt hands over, the database and the key store, and
run cryptsetup (or the simulated mapper), nothing else. Audited as the system, with the
trigger "libvirt hook"."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from django.conf import settings

from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core.errors import Conflict, PortalError
from apps.core.gateways.libvirt import domain_devices_parse
from apps.vms.models import VirtualMachine

from ..keystore import write_private_file
from ..models import EncryptedDisk
from .unlock import disks_lock, disks_unlock, mapping_source, point_at_mapping

log = logging.getLogger(__name__)

TRIGGER = "libvirt hook"
# what selects the portal's settings; secrets themselves are never copied (their *_FILE is)
_ENV_NAMES = {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "LIBVIRT_URI", "DEFAULT_HOST_NAME", "SECRET_KEY_FILE"}
_ENV_PREFIXES = ("PORTAL_", "ENCRYPTION_")
_SECRET_WORDS = ("PIN", "PASSWORD", "PASSPHRASE", "SECRET")


def _hook_environment() -> dict[str, str]:
    env = {}
    for name, value in os.environ.items():
        if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES):
            if any(w in name for w in _SECRET_WORDS) and not name.endswith("_FILE"):
                continue
            env[name] = value
    env.update(getattr(settings, "ENCRYPTION_HOOK_EXTRA_ENV", {}))
    return env


def _entry_path(vm: VirtualMachine) -> Path:
    return Path(settings.ENCRYPTION_HOOK_REGISTRY_DIR) / f"{str(vm.uuid).lower()}.json"


def hook_registry_sync(vm: VirtualMachine) -> None:
    """Register the VM with the hook while it has encrypted disks; unregister it after."""
    path = _entry_path(vm)
    if not EncryptedDisk.objects.filter(vm=vm).exists():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    entry = {
        "vm_id": vm.pk,
        "vm": vm.name,
        "host": vm.host.name,
        "project": str(settings.BASE_DIR),
        "python": sys.executable,
        "env": _hook_environment(),
    }
    data = json.dumps(entry, indent=1, sort_keys=True).encode()
    if path.exists() and path.read_bytes() == data:
        return
    write_private_file(path, data, replace=True)


def _vm_of(vm_id: int | None, uuid: str) -> VirtualMachine | None:
    vm = VirtualMachine.objects.select_related("host").filter(pk=vm_id).first() if vm_id else None
    if vm is None or str(vm.uuid).lower() != uuid.lower():
        return None
    return vm


def _check_definition(vm: VirtualMachine, xml: str) -> set[str]:
    """The domain libvirt is about to start must name the unlocked path of each LUKS2 disk,
    never its container. Returns the definition's disk targets."""
    sources = {d["target"]: d["path"] for d in domain_devices_parse(xml)[0]}
    for disk in EncryptedDisk.objects.filter(vm=vm, kind=EncryptedDisk.Kind.LUKS2):
        if disk.target in sources and os.path.realpath(sources[disk.target] or "") == os.path.realpath(disk.path):
            raise Conflict(
                f"The definition of {vm.name} points disk {disk.target} at its LUKS container {disk.path}; "
                f"the guest must only see {mapping_source(disk)[0]}. Start it once from the portal to repair it."
            )
    return set(sources)


def hook_prepare(*, vm_id: int | None, uuid: str, xml: str) -> list[str] | None:
    """libvirt is about to start the domain: open its encrypted disks. None when the domain
    is not a VM of this portal. A PortalError (audited) makes libvirt refuse the start."""
    vm = _vm_of(vm_id, uuid)
    if vm is None:
        return None
    with audited(actor=None, action="encryption.vm.unlock", target=vm, params={"trigger": TRIGGER}) as ev:
        targets = _check_definition(vm, xml)
        opened = disks_unlock(vm, in_hook=True, targets=targets)
        ev.params["opened"] = opened
    return opened


def hook_release(*, vm_id: int | None, uuid: str) -> list[str] | None:
    """libvirt released the domain (it stopped, or its start failed): close its disks."""
    vm = _vm_of(vm_id, uuid)
    if vm is None:
        return None
    closed = disks_lock(vm)
    if closed:
        record(
            actor=None,
            action="encryption.vm.lock",
            target=vm,
            outcome="success",
            params={"trigger": TRIGGER, "closed": closed},
        )
    return closed


def definitions_protect(*, actor=None) -> list[str]:
    """Beat (every few minutes): every VM with encrypted disks is registered with the hook,
    and every ready LUKS2 disk's definition names its unlocked path, never its container
    (definitions from before this rule, or changed outside the portal). Audited per repair."""
    action = "encryption.vm.definition_repair"
    authorize(actor, "encryption.change", anywhere=True, action=action)
    repaired = []
    vms = VirtualMachine.objects.filter(encrypted_disks__isnull=False, present=True).distinct().select_related("host")
    for vm in vms:
        try:
            hook_registry_sync(vm)
            for disk in EncryptedDisk.objects.filter(vm=vm, state=EncryptedDisk.State.READY).select_related(
                "vm", "host"
            ):
                if point_at_mapping(disk):
                    repaired.append(f"{vm.name}:{disk.target}")
                    record(actor=actor, action=action, target=vm, outcome="success", params={"disk": disk.target})
        except PortalError as exc:  # one unreadable VM must not stop the others
            log.warning("definitions_protect: %s: %s", vm.name, exc.message)
    return repaired
