"""Shared pieces of the encryption services: the store and device-mapper from settings,
LUKS parameters, path checks against the host's pools, and disk lookups scoped to the user.
The permission check is apps.accounts.permissions.authorize (the system actor, None, of
management commands and workers included); job handlers pass apps.core.jobs.job_actor(job)."""

from __future__ import annotations

import os
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.accounts.permissions import restrict
from apps.core.errors import InvalidInput, NotFound
from apps.core.gateways import libvirt as gw

from ..gateways import cryptsetup as cs
from ..keystore import DISK_KEY_BYTES, KeyStore
from ..models import EncryptedDisk

LUKS2_HEADER_BYTES = 16 << 20  # LUKS2's default header (metadata + key slots): counted in sizes
MAX_SIZE_GIB = 4096


def get_store() -> KeyStore:
    """The host's key store, as configured (settings.ENCRYPTION_*)."""
    return KeyStore(
        settings.ENCRYPTION_KEY_DIR,
        provider=settings.ENCRYPTION_KEK_PROVIDER,
        runtime_dir=settings.ENCRYPTION_RUNTIME_DIR,
        kdf_memory_kib=settings.ENCRYPTION_KDF_MEMORY_KIB,
        kdf_iterations=settings.ENCRYPTION_KDF_ITERATIONS,
        pkcs11={
            "library": settings.ENCRYPTION_PKCS11_LIBRARY,
            "token": settings.ENCRYPTION_PKCS11_TOKEN,
            "pin": settings.ENCRYPTION_PKCS11_PIN,
        },
        kek_dir=settings.ENCRYPTION_KEK_FILE_DIR,
        tpm2={"tcti": settings.ENCRYPTION_TPM2_TCTI},
    )


def luks_params() -> cs.LuksParams:
    return cs.LuksParams(
        cipher=settings.ENCRYPTION_LUKS_CIPHER,
        key_size=settings.ENCRYPTION_LUKS_KEY_SIZE,
        pbkdf=settings.ENCRYPTION_PBKDF,
        pbkdf_memory_kib=settings.ENCRYPTION_PBKDF_MEMORY_KIB,
        iter_time_ms=settings.ENCRYPTION_PBKDF_ITER_TIME_MS,
        force_iterations=settings.ENCRYPTION_PBKDF_FORCE_ITERATIONS,
    )


def device_mapper():
    if settings.ENCRYPTION_DEVICE_MAPPER == "simulated":
        return cs.SimulatedDeviceMapper(str(settings.IMAGE_DIR / "simulated-mapper"))  # QEMU opens it
    return cs.CryptsetupDeviceMapper()


def luks2_capability(host=None) -> cs.MapperCapability:
    """Whether LUKS2 disks (opened by the host with cryptsetup) can be opened here. cryptsetup
    runs on the portal's machine, so it is that kernel that is read (the test settings'
    simulated mapper reads "simulated")."""
    return device_mapper().capability()


def require_luks2_openable(host) -> None:
    """Refuse a LUKS2 disk on a host that could never open it, before anything is made."""
    capability = luks2_capability(host)
    if not capability.available:
        raise InvalidInput(
            f"Host {host.name} cannot open LUKS2 disks: {capability.reason}. Every start of the VM would fail. "
            "Choose the qemu-luks kind instead (QEMU opens the disk itself with a libvirt secret), which works here."
        )


def container_paths(host) -> dict[str, str]:
    """{unlocked path: LUKS2 container path} of the host's LUKS2 disks: what their VMs'
    definitions name and what holds their data (storage counts the container)."""
    dm = device_mapper()
    disks = EncryptedDisk.objects.filter(host=host, kind=EncryptedDisk.Kind.LUKS2).only("key_id", "path")
    return {dm.mapping_path(d.mapping_name): d.path for d in disks}


def new_disk_key() -> bytes:
    return os.urandom(DISK_KEY_BYTES)


def stored_key(store: KeyStore, disk: EncryptedDisk, key_id: str | None = None) -> bytes:
    return store.get(key_id=key_id or disk.key_id, vm_uuid=str(disk.vm_uuid), volume=disk.path)


def ensure_stored_key(store: KeyStore, disk: EncryptedDisk, key_id: str | None = None) -> bytes:
    """The disk's key, created (random, 64 bytes) and stored on first use (jobs re-run)."""
    key_id = key_id or disk.key_id
    try:
        return stored_key(store, disk, key_id)
    except NotFound:
        key = new_disk_key()
        store.put(key_id=key_id, vm_uuid=str(disk.vm_uuid), volume=disk.path, key=key)
        return key


def pool_of_path(host, path: str) -> gw.PoolTarget:
    """The active pool whose target directory holds `path` after resolving symlinks
    (os.path.realpath on both sides); InvalidInput when there is none."""
    real = os.path.realpath(path)
    for pool in gw.pool_targets(host.uri):
        if not pool.path:
            continue
        root = os.path.realpath(pool.path)
        if os.path.commonpath([real, root]) == root and real != root:
            return pool
    raise InvalidInput(
        f"{path} is not inside a storage pool of host {host.name}; the portal only encrypts pool volumes."
    )


def pool_by_name(host, name: str) -> gw.PoolTarget:
    for pool in gw.pool_targets(host.uri):
        if pool.name == name:
            return pool
    raise NotFound(f"Host {host.name} has no active pool named {name!r}.")


def disk_for(user, pk: int, perm: str = "encryption.view") -> EncryptedDisk:
    """The encrypted disk, if the user may see it (NotFound otherwise: hidden stays hidden)."""
    disk = restrict(EncryptedDisk.objects.select_related("vm", "host"), user, perm).filter(pk=pk).first()
    if disk is None:
        raise NotFound("No such encrypted disk that you can see.")
    return disk


def key_rotation_due(disk: EncryptedDisk, now=None) -> bool:
    now = now or timezone.now()
    return now - disk.key_created_at > timedelta(days=settings.ENCRYPTION_KEY_MAX_AGE_DAYS)
