from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from apps.core.models import Host, name_validator


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    OPERATOR = "operator", "Operator"
    AUDITOR = "auditor", "Auditor"
    VIEWER = "viewer", "Viewer"


class Scope(models.TextChoices):
    GLOBAL = "global", "Everything"
    HOST = "host", "One host"
    ZONE = "zone", "One security zone"
    VM = "vm", "One VM"


class RoleAssignment(models.Model):
    """A role given to a user over a scope, like a Proxmox ACL path:
    / (global), /hosts/<host>, /zones/<zone>, /vms/<vm>."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="role_assignments")
    role = models.CharField(max_length=16, choices=Role.choices)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.GLOBAL)
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.CASCADE)
    zone = models.CharField(max_length=63, blank=True, validators=[name_validator])
    vm = models.ForeignKey("vms.VirtualMachine", null=True, blank=True, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["user__username", "role"]
        constraints = [
            models.UniqueConstraint(fields=["user", "role", "scope", "host", "zone", "vm"], name="unique_assignment"),
            models.CheckConstraint(
                condition=(
                    models.Q(scope="global", host__isnull=True, zone="", vm__isnull=True)
                    | models.Q(scope="host", host__isnull=False, zone="", vm__isnull=True)
                    | models.Q(scope="zone", host__isnull=True, vm__isnull=True) & ~models.Q(zone="")
                    | models.Q(scope="vm", host__isnull=True, zone="", vm__isnull=False)
                ),
                name="assignment_scope_consistent",
            ),
        ]

    def clean(self):
        needed = {"host": self.host_id, "zone": self.zone, "vm": self.vm_id}
        if self.scope != Scope.GLOBAL and not needed[self.scope]:
            raise ValidationError(f"A {self.get_scope_display().lower()} assignment needs its {self.scope}.")
        if self.role == Role.ADMIN and self.scope != Scope.GLOBAL:
            raise ValidationError("The admin role can only be given globally.")

    @property
    def scope_label(self) -> str:
        if self.scope == Scope.HOST:
            return f"host {self.host}"
        if self.scope == Scope.ZONE:
            return f"zone {self.zone}"
        if self.scope == Scope.VM:
            return f"VM {self.vm}"
        return "everything"

    def __str__(self):
        return f"{self.user} is {self.role} of {self.scope_label}"


class SessionEpoch(models.Model):
    """A user's session generation. Each session remembers the epoch it signed in under;
    revoking a role, disabling the user or changing their password moves the epoch on, and
    every older session is refused at its next request (apps.accounts.sessions)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="session_epoch"
    )
    epoch = models.PositiveIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.user_id}@{self.epoch}"
