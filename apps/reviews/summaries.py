"""Per-user activity summaries, kept as audit events are recorded.

Each event with an actor adds to its actor's row in one UPDATE with F() expressions (counters
and the newest times), inside the transaction that records the event: appends are already
serialised on the audit chain head, so a missing row is created without a race. The access
report reads these rows; it never aggregates the audit log."""

from __future__ import annotations

from django.db.models import F, Value
from django.db.models.signals import post_save
from django.dispatch import receiver

from apps.audit.models import AuditEvent

from .models import UserActivitySummary

SIGN_IN_ACTIONS = ("auth.login", "auth.logout", "auth.session.ended")


def _changes(event: AuditEvent) -> dict:
    changes = {
        "events": F("events") + 1,
        "last_event_at": Value(event.created_at),
    }
    if event.outcome == AuditEvent.Outcome.DENIED:
        changes["denied"] = F("denied") + 1
        changes["last_denied_at"] = Value(event.created_at)
    elif event.outcome == AuditEvent.Outcome.FAILED:
        changes["failed"] = F("failed") + 1
    if event.action not in SIGN_IN_ACTIONS:
        changes["last_action_at"] = Value(event.created_at)
        changes["last_action"] = Value(event.action[:80])
    return changes


def summary_note_event(event: AuditEvent) -> None:
    """Add one recorded event to its actor's summary (nothing for the system or anonymous)."""
    if event.actor_id is None:
        return
    if UserActivitySummary.objects.filter(user_id=event.actor_id).update(**_changes(event)):
        return
    from django.contrib.auth import get_user_model

    if not get_user_model().objects.filter(pk=event.actor_id).exists():
        return  # the actor was deleted (events outlive users; summaries do not)
    denied = event.outcome == AuditEvent.Outcome.DENIED
    UserActivitySummary.objects.create(
        user_id=event.actor_id,
        events=1,
        denied=int(denied),
        failed=int(event.outcome == AuditEvent.Outcome.FAILED),
        last_event_at=event.created_at,
        last_denied_at=event.created_at if denied else None,
        last_action_at=None if event.action in SIGN_IN_ACTIONS else event.created_at,
        last_action="" if event.action in SIGN_IN_ACTIONS else event.action[:80],
    )


@receiver(post_save, sender=AuditEvent, dispatch_uid="reviews.summary_note_event")
def _event_recorded(sender, instance: AuditEvent, created: bool, raw: bool = False, **kwargs):
    if created and not raw:
        summary_note_event(instance)

