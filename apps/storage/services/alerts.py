"""Alerts people acknowledge, and the notifications sent when they change (the lists of
alerts people see are read by apps/storage/selectors.py)."""

from __future__ import annotations

import json
import logging
import urllib.request

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from apps.accounts.permissions import has_perm
from apps.audit.services import audited
from apps.core.errors import Conflict, NotFound

from ..models import StorageAlert

log = logging.getLogger(__name__)


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
    """Send the change by email and webhook when configured. Never raises: a mail server
    or webhook that is down must not stop the check (the failure is logged)."""
    subject = f"[portal] storage {event}: {alert.subject} on {alert.host.name}"
    if settings.STORAGE_ALERT_EMAIL_TO:
        try:
            send_mail(subject, alert.message, None, settings.STORAGE_ALERT_EMAIL_TO)
        except Exception as exc:  # SMTP errors come in many types
            log.warning("storage alert email failed: %s", exc)
    url = settings.STORAGE_ALERT_WEBHOOK_URL
    if url:
        if not url.startswith(("http://", "https://")):
            log.warning("STORAGE_ALERT_WEBHOOK_URL must be an http(s) URL")
            return
        body = json.dumps(
            {
                "event": event,
                "alert": alert.pk,
                "level": alert.level,
                "state": alert.state,
                "host": alert.host.name,
                "vm": alert.vm.name if alert.vm_id else None,
                "pool": alert.pool or None,
                "usage": alert.usage,
                "limit": alert.limit,
                "percent": alert.percent,
                "message": alert.message,
            }
        ).encode()
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=settings.STORAGE_ALERT_WEBHOOK_TIMEOUT) as response:  # noqa: S310
                response.read()
        except OSError as exc:
            log.warning("storage alert webhook failed: %s", exc)
