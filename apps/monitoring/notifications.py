"""One notifications service for alerts: email, a webhook signed with HMAC-SHA256, and
Alertmanager's API. `notify()` schedules one delivery per configured channel when the
transaction commits; each delivery runs in a worker (`deliver`), tries up to
NOTIFY_ATTEMPTS times with a growing pause, and writes exactly one audit row
(`notification.deliver`, success or failed, with the attempts). A channel that is down
never stops the check that raised the alert.

Webhook receivers verify `X-Portal-Signature: sha256=HEX`, the HMAC-SHA256 with
NOTIFY_WEBHOOK_SECRET of `TIMESTAMP.BODY` (TIMESTAMP from `X-Portal-Timestamp`, seconds;
refuse old ones to stop replays)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.services import record
from apps.core.errors import PortalError

from . import gateway

log = logging.getLogger(__name__)
DELIVER_ACTION = "notification.deliver"
CHANNELS = ("email", "webhook", "alertmanager")


@dataclass(frozen=True)
class Notice:
    """What happened, for people and machines. `state` is "firing" or "resolved"."""

    source: str  # storage, posture, audit, ...
    name: str  # a stable alert name, e.g. PostureCheckFailing
    subject: str  # what it is about: a check, a VM, a pool
    host: str
    level: str  # warning, critical
    state: str
    message: str
    at: str = field(default_factory=lambda: timezone.now().isoformat(timespec="seconds"))


def configured_channels() -> list[str]:
    channels = []
    if settings.NOTIFY_EMAIL_TO:
        channels.append("email")
    if settings.NOTIFY_WEBHOOK_URL:
        channels.append("webhook")
    if settings.NOTIFY_ALERTMANAGER_URL:
        channels.append("alertmanager")
    return channels


def notify(notice: Notice) -> list[str]:
    """Schedule the notice on every configured channel once the transaction commits;
    returns the channels."""
    channels = configured_channels()
    payload = asdict(notice)
    for channel in channels:
        transaction.on_commit(lambda c=channel: _enqueue(c, payload))
    return channels


def _enqueue(channel: str, payload: dict) -> None:
    from .tasks import notification_deliver

    notification_deliver.delay(channel, payload)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _send(channel: str, notice: Notice) -> None:
    timeout = settings.NOTIFY_TIMEOUT
    if channel == "email":
        subject = f"[portal] {notice.source} {notice.state}: {notice.subject} on {notice.host}"
        gateway.send_email(subject, notice.message, settings.NOTIFY_EMAIL_TO)
    elif channel == "webhook":
        body = json.dumps(asdict(notice), sort_keys=True).encode()
        stamp = str(int(time.time()))
        headers = {"X-Portal-Timestamp": stamp, "X-Portal-Event": f"{notice.source}.{notice.state}"}
        if settings.NOTIFY_WEBHOOK_SECRET:
            headers["X-Portal-Signature"] = sign(settings.NOTIFY_WEBHOOK_SECRET, stamp, body)
        gateway.post_json(settings.NOTIFY_WEBHOOK_URL, body, headers=headers, timeout=timeout)
    elif channel == "alertmanager":
        alert = {
            "labels": {
                "alertname": notice.name, "severity": notice.level, "host": notice.host,
                "source": notice.source, "subject": notice.subject,
            },
            "annotations": {"summary": notice.message[:500]},
            "startsAt": notice.at,
        }  # fmt: skip
        if notice.state == "resolved":
            alert["endsAt"] = notice.at
        url = settings.NOTIFY_ALERTMANAGER_URL.rstrip("/") + "/api/v2/alerts"
        gateway.post_json(url, json.dumps([alert]).encode(), headers={}, timeout=timeout)
    else:
        raise ValueError(f"unknown notification channel {channel!r}")


def deliver(channel: str, payload: dict, *, attempts: int | None = None, pause: float | None = None) -> bool:
    """Deliver one notice on one channel (in a worker): up to `attempts` tries, pausing
    `pause`, 2x`pause`, ... between them; one audit row for the outcome. Never raises for a
    channel that is down."""
    notice = Notice(**payload)
    attempts = attempts or settings.NOTIFY_ATTEMPTS
    pause = settings.NOTIFY_RETRY_PAUSE if pause is None else pause
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            _send(channel, notice)
        except PortalError as exc:
            error = exc.message
            log.warning("notification %s on %s, attempt %d of %d: %s", notice.name, channel, attempt, attempts, error)
            if attempt < attempts:
                time.sleep(pause * 2 ** (attempt - 1))
            continue
        _audit(channel, notice, attempt, "success", "")
        return True
    _audit(channel, notice, attempts, "failed", error)
    return False


def _audit(channel: str, notice: Notice, attempts: int, outcome: str, error: str) -> None:
    record(
        actor=None,
        action=DELIVER_ACTION,
        target=("notification", channel, f"{notice.name}: {notice.subject} on {notice.host}"[:200]),
        outcome=outcome,
        params={"channel": channel, "source": notice.source, "state": notice.state, "attempts": attempts},
        error=error,
    )
