"""Quotas, pool limits, usage samples and alerts. Sizes are bytes; the portal shows GiB."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from apps.core.models import Host
from apps.vms.models import VirtualMachine

GIB = 1 << 30


class BreachAction(models.TextChoices):
    ALERT = "alert", "alert only"
    REFUSE = "refuse", "refuse growth"
    SUSPEND = "suspend", "suspend the VM"


percent_validators = [MinValueValidator(1), MaxValueValidator(100)]


class StorageDefaults(models.Model):
    """The one row of portal-wide defaults an admin edits; VMs and pools without their own
    values use these (a quota never has to be chosen when a VM is created)."""

    quota_bytes = models.PositiveBigIntegerField()
    alert_percent = models.PositiveSmallIntegerField(validators=percent_validators)
    breach_action = models.CharField(max_length=10, choices=BreachAction.choices)
    max_overcommit = models.DecimalField(max_digits=6, decimal_places=2, help_text="provisioned / capacity")
    reserve_percent = models.PositiveSmallIntegerField(validators=[MaxValueValidator(99)])
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(id=1), name="storage_defaults_singleton"),
            models.CheckConstraint(condition=Q(quota_bytes__gt=0), name="storage_defaults_quota_positive"),
            models.CheckConstraint(
                condition=Q(alert_percent__gte=1, alert_percent__lte=100), name="storage_defaults_alert_percent"
            ),
        ]

    def __str__(self):
        return "storage defaults"


class VmQuota(models.Model):
    """A VM's own quota. Empty fields fall back to StorageDefaults."""

    vm = models.OneToOneField(VirtualMachine, on_delete=models.CASCADE, related_name="storage_quota")
    limit_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    alert_percent = models.PositiveSmallIntegerField(null=True, blank=True, validators=percent_validators)
    breach_action = models.CharField(max_length=10, choices=BreachAction.choices, blank=True)
    version = models.PositiveIntegerField(default=1, help_text="raised on every change (no lost update)")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(limit_bytes__isnull=True) | Q(limit_bytes__gt=0), name="vm_quota_limit_positive"
            ),
            models.CheckConstraint(
                condition=Q(alert_percent__isnull=True) | Q(alert_percent__gte=1, alert_percent__lte=100),
                name="vm_quota_alert_percent",
            ),
        ]

    def __str__(self):
        return f"quota of {self.vm}"

    scope_vm_path = "vm"  # permissions.restrict reaches the VM through this field

    def scope_path(self):
        return self.vm.scope_path()


