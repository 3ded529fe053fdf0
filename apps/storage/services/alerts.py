"""Alerts people acknowledge, and the notifications sent when they change (the lists of
alerts people see are read by apps/storage/selectors.py)."""

from __future__ import annotations

from django.utils import timezone

from apps.accounts.permissions import has_perm
from apps.audit.services import audited
from apps.core.errors import Conflict, NotFound

from ..models import StorageAlert


def alert_acknowledge(*, actor, alert_id: int) -> StorageAlert:
    alert = StorageAlert.objects.select_related("vm", "vm__host", "host").filter(pk=alert_id).first()
    if alert is None or (actor is not None and not has_perm(actor, "storage.view", alert)):
        raise NotFound(f"No storage alert #{alert_id} that you can see.")
    target = alert.vm if alert.vm_id else ("pool", f"{alert.host.name}/{alert.pool}", alert.pool)
    with audited(actor=actor, action="storage.alert.acknowledge", target=target, obj=alert, perm="storage.change",
                 params={"alert": alert.pk}, atomic=True):  # fmt: skip
        updated = StorageAlert.objects.filter(
            pk=alert.pk, state=StorageAlert.State.OPEN, acknowledged_at__isnull=True
        ).update(
            acknowledged_at=timezone.now(),
            acknowledged_by=actor if getattr(actor, "is_authenticated", False) else None,
            acknowledged_by_name=getattr(actor, "username", "") or "system",
        )
        if not updated:
            alert.refresh_from_db()
            if alert.state != StorageAlert.State.OPEN:
                raise Conflict(f"The alert on {alert.subject} is already cleared.")
            raise Conflict(f"The alert on {alert.subject} was already acknowledged by {alert.acknowledged_by_name}.")
    alert.refresh_from_db()
    return alert


def notify(alert: StorageAlert, event: str) -> None:
    """The change on every notification channel (apps.monitoring.notifications: mail, the
    signed webhook, Alertmanager; NOTIFY_*), sent by the workers once the check's
    transaction commits, with retries and one audit row per delivery. Never raises."""
    from apps.monitoring import notifications

    notifications.notify(
        notifications.Notice(
            source="storage", name=f"PortalStorage{event.capitalize()}", subject=alert.subject,
            host=alert.host.name, level="critical" if alert.level == "breach" else "warning",
            state="resolved" if event == "clear" else "firing", message=f"{event}: {alert.message}",
        )
    )  # fmt: skip
