"""Alerts people see and acknowledge, and the notifications sent when they change."""

from __future__ import annotations

import json
import logging
import urllib.request

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import has_perm, scope_filter
from apps.audit.services import record
from apps.core.errors import Conflict, NotFound, PortalError

from ..models import StorageAlert
from .common import authorize, record_failure

log = logging.getLogger(__name__)


def alerts_visible_to(user, *, open_only: bool = False):
    """Alerts on VMs the user may see (pool alerts for hosts they may see)."""
    qs = StorageAlert.objects.select_related("vm", "host", "vm__host")
    if open_only:
        qs = qs.filter(state=StorageAlert.State.OPEN)
    if user is None:
        return qs
    allowed = scope_filter(user, "storage.view")
    if allowed is None:
        return qs
    from django.db.models import Q

    from apps.core.models import Host
    from apps.vms.models import VirtualMachine

    vm_ids = VirtualMachine.objects.filter(allowed).values("pk")  # a subquery: never thousands of ids in Python
    host_ids = [h.pk for h in Host.objects.all() if has_perm(user, "storage.view", h)]
    return qs.filter(Q(vm_id__in=vm_ids) | Q(vm__isnull=True, host_id__in=host_ids))


def alert_badge_count(user) -> int:
    """Open alerts nobody acknowledged yet (the badge in the navigation)."""
    if user is None or not has_perm(user, "storage.view", anywhere=True):
        return 0
    return alerts_visible_to(user, open_only=True).filter(acknowledged_at__isnull=True).count()


def alert_acknowledge(*, actor, alert_id: int) -> StorageAlert:
    action = "storage.alert.acknowledge"
    alert = StorageAlert.objects.select_related("vm", "vm__host", "host").filter(pk=alert_id).first()
    if alert is None or (actor is not None and not has_perm(actor, "storage.view", alert)):
        raise NotFound(f"No storage alert #{alert_id} that you can see.")
    target = alert.vm if alert.vm_id else ("pool", f"{alert.host.name}/{alert.pool}", alert.pool)
    authorize(actor, "storage.change", alert, action=action, target=target)
    try:
        with transaction.atomic():
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
                raise Conflict(
                    f"The alert on {alert.subject} was already acknowledged by {alert.acknowledged_by_name}."
                )
            record(actor=actor, action=action, target=target, outcome="success", params={"alert": alert.pk})
            alert.refresh_from_db()
            return alert
    except PortalError as exc:
        record_failure(actor=actor, action=action, target=target, params={"alert": alert.pk}, error=exc.message)
        raise


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
