from django.db import models

from apps.core.models import name_validator


class VmProfile(models.Model):
    """A named template for new VMs (the guide's JSON in `spec`, validated by
    apps/profiles/schema.py). Each save adds a VmProfileVersion row and bumps `version`;
    a VM records the profile name and version it was made from."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    description = models.CharField(max_length=200, blank=True)
    spec = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class VmProfileVersion(models.Model):
    """Every saved version of a profile, kept: what a VM made from version N had."""

    profile = models.ForeignKey(VmProfile, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    spec = models.JSONField()
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    actor_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["profile", "-version"]
        constraints = [models.UniqueConstraint(fields=["profile", "version"], name="profile_version_unique")]

    def __str__(self):
        return f"{self.profile.name} v{self.version}"


class VmOrigin(models.Model):
    """Which profile (and version) a VM was created from, and the spec it was made with."""

    vm = models.OneToOneField("vms.VirtualMachine", on_delete=models.CASCADE, related_name="origin")
    profile_name = models.CharField(max_length=63)
    profile_version = models.PositiveIntegerField()
    spec = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    scope_vm_path = "vm"
