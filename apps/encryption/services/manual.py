"""Manual unlock for critical VMs (the seed's "require manual unlock for critical VMs").

A VM's unlock policy is automatic (the key store opens its disks at every start) or manual:
an admin types the VM's passphrase at start. Switching to manual adds the typed passphrase
to a LUKS key slot of each of its LUKS2 disks, removes the stored key's slot and retires
the stored key (kept wrapped for the grace period, then destroyed): from then on nothing in
the portal can open these disks; no start, neither the portal's nor `virsh start` nor
autostart (the libvirt hook refuses it), opens them without the passphrase.

The passphrase is never stored, never put in a job or a Celery message: every step that
needs it runs here, in the request (an admin waits a few seconds for the Argon2id key slot),
and it reaches cryptsetup on stdin or a pipe (/dev/fd/N), never argv. A manual start opens
the disks and starts the VM in the same request, so no mapping is left open by a job that
never ran; a failed start closes what it opened. Wrong passphrases are audited and
throttled like store unseals."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from apps.accounts import throttle
from apps.accounts.permissions import authorize
from apps.audit import context as audit_context
from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput, PortalError
from apps.core.gateways import libvirt as gw
from apps.vms.models import VirtualMachine

from ..gateways import cryptsetup as cs
from ..models import EncryptedDisk, UnlockPolicy
from .common import device_mapper, get_store, luks_params, new_disk_key, stored_key
from .delete import retire_key

MIN_VM_PASSPHRASE = 12


def is_manual(vm: VirtualMachine) -> bool:
    return UnlockPolicy.objects.filter(vm=vm, mode=UnlockPolicy.Mode.MANUAL).exists()


def manual_unlock_refusal(vm: VirtualMachine) -> Conflict:
    return Conflict(
        f"{vm.name} requires a manual unlock: an admin types its passphrase to start it "
        "(Encryption > the VM's unlock page, or `manage.py vm_encryption start-manual VM`). "
        "It is never opened automatically."
    )


def _throttle_key(vm: VirtualMachine) -> tuple[str, str]:
    return f"vm-unlock:{vm.pk}", audit_context.source_ip.get() or "vm-unlock-local"


def _checked_passphrase(vm: VirtualMachine, passphrase: str) -> bytes:
    who, address = _throttle_key(vm)
    if throttle.is_locked(who, address):
        raise Conflict(f"Too many wrong passphrases for {vm.name}: refused for a while; try again later.")
    if not passphrase:
        raise InvalidInput("Type the VM's passphrase.")
    return passphrase.encode()


def _wrong_passphrase(vm: VirtualMachine, disk: EncryptedDisk) -> InvalidInput:
    throttle.note_failure(*_throttle_key(vm))
    return InvalidInput(f"The passphrase does not open disk {disk.target} of {vm.name}.")


def _disks(vm: VirtualMachine) -> list[EncryptedDisk]:
    disks = list(EncryptedDisk.objects.filter(vm=vm).select_related("vm", "host"))
    if not disks:
        raise InvalidInput(f"{vm.name} has no encrypted disk.")
    for disk in disks:
        if disk.state != EncryptedDisk.State.READY:
            raise Conflict(f"Disk {disk.target} of {vm.name} is {disk.state}; wait until it is ready.")
        if disk.kind != EncryptedDisk.Kind.LUKS2:
            raise InvalidInput(
                f"Disk {disk.target} of {vm.name} is opened by QEMU with a libvirt secret: manual unlock is for "
                "LUKS2 disks, which the host opens."
            )
    return disks


def _slots_opened_by(path: str, secret: bytes) -> list[int]:
    return [s for s in cs.dump(path).slot_numbers if cs.test_key(path, secret, slot=s)]


def _replace_slots(path: str, old: bytes, new: bytes) -> None:
    """Add `new` to a free slot (authorised by `old`), verify it, then remove the slots `old`
    opens. Re-run after a crash, a slot `new` already opens is reused."""
    new_slots = _slots_opened_by(path, new)
    if not new_slots:
        new_slots = [cs.add_key(path, old, new, luks_params())]
    if not cs.test_key(path, new, slot=new_slots[0]):
        raise Conflict(f"The new secret does not open {path}; the old one was kept.")
    for slot in _slots_opened_by(path, old):
        if slot not in new_slots:
            cs.kill_slot(path, slot, new)


def vm_unlock_policy_set(*, actor, vm: VirtualMachine, mode: str, passphrase: str, confirmed: bool = False) -> None:
    """Switch the VM to `mode` (admins, re-authenticated in the view). To manual: the typed
    passphrase replaces the stored key in every disk, and the stored key is retired. To
    automatic: the typed passphrase (proving the admin knows it) is replaced by a new random
    key kept in the store. The VM must be shut off."""
    with audited(
        actor=actor, action="encryption.vm.unlock_policy", target=vm, perm="encryption.keys",
        params={"mode": str(mode)[:20]},
    ) as ev:
        if mode not in UnlockPolicy.Mode.values:
            raise InvalidInput("Choose automatic or manual unlock.")
        if not confirmed:
            raise InvalidInput(f"Changing how {vm.name}'s disks are unlocked needs confirmation.")
        if (UnlockPolicy.Mode.MANUAL if is_manual(vm) else UnlockPolicy.Mode.AUTOMATIC) == mode:
            raise InvalidInput(f"{vm.name} already has {mode} unlock.")
        state = gw.domain_state(vm.host.uri, vm.name)
        if state != "shut off":
            raise Conflict(f"{vm.name} is {state}: shut it off before changing how its disks are unlocked.")
        disks = _disks(vm)
        store = get_store()
        store.require_unsealed()
        if mode == UnlockPolicy.Mode.MANUAL:
            if len(passphrase) < MIN_VM_PASSPHRASE:
                raise InvalidInput(f"The VM's passphrase must be at least {MIN_VM_PASSPHRASE} characters long.")
            for disk in disks:
                _replace_slots(disk.path, stored_key(store, disk), passphrase.encode())
                retire_key(disk, disk.key_id, actor=actor)
        else:
            typed = _checked_passphrase(vm, passphrase)
            for disk in disks:
                if not _slots_opened_by(disk.path, typed):
                    raise _wrong_passphrase(vm, disk)
            for disk in disks:
                _to_automatic(store, disk, typed)
        UnlockPolicy.objects.update_or_create(vm=vm, defaults={"mode": mode, "changed_at": timezone.now()})
        ev.params["disks"] = [d.target for d in disks]


def _to_automatic(store, disk: EncryptedDisk, typed: bytes) -> None:
    from .hook import hook_registry_sync
    from .unlock import point_at_mapping

    key_id, key = store.new_key_id(), new_disk_key()
    store.put(key_id=key_id, vm_uuid=str(disk.vm_uuid), volume=disk.path, key=key)
    _replace_slots(disk.path, typed, key)
    with transaction.atomic():
        EncryptedDisk.objects.filter(pk=disk.pk).update(key_id=key_id, key_created_at=timezone.now(), escrowed_at=None)
    disk.key_id = key_id
    point_at_mapping(disk)  # the new key's mapping name
    hook_registry_sync(disk.vm)


def vm_start_manual(*, actor, vm: VirtualMachine, passphrase: str) -> str:
    """Open the disks of a manual-unlock VM with the typed passphrase and start it (both
    here, in the request). Returns the VM's state."""
    with audited(actor=actor, action="encryption.vm.manual_unlock", target=vm, perm="encryption.keys") as ev:
        if not is_manual(vm):
            raise InvalidInput(f"{vm.name} is unlocked automatically: start it the usual way.")
        typed = _checked_passphrase(vm, passphrase)
        state = gw.domain_state(vm.host.uri, vm.name)
        if state not in ("shut off", "crashed"):
            raise Conflict(f"Cannot start {vm.name}: it is {state}.")
        disks = _disks(vm)
        dm = device_mapper()
        try:
            for disk in disks:
                if not dm.is_open(disk.mapping_name):
                    try:
                        dm.open(disk.path, disk.mapping_name, typed)
                    except InvalidInput:
                        raise _wrong_passphrase(vm, disk) from None
                EncryptedDisk.objects.filter(pk=disk.pk).update(mapping=disk.mapping_name)
            gw.domain_start(vm.host.uri, vm.name)  # the libvirt hook finds the disks open
        except PortalError:
            from .unlock import disks_lock

            disks_lock(vm)
            raise
        throttle.clear(*_throttle_key(vm))
        state = gw.domain_state(vm.host.uri, vm.name)
        VirtualMachine.objects.filter(pk=vm.pk).update(last_state=state)
        ev.params["opened"] = [d.target for d in disks]
    return state


