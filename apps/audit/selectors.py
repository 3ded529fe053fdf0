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
