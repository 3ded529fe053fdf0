from django.contrib.auth import get_user_model
from django.db.models import Count, Max, Q

from apps.accounts.models import RoleAssignment
from apps.accounts.permissions import require

from .models import AuditEvent


def events_filtered(user, params):
    """The audit log, filtered. It names every user, address and host: only a global audit
    role reads it (an auditor scoped to one host or zone does not)."""
    require(user, "audit.view", None, action="audit.events.view")
    qs = AuditEvent.objects.all()
    if params.get("actor"):
        qs = qs.filter(actor_name__iexact=params["actor"])
    if params.get("action"):
        qs = qs.filter(action__startswith=params["action"])
    if params.get("outcome") in AuditEvent.Outcome.values:
        qs = qs.filter(outcome=params["outcome"])
    if params.get("target"):
        qs = qs.filter(target_name__icontains=params["target"])
    return qs


def access_review(user):
    """Every user with their roles, last sign-in, activity and denials: what an auditor
    reviews each quarter (who can do what, and who still needs to). Global auditors only."""
    require(user, "access_review.view", None, action="audit.access_review.view")
    users = (
        get_user_model()
        .objects.order_by("username")
        .annotate(
            actions=Count("pk", filter=Q()),
        )
    )
    assignments: dict[int, list[RoleAssignment]] = {}
    for a in RoleAssignment.objects.select_related("host", "vm"):
        assignments.setdefault(a.user_id, []).append(a)
    stats = {
        row["actor_id"]: row
        for row in AuditEvent.objects.filter(actor_id__isnull=False)
        .values("actor_id")
        .annotate(
            total=Count("id"),
            denied=Count("id", filter=Q(outcome="denied")),
            failed=Count("id", filter=Q(outcome="failed")),
            last=Max("created_at"),
        )
    }
    from apps.monitoring.training import ITEMS, acknowledgements_by_user

    training = acknowledgements_by_user()  # security training items acknowledged, per user
    rows = []
    for user in users:
        s = stats.get(user.pk, {})
        roles = assignments.get(user.pk, [])
        flags = []
        if not roles:
            flags.append("no role")
        if user.is_active and user.last_login is None:
            flags.append("never signed in")
        if not user.is_active and roles:
            flags.append("disabled but still has roles")
        if s.get("denied", 0) >= 5:
            flags.append("many denials")
        rows.append(
            {
                "user": user,
                "assignments": roles,
                "total": s.get("total", 0),
                "denied": s.get("denied", 0),
                "failed": s.get("failed", 0),
                "last_action": s.get("last"),
                "flags": flags,
                "training": f"{training.get(user.pk, 0)}/{len(ITEMS)}",
            }
        )
    return rows
