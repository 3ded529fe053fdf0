from django.db import models

from apps.core.models import Host, name_validator


class VirtualMachine(models.Model):
    """A libvirt domain as the portal knows it: an identity for permissions (its host and
    zone), quotas and audit, and its last known state as the state collector read it."""

    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="vms")
    uuid = models.UUIDField()
    name = models.CharField(max_length=63, validators=[name_validator])
    zone = models.CharField(max_length=63, default="default", validators=[name_validator])
    last_state = models.CharField(max_length=20, blank=True)
    vcpus = models.PositiveIntegerField(default=0)
    memory_kib = models.PositiveBigIntegerField(default=0)
    disk_capacity = models.PositiveBigIntegerField(default=0, help_text="bytes provisioned, all disks")
    disk_allocation = models.PositiveBigIntegerField(default=0, help_text="bytes allocated, all disks")
    present = models.BooleanField(default=True, help_text="False once libvirt no longer lists it")
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["host__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["host", "uuid"], name="vm_unique_uuid_per_host"),
            models.UniqueConstraint(
                fields=["host", "name"], condition=models.Q(present=True), name="vm_unique_name_per_host"
            ),
        ]

    def __str__(self):
        return self.name

    scope_vm_path = ""  # permissions.restrict: this is the VM

    def scope_path(self):
        return (self.host_id, self.zone, self.pk)
