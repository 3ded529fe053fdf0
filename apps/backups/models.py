"""Backups: policies (which VMs, how often, where, how long), repositories (a restic
repository per destination, its password in the key store), runs and verifications."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.core.models import Host, Job, name_validator
from apps.vms.models import VirtualMachine


class BackupRepository(models.Model):
    """A restic repository at a destination directory. Its password is a random key in the
    portal's key store (key_id), never beside the repository."""

    class Purpose(models.TextChoices):
        DISKS = "disks", "VM disks and definitions"
        KEYS = "keys", "LUKS headers and disk keys (kept apart from the disks)"

    path = models.CharField(max_length=500, unique=True)
    key_id = models.CharField(max_length=64, unique=True)
    purpose = models.CharField(max_length=8, choices=Purpose.choices, default=Purpose.DISKS)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.path

    def scope_path(self):
        return (None, None, None)  # holds every VM's backups: only a global role covers it


class BackupPolicy(models.Model):
    class Selector(models.TextChoices):
        ALL = "all", "every VM"
        ZONE = "zone", "the VMs of a zone"
        NAMES = "names", "VMs by name"

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    selector = models.CharField(max_length=8, choices=Selector.choices, default=Selector.ALL)
    zone = models.CharField(max_length=63, blank=True)
    vm_names = models.JSONField(default=list, blank=True)
    destination = models.CharField(max_length=500)
    interval_hours = models.PositiveIntegerField(default=24, validators=[MinValueValidator(1)])
    keep_last = models.PositiveIntegerField(default=7)
    keep_daily = models.PositiveIntegerField(default=7)
    keep_weekly = models.PositiveIntegerField(default=4)
    keep_monthly = models.PositiveIntegerField(default=6)
    verify_max_age_days = models.PositiveIntegerField(default=7, validators=[MaxValueValidator(3650)])
    enabled = models.BooleanField(default=True)
    last_scheduled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "backup policies"

    def __str__(self):
        return self.name

    def scope_path(self):
        return (None, None, None)  # may name any VM and any destination: only a global role edits it

    EDITABLE = ("selector", "zone", "vm_names", "destination", "interval_hours", "keep_last", "keep_daily",
                "keep_weekly", "keep_monthly", "verify_max_age_days", "enabled")  # fmt: skip

    def settings_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.EDITABLE}

    def covers(self, vm) -> bool:
        """Whether this policy's selector names `vm` (as backup_policy_vms selects them)."""
        if self.selector == self.Selector.ZONE:
            return vm.zone == self.zone
        if self.selector == self.Selector.NAMES:
            return vm.name in (self.vm_names or [])
        return True


class BackupRun(models.Model):
    """One backup of one VM. Only a `succeeded` run is a good backup: a run whose worker was
    lost is marked failed (backup_runs_reconcile), never left looking usable."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    ACTIVE = (State.QUEUED, State.RUNNING)

    vm = models.ForeignKey(VirtualMachine, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups")
    vm_name = models.CharField(max_length=200)
    vm_uuid = models.CharField(max_length=36, db_index=True)
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.SET_NULL)
    policy = models.ForeignKey(BackupPolicy, null=True, blank=True, on_delete=models.SET_NULL)
    repository = models.ForeignKey(BackupRepository, on_delete=models.PROTECT, related_name="runs")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    method = models.CharField(max_length=20, blank=True, help_text="offline or external-snapshot")
    snapshot_id = models.CharField(max_length=64, blank=True)
    keys_repository = models.ForeignKey(
        BackupRepository, null=True, blank=True, on_delete=models.PROTECT, related_name="key_runs"
    )  # where its LUKS headers and wrapped keys went
    keys_snapshot_id = models.CharField(max_length=64, blank=True, help_text="LUKS headers and wrapped keys")
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_per_second = models.BigIntegerField(default=0)
    seconds_left = models.IntegerField(null=True, blank=True)
    data_added = models.BigIntegerField(default=0)
    disks = models.JSONField(default=list, blank=True, help_text="[{target, path, format, size, sha256, encrypted}]")
    domain_xml = models.TextField(blank=True)
    error = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    forgotten_at = models.DateTimeField(null=True, blank=True, help_text="removed by the retention policy")

    scope_vm_path = "vm"  # permissions.restrict

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"{self.vm_name} backup {self.pk}"

    def scope_path(self):
        if self.vm is not None:
            return self.vm.scope_path()
        return (self.host_id, None, None)

    @property
    def good(self) -> bool:
        return self.state == self.State.SUCCEEDED and bool(self.snapshot_id) and self.forgotten_at is None

    @property
    def percent(self) -> int:
        if self.state == self.State.SUCCEEDED:
            return 100
        return int(100 * self.bytes_done / self.bytes_total) if self.bytes_total else 0


class BackupVerification(models.Model):
    """A restore of a run into scratch space, its checksums compared with those recorded at
    backup time, plus restic's repository check."""

    run = models.ForeignKey(BackupRun, on_delete=models.CASCADE, related_name="verifications")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL)
    ok = models.BooleanField(default=False)
    checked_at = models.DateTimeField(auto_now_add=True)
    details = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=1000, blank=True)

    scope_vm_path = "run__vm"

    class Meta:
        ordering = ["-checked_at", "-pk"]

    def scope_path(self):
        return self.run.scope_path()
