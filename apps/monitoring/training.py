"""The security guide's training items administrators acknowledge (one row per user and item)."""

from __future__ import annotations

from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core.errors import InvalidInput

from .models import TrainingAcknowledgement

ITEMS: dict[str, str] = {
    "least-privilege": "Give each person the smallest role and scope that does the job; review access quarterly.",
    "keys-and-escrow": "Never share passphrases, KEKs or escrow files; keep escrow copies offline; "
    "rotate a key that may be exposed.",
    "changes-through-portal": "Change VMs, storage, keys and firewall rules through the portal (audited), "
    "not by hand on the host.",
    "incident-reporting": "Report a suspected incident at once and follow the incident response plan.",
    "credential-hygiene": "Use a unique password with a manager, recognise phishing, sign out on shared machines.",
}


def acknowledged_by(user) -> dict[str, object]:
    """item -> when the user acknowledged it."""
    return dict(TrainingAcknowledgement.objects.filter(user=user).values_list("item", "acknowledged_at"))


def training_acknowledge(*, actor, item: str) -> TrainingAcknowledgement:
    """The acting administrator acknowledges one item (again: the date moves)."""
    action, target = "monitoring.training.acknowledge", actor
    authorize(actor, "security.manage", action=action, target=target)
    with audited(actor=actor, action=action, target=target, params={"item": item}, atomic=True):
        if item not in ITEMS:
            raise InvalidInput(f"There is no training item {item!r}.")
        row, _ = TrainingAcknowledgement.objects.update_or_create(
            user=actor, item=item, defaults={"acknowledged_at": timezone.now()}
        )
    return row


def acknowledgements_by_user() -> dict[int, int]:
    """user id -> how many of the current training items they acknowledged (access review)."""
    from django.db.models import Count

    rows = TrainingAcknowledgement.objects.filter(item__in=ITEMS).values("user_id").annotate(n=Count("id"))
    return {row["user_id"]: row["n"] for row in rows}
