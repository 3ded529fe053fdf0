from django.conf import settings
from django.db import models


class AppendOnlyError(Exception):
    pass


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")


class AuditEvent(models.Model):
    """One action, allowed or denied. Append-only (the model and a database trigger refuse
    updates and deletes) and hash-chained: each event carries the hash of the previous."""

    class Outcome(models.TextChoices):
        REQUESTED = "requested"
        SUCCESS = "success"
        FAILED = "failed"
        DENIED = "denied"

    created_at = models.DateTimeField(db_index=True)
    # No database constraint and no cascade: the event must outlive the user it names.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=80, db_index=True)
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_name = models.CharField(max_length=200, blank=True)
    params = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, db_index=True)
    error = models.TextField(blank=True)
    job_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        # The log pages read newest first by (created_at, id) from a cursor (keyset), alone
        # or under one of the common filters; each such read walks one of these indexes.
        indexes = [
            models.Index(fields=["created_at", "id"], name="audit_time_id_idx"),
            models.Index(fields=["actor_name", "created_at", "id"], name="audit_actor_time_idx"),
            models.Index(fields=["target_name", "created_at", "id"], name="audit_target_time_idx"),
            models.Index(fields=["source_ip", "created_at", "id"], name="audit_ip_time_idx"),
            models.Index(fields=["target_type", "target_id"], name="audit_target_ref_idx"),
            models.Index(fields=["request_id"], name="audit_request_idx"),
        ]
        # action prefix (LIKE 'encryption.%'): `action` has db_index, for which Django also
        # builds a varchar_pattern_ops index on PostgreSQL (any collation)

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.outcome}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Audit events are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")


class AuditChainHead(models.Model):
    """A single row holding the hash of the newest event; locking it serialises appends."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_hash = models.CharField(max_length=64)
    count = models.PositiveBigIntegerField(default=0)


class AuditChainCheckpoint(models.Model):
    """Where incremental verification stopped (single row): the newest event verified, its
    hash, and when; or the first break found. `signature` is an HMAC with the chain key over
    (last_id, last_hash, checked), so a checkpoint moved forward by someone with database
    access only does not verify and verification starts over from the first event."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)
    checked = models.PositiveBigIntegerField(default=0)  # events verified in total up to last_id
    signature = models.CharField(max_length=64, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    broken_event_id = models.BigIntegerField(null=True, blank=True)
    broken_reason = models.TextField(blank=True)
    broken_at = models.DateTimeField(null=True, blank=True)
    anchored_id = models.BigIntegerField(null=True, blank=True)  # the head written to the newest anchor file
    anchored_at = models.DateTimeField(null=True, blank=True)


class AuditForwardCursor(models.Model):
    """SIEM forwarding queue (single row): every event with an id above `forwarded_id` is
    still to be sent; the cursor moves only after the socket write of a batch succeeded."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    forwarded_id = models.BigIntegerField(default=0)
    forwarded_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
