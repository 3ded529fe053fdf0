"""SIEM forwarding: every audit event, in id order, as an RFC 5424 syslog message with a JSON
payload, over TCP with octet-counting framing (RFC 6587), optionally TLS, to
settings.AUDIT_SYSLOG_HOST:AUDIT_SYSLOG_PORT.

The queue is the audit table itself: the cursor row (AuditForwardCursor.forwarded_id) says
which events were sent, and moves only after the socket write of a batch succeeded. While
the collector is down the backlog grows and nothing is lost; when it is back, the next run
(beat, every AUDIT_SYSLOG_INTERVAL seconds) sends the backlog late and in order. The cursor
row is locked while a batch is sent, so two workers never send the same batch. A write
that fails half-way may have delivered part of its batch: those events are sent again
(the payload's `id` lets the SIEM drop the repeat); no event is ever skipped.

Each message carries the event's chain link (`prev_hash`, `hash`): the SIEM's copy of the
hashes lets one verify, outside this host, that the portal's table was not truncated."""

from __future__ import annotations

import json
import socket
import ssl
from datetime import UTC

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.errors import PortalError

from .models import AuditEvent, AuditForwardCursor

SEVERITY = {"success": 5, "requested": 6, "failed": 4, "denied": 4}  # notice, info, warning, warning
BACKLOG_SHOWN = 10_000  # the page counts the backlog up to this many events


class ForwardingFailed(PortalError):
    pass


def enabled() -> bool:
    return bool(settings.AUDIT_SYSLOG_HOST)


def payload(event: AuditEvent) -> dict:
    return {
        "id": event.pk,
        "time": event.created_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "actor": {"id": event.actor_id, "name": event.actor_name},
        "action": event.action,
        "target": {"type": event.target_type, "id": event.target_id, "name": event.target_name},
        "outcome": event.outcome,
        "error": event.error,
        "ip": event.source_ip,
        "request_id": event.request_id,
        "job_id": event.job_id,
        "params": event.params,  # redacted when recorded (apps.audit.redaction)
        "chain": {"prev_hash": event.prev_hash, "hash": event.hash},
    }


def _hostname() -> str:
    name = socket.gethostname() or "-"
    return "".join(c for c in name if 33 <= ord(c) <= 126)[:255] or "-"


def syslog_message(event: AuditEvent, *, hostname: str | None = None) -> bytes:
    """RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG, the
    MSG being the JSON payload (ASCII: non-ASCII characters escaped)."""
    pri = settings.AUDIT_SYSLOG_FACILITY * 8 + SEVERITY.get(event.outcome, 5)
    body = payload(event)
    header = f"<{pri}>1 {body['time']} {hostname or _hostname()} {settings.AUDIT_SYSLOG_APP_NAME[:48]} - audit -"
    return (header + " " + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode("ascii")


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode() + b" " + message


def _connect() -> socket.socket:
    host, port, timeout = settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT, settings.AUDIT_SYSLOG_TIMEOUT
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ForwardingFailed(f"cannot connect to the syslog collector {host}:{port}: {exc.strerror or exc}") from None
    if not settings.AUDIT_SYSLOG_TLS:
        return sock
    context = ssl.create_default_context(cafile=settings.AUDIT_SYSLOG_CA_FILE or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise ForwardingFailed(f"TLS with the syslog collector {host}:{port} failed: {exc}") from None


def forward_pending(*, max_batches: int | None = None) -> dict:
    """Send every event after the cursor, batch by batch, moving the cursor after each
    successful write. Returns {"sent": n, "error": "..."}; a failure is kept on the cursor
    row (the page shows it) and the events stay queued for the next run."""
    if not enabled():
        return {"sent": 0, "error": "", "enabled": False}
    AuditForwardCursor.objects.get_or_create(id=1)
    sent, error, sock, batches = 0, "", None, 0
    hostname = _hostname()
    try:
        while max_batches is None or batches < max_batches:
            with transaction.atomic():
                cursor = AuditForwardCursor.objects.select_for_update().get(id=1)
                pending = AuditEvent.objects.filter(id__gt=cursor.forwarded_id).order_by("id")
                events = list(pending[: settings.AUDIT_SYSLOG_BATCH])
                cursor.last_attempt_at = timezone.now()
                if not events:
                    cursor.save(update_fields=["last_attempt_at"])
                    break
                data = b"".join(frame(syslog_message(e, hostname=hostname)) for e in events)
                try:
                    if sock is None:
                        sock = _connect()
                    sock.sendall(data)
                except ForwardingFailed as exc:
                    error = exc.message
                except OSError as exc:
                    error = f"writing to the syslog collector failed: {exc.strerror or exc}"
                if error:
                    cursor.last_error, cursor.last_error_at = error, cursor.last_attempt_at
                    cursor.save(update_fields=["last_attempt_at", "last_error", "last_error_at"])
                    break
                cursor.forwarded_id, cursor.forwarded_at, cursor.last_error = events[-1].pk, timezone.now(), ""
                cursor.save()
                sent += len(events)
                batches += 1
    finally:
        if sock is not None:
            sock.close()
    return {"sent": sent, "error": error, "enabled": True}


def backlog() -> dict:
    """For the page: events not yet forwarded (counted up to BACKLOG_SHOWN), the last error."""
    cursor = AuditForwardCursor.objects.filter(id=1).first()
    after = cursor.forwarded_id if cursor else 0
    pending = 0
    if enabled():  # off: nothing waits, and the audit page reads no extra rows
        pending = AuditEvent.objects.filter(id__gt=after).order_by("id").values("id")[: BACKLOG_SHOWN + 1].count()
    return {
        "enabled": enabled(),
        "target": f"{settings.AUDIT_SYSLOG_HOST}:{settings.AUDIT_SYSLOG_PORT}" if enabled() else "",
        "tls": settings.AUDIT_SYSLOG_TLS,
        "pending": min(pending, BACKLOG_SHOWN),
        "more": pending > BACKLOG_SHOWN,
        "cursor": cursor,
    }