class PoolLimit(models.Model):
    """A pool's own limits. Empty fields fall back to StorageDefaults."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="pool_limits")
    pool = models.CharField(max_length=63)
    max_overcommit = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    reserve_percent = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(99)])
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "pool"], name="pool_limit_unique")]

    def __str__(self):
        return f"{self.host}/{self.pool}"

    def scope_path(self):
        return (self.host_id, None, None)


class UsageSample(models.Model):
    """Measured usage of a VM (vm set) or a pool (pool set). Raw samples are averaged into
    hourly, then daily ones as they age."""

    class Resolution(models.TextChoices):
        RAW = "raw"
        HOUR = "hour"
        DAY = "day"

    host = models.ForeignKey(Host, on_delete=models.CASCADE)
    vm = models.ForeignKey(VirtualMachine, null=True, blank=True, on_delete=models.CASCADE)
    pool = models.CharField(max_length=63, blank=True)
    at = models.DateTimeField()
    allocation = models.PositiveBigIntegerField(help_text="physical bytes")
    provisioned = models.PositiveBigIntegerField(help_text="virtual capacity promised")
    limit = models.PositiveBigIntegerField(help_text="quota (VM) or capacity (pool)")
    resolution = models.CharField(max_length=4, choices=Resolution.choices, default=Resolution.RAW)

    class Meta:
        ordering = ["at"]
        indexes = [
            models.Index(fields=["vm", "at"], name="usage_vm_at"),
            models.Index(fields=["host", "pool", "at"], name="usage_pool_at"),
            models.Index(fields=["resolution", "at"], name="usage_resolution_at"),
        ]

    def __str__(self):
        return f"{self.vm or self.pool} {self.at:%Y-%m-%d %H:%M} {self.allocation}"


class StorageAlert(models.Model):
    """A threshold crossed by a VM (vm set) or a pool. One open alert per subject."""

    class Level(models.TextChoices):
        WARNING = "warning"
        BREACH = "breach"

    class State(models.TextChoices):
        OPEN = "open"
        CLEARED = "cleared"

    host = models.ForeignKey(Host, on_delete=models.CASCADE)
    vm = models.ForeignKey(VirtualMachine, null=True, blank=True, on_delete=models.CASCADE)
    pool = models.CharField(max_length=63, blank=True)
    level = models.CharField(max_length=8, choices=Level.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN, db_index=True)
    usage = models.PositiveBigIntegerField()
    limit = models.PositiveBigIntegerField()
    percent = models.PositiveIntegerField()
    message = models.CharField(max_length=300)
    action_applied = models.CharField(max_length=10, blank=True)
    raised_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    acknowledged_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["vm"], condition=Q(state="open", vm__isnull=False), name="storage_alert_one_open_per_vm"
            ),
            models.UniqueConstraint(
                fields=["host", "pool"],
                condition=Q(state="open", vm__isnull=True),
                name="storage_alert_one_open_per_pool",
            ),
        ]

    def __str__(self):
        return f"{self.level} {self.subject}"

    @property
    def subject(self) -> str:
        return self.vm.name if self.vm_id else f"pool {self.pool}"

    scope_vm_path = "vm"  # permissions.restrict reaches the VM through this field

    def scope_path(self):
        return self.vm.scope_path() if self.vm_id else (self.host_id, None, None)


class PoolState(models.Model):
    """A storage pool as the state collector last read it: the pages read this, not libvirt.
    `provisioned`, `volume_allocation` and `volume_count` are its volumes' sums."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="pool_states")
    name = models.CharField(max_length=255)
    uuid = models.CharField(max_length=36, blank=True)
    active = models.BooleanField(default=True)
    path = models.CharField(max_length=1024, blank=True)
    capacity = models.PositiveBigIntegerField(default=0)
    allocation = models.PositiveBigIntegerField(default=0)
    available = models.PositiveBigIntegerField(default=0)
    provisioned = models.PositiveBigIntegerField(default=0)
    volume_allocation = models.PositiveBigIntegerField(default=0)
    volume_count = models.PositiveIntegerField(default=0)
    collected_at = models.DateTimeField()

    class Meta:
        ordering = ["host__name", "name"]
        constraints = [models.UniqueConstraint(fields=["host", "name"], name="pool_state_unique_name")]

    def __str__(self):
        return f"{self.host.name}/{self.name}"


class VolumeState(models.Model):
    """A volume as the state collector last read it, with the VM whose disk it is (if any)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="volume_states")
    pool = models.CharField(max_length=255)
    name = models.CharField(max_length=255)
    path = models.CharField(max_length=1024)
    capacity = models.PositiveBigIntegerField(default=0)
    allocation = models.PositiveBigIntegerField(default=0)
    vm = models.ForeignKey(VirtualMachine, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["pool", "name"]
        constraints = [models.UniqueConstraint(fields=["host", "path"], name="volume_state_unique_path")]
        indexes = [models.Index(fields=["host", "pool", "name"], name="volume_state_pool_name")]

    def __str__(self):
        return f"{self.pool}/{self.name}"


class VmDiskState(models.Model):
    """A VM's disks as storage measures them (every file of each disk's chain), as the state
    collector last read them: provisioned = the sizes the guest sees, allocation = the bytes
    the files take, snapshots included."""

    vm = models.OneToOneField(VirtualMachine, on_delete=models.CASCADE, related_name="disk_state")
    state = models.CharField(max_length=20, blank=True)
    provisioned = models.PositiveBigIntegerField(default=0)
    allocation = models.PositiveBigIntegerField(default=0)
    disk_count = models.PositiveIntegerField(default=0)
    collected_at = models.DateTimeField()

    def __str__(self):
        return f"disks of {self.vm_id}"
