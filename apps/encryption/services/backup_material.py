"""A VM's encryption material for backups: its LUKS header backups and its disk keys, handed
to the backup app as files to store APART from the disk images (the backup app puts them in
a restic repository of their own), and taken back when a backup is restored to a new VM.

The encryption app owns every key here: the backup code never reads a key file. Each disk
key leaves the store only wrapped (AES-256-GCM, bound to the disk's identity) under the
store's "backup wrap key", a random key kept in the key store itself (under the KEK, like the
disk keys): a copy of the key-material repository alone opens nothing, and restic encrypts
it once more. A restore unwraps the key, proves it opens the restored LUKS container (or,
when the container's header was damaged, the saved header), and stores it under a new key
id bound to the new VM and path, so the new VM opens its disk like any other."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.db import transaction
from django.utils import timezone

from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput, NotFound
from apps.core.gateways import libvirt as gw

from ..gateways import cryptsetup as cs
from ..keystore import DISK_KEY_BYTES
from ..keystore.common import NONCE_BYTES, _b64, _unb64
from ..models import EncryptedDisk
from .common import device_mapper, get_store, stored_key
from .manual import is_manual

FORMAT = "hypervisor-portal-backup-key-1"
WRAP_KEY_ID = "backupkeywrap"  # one per key store; isalnum as the store wants
WRAP_BINDING = "backup-key-material"
MANIFEST = "encryption.json"


def _wrap_key() -> bytes:
    """The store's backup wrap key (made on first use). Sealed store: StoreSealed."""
    store = get_store()
    store.require_unsealed()
    try:
        key = store.get(key_id=WRAP_KEY_ID, vm_uuid=WRAP_BINDING, volume=WRAP_BINDING)
    except NotFound:
        key = os.urandom(DISK_KEY_BYTES)
        store.put(key_id=WRAP_KEY_ID, vm_uuid=WRAP_BINDING, volume=WRAP_BINDING, key=key)
    return key[:32]


def _aad(binding: dict) -> bytes:
    return json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def vm_has_key_material(vm) -> bool:
    return EncryptedDisk.objects.filter(vm=vm, state=EncryptedDisk.State.READY).exists()


def key_material_export(vm, directory: Path) -> list[dict]:
    """Write into `directory` (private, empty) the VM's encryption material: for each ready
    encrypted disk a fresh LUKS header backup (LUKS2 containers) and its key wrapped under
    the backup wrap key, plus a manifest. Returns the manifest's entries (no key in them).
    A manually unlocked VM has no key in the portal: its headers only are written."""
    manual = is_manual(vm)
    wrap = None if manual else _wrap_key()
    store = get_store()
    entries = []
    for disk in EncryptedDisk.objects.filter(vm=vm, state=EncryptedDisk.State.READY).order_by("target", "pk"):
        name = disk.target or f"disk{disk.pk}"
        entry = {"target": disk.target, "path": disk.path, "kind": disk.kind, "key_id": disk.key_id,
                 "header": "", "key": ""}  # fmt: skip
        if disk.kind == EncryptedDisk.Kind.LUKS2 and cs.is_luks(disk.path):
            cs.header_backup(disk.path, str(directory / f"{name}.luksheader"))
            entry["header"] = f"{name}.luksheader"
        if wrap is not None:
            binding = {"vm_uuid": str(vm.uuid), "path": disk.path, "target": disk.target, "key_id": disk.key_id}
            nonce = os.urandom(NONCE_BYTES)
            blob = nonce + AESGCM(wrap).encrypt(nonce, stored_key(store, disk), _aad(binding))
            document = {"format": FORMAT, "binding": binding, "cipher": "aes-256-gcm", "wrapped": _b64(blob)}
            _write_private(directory / f"{name}.key.json", json.dumps(document, sort_keys=True).encode())
            entry["key"] = f"{name}.key.json"
        entries.append(entry)
    _write_private(directory / MANIFEST, json.dumps({"vm": vm.name, "uuid": str(vm.uuid), "manual": manual,
                                                      "disks": entries}, indent=1).encode())  # fmt: skip
    return entries


def _unwrap(path: Path, entry: dict) -> bytes:
    try:
        document = json.loads(path.read_bytes())
        if document.get("format") != FORMAT:
            raise ValueError
        binding, blob = document["binding"], _unb64(document["wrapped"])
    except (OSError, ValueError, KeyError, TypeError):
        raise Conflict(f"The saved key of disk {entry['target']} is missing or damaged; use its escrow.") from None
    if binding.get("path") != entry["path"] or binding.get("key_id") != entry["key_id"]:
        raise Conflict(f"The saved key of disk {entry['target']} belongs to another disk; refusing it.")
    try:
        return AESGCM(_wrap_key()).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(binding))
    except InvalidTag:
        raise Conflict(
            f"The saved key of disk {entry['target']} does not decrypt with this key store's backup wrap key "
            "(another store, or altered); restore the key from its escrow file instead."
        ) from None


