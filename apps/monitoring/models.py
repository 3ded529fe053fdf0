"""Host security posture results and the alerts monitoring raises itself."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.core.models import Host


class Status(models.TextChoices):
    PASS = "pass"  # noqa: S105 (a check status, not a password)
    FAIL = "fail"
    UNKNOWN = "unknown"


class PostureResult(models.Model):
    """The latest outcome of one posture check on one host (one row per host and check,
    updated by each run). `unknown` says why the check could not decide, never a pass."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="posture_results")
    key = models.CharField(max_length=63, help_text="the check, e.g. sysctl.kernel.kptr_restrict")
    title = models.CharField(max_length=200)
    category = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices)
    evidence = models.TextField(blank=True, help_text="what was read, for people")
    fix = models.TextField(blank=True, help_text="how to make it pass")
    checked_at = models.DateTimeField()
    changed_at = models.DateTimeField(help_text="when the status last changed")
    previous_status = models.CharField(max_length=8, choices=Status.choices, blank=True)

    class Meta:
        ordering = ["host__name", "category", "key"]
        constraints = [models.UniqueConstraint(fields=["host", "key"], name="posture_result_unique_check")]

    def __str__(self):
        return f"{self.host.name}/{self.key}: {self.status}"

    def scope_path(self):
        return (self.host_id, None, None)


class MonitoringAlert(models.Model):
    """An alert raised by monitoring (a posture check that turned from pass to fail). One
    open alert per host and subject; cleared when the check passes again."""

    class Level(models.TextChoices):
        WARNING = "warning"
        CRITICAL = "critical"

    class State(models.TextChoices):
        OPEN = "open"
        CLEARED = "cleared"

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="monitoring_alerts")
    source = models.CharField(max_length=20, default="posture")
    subject = models.CharField(max_length=63, help_text="e.g. the posture check")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.WARNING)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN, db_index=True)
    message = models.CharField(max_length=500)
    raised_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["host", "source", "subject"], condition=Q(state="open"), name="monitoring_alert_one_open"
            )
        ]

    def __str__(self):
        return f"{self.source} {self.subject} on {self.host.name} ({self.state})"

    def scope_path(self):
        return (self.host_id, None, None)


class LynisScan(models.Model):
    """A deeper scan of a host with lynis (run as a job): its hardening index, warnings and
    suggestions, as lynis reported them."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="lynis_scans")
    job_id = models.BigIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField()
    lynis_version = models.CharField(max_length=20, blank=True)
    hardening_index = models.PositiveSmallIntegerField(null=True, blank=True)
    warnings = models.JSONField(default=list, blank=True, help_text="[{test, text, details, solution}]")
    suggestions = models.JSONField(default=list, blank=True, help_text="[{test, text, details, solution}]")
    tests_performed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-finished_at", "-id"]

    def __str__(self):
        return f"lynis on {self.host.name} at {self.finished_at:%Y-%m-%d %H:%M}"

    def scope_path(self):
        return (self.host_id, None, None)


class IncidentResponsePlan(models.Model):
    """The one incident response plan an admin writes and reviews: the guide's four steps
    (prefilled), whom to call, and when it was last reviewed."""

    detect = models.TextField()
    contain = models.TextField()
    recover = models.TextField()
    review = models.TextField()
    contacts = models.TextField(blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField()
    updated_by_name = models.CharField(max_length=150)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="incident_plan_singleton")]

    def __str__(self):
        return f"incident response plan v{self.version}"


class TrainingAcknowledgement(models.Model):
    """A user's acknowledgement of one training item of the security guide (shown in the
    access review; the posture check wants every administrator to have acknowledged all)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_acks")
    item = models.CharField(max_length=40)
    acknowledged_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "item"], name="training_ack_once_per_item")]

    def __str__(self):
        return f"{self.user_id} acknowledged {self.item}"
