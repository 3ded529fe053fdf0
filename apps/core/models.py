from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from .validators import NAME_RE

name_validator = RegexValidator(NAME_RE, "Use letters, digits, '.', '_' or '-', starting with a letter or digit.")


class Host(models.Model):
    """A libvirt hypervisor the portal manages. Every VM, pool and network belongs to one."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    uri = models.CharField(max_length=255, help_text="libvirt URI, e.g. qemu:///system")
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # written by the state collector (apps/vms/collector.py), read by the pages
    collected_at = models.DateTimeField(null=True, blank=True, help_text="last complete read of the host")
    unreachable_since = models.DateTimeField(null=True, blank=True, help_text="set while the host cannot be read")
    collect_error = models.CharField(max_length=500, blank=True)
    # libvirt's security drivers on this host (capabilities' <secmodel> model names: apparmor,
    # selinux, dac, none), read by the collector with each bulk read: shown on host and VM pages
    security_models = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def scope_path(self):
        return (self.pk, None, None)

    @property
    def lsm_model(self) -> str:
        """The host's mandatory access control driver for QEMU ("apparmor", "selinux"), or ""
        when libvirt confines guests by DAC (uid/gid) only, or not read yet."""
        for model in self.security_models or []:
            if model in ("apparmor", "selinux"):
                return model
        return ""

    @property
    def confinement(self) -> tuple[str, str]:
        """("good" | "bad" | "unknown", a sentence): what this host confines QEMU with."""
        models = list(self.security_models or [])
        if not models:
            return "unknown", "Not read yet: the state collector reads libvirt's security drivers with each bulk read."
        names = {"apparmor": "AppArmor", "selinux": "SELinux"}
        if self.lsm_model:
            lsm = names[self.lsm_model]
            return "good", f"libvirt confines each QEMU process with {lsm} (security drivers: {', '.join(models)})."
        return "bad", (
            "This host has no LSM (neither AppArmor nor SELinux is active; libvirt reports security drivers "
            f"{', '.join(models)}): no VM here can be confined"
            + (", QEMU is only separated by its user and group (DAC)." if "dac" in models else ".")
        )

    @property
    def stale(self) -> bool:
        """True when the portal's picture of this host may be out of date."""
        return self.unreachable_since is not None or self.collected_at is None


class Job(models.Model):
    """A long action run by a Celery worker, with progress people can watch."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    FINISHED = (State.SUCCEEDED, State.FAILED)

    kind = models.CharField(max_length=80, help_text="the audited action, e.g. vms.vm.suspend")
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.SET_NULL)
    target_type = models.CharField(max_length=40)
    target_id = models.CharField(max_length=64, blank=True)
    target_name = models.CharField(max_length=200)
    params = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MinValueValidator(0), MaxValueValidator(100)])
    log = models.JSONField(default=list, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    celery_task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.kind} {self.target_name} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def label(self) -> str:
        return self.kind.rsplit(".", 1)[-1].replace("_", " ")
