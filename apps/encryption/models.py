from django.db import models
from django.utils import timezone

from apps.core.models import Host
from apps.vms.models import VirtualMachine


class EncryptedDisk(models.Model):
    """An encrypted disk of a VM. Its key lives in the key store under `key_id` (never here)."""

    class Kind(models.TextChoices):
        LUKS2 = "luks2", "LUKS2 (cryptsetup, opened by the host)"
        QEMU_LUKS = "qemu-luks", "LUKS1 (opened by QEMU with a libvirt secret)"

    class State(models.TextChoices):
        CREATING = "creating"
        ENCRYPTING = "encrypting"
        READY = "ready"
        FAILED = "failed"

    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="encrypted_disks")
    vm = models.ForeignKey(VirtualMachine, on_delete=models.PROTECT, related_name="encrypted_disks")
    vm_uuid = models.UUIDField(help_text="bound into the key file's associated data")
    path = models.CharField(max_length=1024, help_text="the real path of the LUKS image")
    pool = models.CharField(max_length=63, blank=True)
    volume = models.CharField(max_length=255, blank=True)
    target = models.CharField(max_length=16, blank=True, help_text="guest device, e.g. vdb")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.LUKS2)
    state = models.CharField(max_length=12, choices=State.choices, default=State.CREATING)
    size_bytes = models.PositiveBigIntegerField(default=0)
    key_id = models.CharField(max_length=32)
    pending_key_id = models.CharField(max_length=32, blank=True, help_text="set while a key change runs")
    key_created_at = models.DateTimeField(default=timezone.now)
    secret_uuid = models.CharField(max_length=36, blank=True, help_text="libvirt secret (qemu-luks)")
    mapping = models.CharField(max_length=128, blank=True, help_text="open device-mapper name, if any")
    created_at = models.DateTimeField(auto_now_add=True)
    header_backup_at = models.DateTimeField(null=True, blank=True)
    escrowed_at = models.DateTimeField(null=True, blank=True)
    recovery_tested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["vm__name", "target", "path"]
        constraints = [models.UniqueConstraint(fields=["host", "path"], name="encrypted_disk_unique_path")]

    def __str__(self):
        return f"{self.vm.name}:{self.volume or self.path}"

    scope_vm_path = "vm"  # permissions.restrict reaches the VM through this field

    def scope_path(self):
        return self.vm.scope_path()

    @property
    def mapping_name(self) -> str:
        return f"portal-{self.key_id[:12]}"

    @property
    def is_ready(self) -> bool:
        return self.state == self.State.READY

    @property
    def escrow_stale(self) -> bool:
        """An escrow was exported, but before the key changed: it holds an earlier key."""
        return bool(self.escrowed_at) and self.escrowed_at < self.key_created_at

    @property
    def header_backup_stale(self) -> bool:
        """The last header backup was taken before the key changed."""
        return bool(self.header_backup_at) and self.header_backup_at < self.key_created_at


class HeaderBackup(models.Model):
    """A LUKS header backup file of a disk, with the key it was taken under. A header
    backup keeps every key slot it had: after a key change, an older backup still opens
    the disk with the old key (`cryptsetup open --header OLD`), so it is marked stale
    and offered for destruction."""

    disk = models.ForeignKey(EncryptedDisk, on_delete=models.CASCADE, related_name="header_backups")
    path = models.CharField(max_length=1024, unique=True)
    key_id = models.CharField(max_length=32, help_text="the disk's key when the backup was taken")
    created_at = models.DateTimeField(default=timezone.now)
    stale = models.BooleanField(default=False, help_text="taken before a key change: still opens with the old key")

    class Meta:
        ordering = ["disk", "-created_at"]

    def __str__(self):
        return self.path

class RetiredKey(models.Model):
    """The key of a deleted encrypted disk. Its key file stays in the store (wrapped, and
    re-wrapped by KEK rotations) for a grace period, so a backup of the deleted volume can
    still be read; then the beat task destroys it (`destroyed_at`). The row is the history."""

    key_id = models.CharField(max_length=32, unique=True)
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="retired_keys")
    vm_name = models.CharField(max_length=200)
    vm_uuid = models.UUIDField()
    path = models.CharField(max_length=1024, help_text="the deleted volume the key opened")
    retired_at = models.DateTimeField(default=timezone.now)
    destroy_after = models.DateTimeField()
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-retired_at"]

    def __str__(self):
        return f"retired key {self.key_id} of {self.vm_name}:{self.path}"


class UnlockPolicy(models.Model):
    """How a VM's encrypted disks open at start. No row: automatic.
    - automatic: with the keys in the portal's key store (the portal, virsh or autostart).
    - manual: only with a passphrase an admin types at start; it lives in a LUKS key slot
      of each disk and nowhere in the portal (the store keeps no key of these disks)."""

    class Mode(models.TextChoices):
        AUTOMATIC = "automatic", "automatic (key store)"
        MANUAL = "manual", "manual (an admin types the passphrase at start)"

    vm = models.OneToOneField(VirtualMachine, on_delete=models.CASCADE, related_name="unlock_policy")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.AUTOMATIC)
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.vm.name}: {self.mode} unlock"
