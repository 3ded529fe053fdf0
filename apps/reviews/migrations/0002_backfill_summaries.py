"""Existing audit events, counted once into the per-user summaries (from now on they are kept
as each event is recorded)."""

from django.conf import settings
from django.db import migrations
from django.db.models import Count, Max, Q

SIGN_IN_ACTIONS = ("auth.login", "auth.logout", "auth.session.ended")


def forwards(apps, schema_editor):
    AuditEvent = apps.get_model("audit", "AuditEvent")
    Summary = apps.get_model("reviews", "UserActivitySummary")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    users = set(User.objects.values_list("pk", flat=True))
    rows = (
        AuditEvent.objects.filter(actor_id__isnull=False)
        .order_by()
        .values("actor_id")
        .annotate(
            events=Count("id"),
            denied=Count("id", filter=Q(outcome="denied")),
            failed=Count("id", filter=Q(outcome="failed")),
            last_event_at=Max("created_at"),
            last_denied_at=Max("created_at", filter=Q(outcome="denied")),
            last_action_at=Max("created_at", filter=~Q(action__in=SIGN_IN_ACTIONS)),
        )
    )
    summaries = []
    for row in rows:
        if row["actor_id"] not in users:
            continue
        last = None
        if row["last_action_at"] is not None:
            last = (
                AuditEvent.objects.filter(actor_id=row["actor_id"], created_at=row["last_action_at"])
                .exclude(action__in=SIGN_IN_ACTIONS)
                .values_list("action", flat=True)
                .first()
            )
        summaries.append(Summary(user_id=row.pop("actor_id"), last_action=last or "", **row))
    Summary.objects.bulk_create(summaries, batch_size=500)


class Migration(migrations.Migration):
    dependencies = [("reviews", "0001_initial"), ("audit", "0003_sqlite_refuses_delete")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