@dataclass
class AdoptPlan:
    """What a restore to a new VM needs from the encryption app, checked before anything is
    defined: per LUKS2 target, the key (kept in memory only), the new key id and the path
    the new definition names (the unlocked mapping)."""

    disks: list[dict]

    @property
    def sources(self) -> dict[str, str]:
        return {d["target"]: d["mapping"] for d in self.disks}

    def __repr__(self):  # never the keys
        return f"AdoptPlan({[d['target'] for d in self.disks]})"


def key_material_plan(directory: Path, restored: dict[str, str], *, for_restore: bool = True) -> AdoptPlan:
    """From the restored key material in `directory` and the restored containers
    ({target: path}), the plan for the new VM. Each key must open its restored container
    (cryptsetup --test-passphrase); when the container's header does not take it but the
    saved header does, the restore is refused naming the saved header (the image's header
    was damaged or changed). InvalidInput/Conflict with the reason; nothing is stored."""
    try:
        manifest = json.loads((directory / MANIFEST).read_bytes())
    except (OSError, ValueError):
        raise Conflict("This backup holds no encryption material for its encrypted disks; it cannot be restored "
                       "to a new VM (restore it in place, or put the key back from escrow).") from None  # fmt: skip
    if manifest.get("manual") and not for_restore:
        return AdoptPlan([])  # verification: no key to check
    if manifest.get("manual"):
        raise Conflict("The VM of this backup was unlocked manually: the portal kept no key of its disks, so the "
                       "restored VM could not open them. Restore it in place instead.")  # fmt: skip
    store = get_store()
    store.require_unsealed()
    dm = device_mapper()
    plan = []
    for entry in manifest.get("disks") or ():
        if entry.get("kind") != EncryptedDisk.Kind.LUKS2 or entry.get("target") not in restored:
            continue
        if not entry.get("key"):
            raise Conflict(f"The backup holds no key of disk {entry['target']}.")
        key = _unwrap(directory / entry["key"], entry)
        container = restored[entry["target"]]
        if not cs.test_key(container, key):
            header = directory / entry["header"] if entry.get("header") else None
            if header is not None and header.is_file() and cs.test_key(container, key, header=str(header)):
                raise Conflict(f"The restored disk {entry['target']} has a LUKS header its saved key no longer "
                               f"opens; the saved header does. Restore the header from the key-material backup "
                               f"({entry['header']}) with cryptsetup luksHeaderRestore, then retry.")  # fmt: skip
            raise Conflict(f"The saved key does not open the restored disk {entry['target']}; nothing was defined.")
        key_id = store.new_key_id()
        plan.append({"target": entry["target"], "path": container, "key_id": key_id, "key": key,
                     "mapping": dm.mapping_path(f"portal-{key_id[:12]}")})  # fmt: skip
    return AdoptPlan(plan)


def key_material_adopt(*, actor, vm, plan: AdoptPlan, pool: str = "") -> list[EncryptedDisk]:
    """Give the new (restored, defined) VM its encrypted disks: each key stored under its new
    key id bound to the VM and path, an EncryptedDisk row, the definition pointing at the
    mapping, the start hook told. Audited as encryption.disk.adopt."""
    made: list[EncryptedDisk] = []
    params = {"targets": [d["target"] for d in plan.disks], "pool": pool}
    with audited(actor=actor, action="encryption.disk.adopt", target=vm, perm="encryption.change", params=params):
        if not plan.disks:
            raise InvalidInput("No encrypted disk to adopt.")
        store = get_store()
        dm = device_mapper()
        with transaction.atomic():
            for item in plan.disks:
                store.put(key_id=item["key_id"], vm_uuid=str(vm.uuid), volume=item["path"], key=item["key"])
                disk = EncryptedDisk.objects.create(
                    host=vm.host, vm=vm, vm_uuid=vm.uuid, path=item["path"], pool=pool,
                    volume=os.path.basename(item["path"]), target=item["target"], kind=EncryptedDisk.Kind.LUKS2,
                    state=EncryptedDisk.State.READY, size_bytes=os.path.getsize(item["path"]),
                    key_id=item["key_id"], key_created_at=timezone.now(),
                )  # fmt: skip
                made.append(disk)
                if dm.block:
                    gw.domain_disk_set_source(vm.host.uri, vm.name, item["target"], item["mapping"], block=True)
        from .hook import hook_registry_sync

        hook_registry_sync(vm)
    return made


def key_material_discard(directory: Path) -> None:
    """Overwrite and remove the exported material (after restic has it) and the directory."""
    from ..gateways import files

    if not directory.is_dir():
        return
    for path in directory.rglob("*"):
        if path.is_file():
            files.destroy(str(path))
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_dir():
            path.rmdir()
    directory.rmdir()
