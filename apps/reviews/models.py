"""Access reviews: per-user activity summaries kept as the audit log is written, and review
campaigns whose closed reports are frozen with their SHA-256."""

from django.conf import settings
from django.db import models


class UserActivitySummary(models.Model):
    """What the access report needs of a user's audit trail, kept up to date as each event
    is recorded (apps.reviews.summaries): the report reads one row per user instead of
    aggregating the whole log."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="activity_summary"
    )
    events = models.PositiveBigIntegerField(default=0, help_text="audit events with this user as actor")
    denied = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_action_at = models.DateTimeField(null=True, blank=True, help_text="newest event other than sign-in/out")
    last_action = models.CharField(max_length=80, blank=True)
    last_denied_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"activity of {self.user_id}"


class ReviewCampaign(models.Model):
    """An access review over all users or some: each of their role assignments is decided
    keep or revoke; closing applies the revocations and freezes the report."""

    class State(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    name = models.CharField(max_length=120)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    started_by = models.CharField(max_length=150)
    started_at = models.DateTimeField(auto_now_add=True)
    subjects = models.CharField(max_length=400, blank=True, help_text="'all users' or the user names reviewed")
    closed_by = models.CharField(max_length=150, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    report_csv = models.TextField(blank=True, help_text="the frozen report, written when the campaign closed")
    report_sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self):
        return self.name

    @property
    def is_open(self) -> bool:
        return self.state == self.State.OPEN


class ReviewItem(models.Model):
    """One role assignment under review, copied when the campaign started so the campaign
    stays readable after the assignment, or its user, is gone."""

    class Decision(models.TextChoices):
        PENDING = "", "undecided"
        KEEP = "keep"
        REVOKE = "revoke"

    campaign = models.ForeignKey(ReviewCampaign, on_delete=models.CASCADE, related_name="items")
    assignment = models.ForeignKey(
        "accounts.RoleAssignment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150)
    role = models.CharField(max_length=16)
    scope_label = models.CharField(max_length=200)
    decision = models.CharField(max_length=8, choices=Decision.choices, blank=True, default=Decision.PENDING)
    comment = models.CharField(max_length=500, blank=True)
    decided_by = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    applied = models.CharField(max_length=300, blank=True, help_text="what closing the campaign did with it")

    class Meta:
        ordering = ["username", "role", "scope_label", "id"]

    def __str__(self):
        return f"{self.username}: {self.role} of {self.scope_label}"