def vm_passphrase_change(*, actor, vm: VirtualMachine, passphrase: str, new_passphrase: str) -> None:
    """change-passphrase of a manual-unlock VM: the typed passphrase is replaced by a new
    one in every disk (new slot added and verified before the old one is removed)."""
    with audited(actor=actor, action="encryption.vm.passphrase_change", target=vm, perm="encryption.keys") as ev:
        if not is_manual(vm):
            raise InvalidInput(f"{vm.name} is unlocked automatically: its disks' keys change with change-passphrase.")
        typed = _checked_passphrase(vm, passphrase)
        if len(new_passphrase) < MIN_VM_PASSPHRASE:
            raise InvalidInput(f"The new passphrase must be at least {MIN_VM_PASSPHRASE} characters long.")
        if new_passphrase == passphrase:
            raise InvalidInput("The new passphrase is the same as the old one.")
        disks = _disks(vm)
        for disk in disks:
            if not _slots_opened_by(disk.path, typed) and not _slots_opened_by(disk.path, new_passphrase.encode()):
                raise _wrong_passphrase(vm, disk)
        for disk in disks:
            if _slots_opened_by(disk.path, typed):
                _replace_slots(disk.path, typed, new_passphrase.encode())
        throttle.clear(*_throttle_key(vm))
        ev.params["disks"] = [d.target for d in disks]


def unlock_policy_get(*, actor, vm: VirtualMachine) -> dict:
    """What the VM's unlock page shows: its policy and encrypted disks."""
    authorize(actor, "encryption.view", vm, action="encryption.vm.unlock_policy.view")
    disks = list(EncryptedDisk.objects.filter(vm=vm).order_by("target"))
    return {"manual": is_manual(vm), "disks": disks, "min_length": MIN_VM_PASSPHRASE}


def manual_unlock_vm_ids() -> set[int]:
    """VMs whose disks open only with a typed passphrase (for the VM list)."""
    return set(UnlockPolicy.objects.filter(mode=UnlockPolicy.Mode.MANUAL).values_list("vm_id", flat=True))
