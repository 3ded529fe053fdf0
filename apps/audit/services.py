"""audit.record: the single entry point that writes the audit log."""

from __future__ import annotations

import hashlib
import json

from django.db import transaction
from django.utils import timezone

from . import context
from .models import AuditChainHead, AuditEvent
from .redaction import redact

GENESIS = "0" * 64
SYSTEM_ACTOR = "system"


def event_hash(prev_hash: str, fields: dict) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def hashed_fields(event: AuditEvent) -> dict:
    return {
        "created_at": event.created_at.isoformat(),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "source_ip": event.source_ip,
        "request_id": event.request_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_name": event.target_name,
        "params": event.params,
        "outcome": event.outcome,
        "error": event.error,
        "job_id": event.job_id,
    }


def _describe_target(target) -> tuple[str, str, str]:
    if target is None:
        return "", "", ""
    if isinstance(target, tuple):  # (type, id, name)
        t, i, n = target
        return str(t), str(i or ""), str(n)
    meta = getattr(target, "_meta", None)
    kind = meta.model_name if meta else type(target).__name__.lower()
    return kind, str(getattr(target, "pk", "") or ""), str(target)[:200]


def _actor(actor):
    if actor is None or not getattr(actor, "is_authenticated", False):
        name = getattr(actor, "username", "") or ("anonymous" if actor is not None else SYSTEM_ACTOR)
        return None, name
    return actor.pk, actor.get_username()


def record(
    *,
    actor,
    action: str,
    target=None,
    outcome: str,
    params: dict | None = None,
    error: str = "",
    job=None,
    actor_name: str | None = None,
) -> AuditEvent:
    """Append one event. Call it in the same transaction as the change it describes;
    denials and failures are recorded after the failed work has rolled back."""
    if outcome not in AuditEvent.Outcome.values:
        raise ValueError(f"unknown outcome {outcome!r}")
    actor_id, name = _actor(actor)
    target_type, target_id, target_name = _describe_target(target)
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(id=1, defaults={"last_hash": GENESIS})
        event = AuditEvent(
            created_at=timezone.now(),
            actor_id=actor_id,
            actor_name=actor_name or name,
            source_ip=context.source_ip.get(),
            request_id=context.request_id.get(),
            action=action,
            target_type=target_type,
            target_id=target_id,
            target_name=target_name,
            params=redact(params or {}),
            outcome=outcome,
            error=str(error)[:2000],
            job_id=getattr(job, "pk", job),
            prev_hash=head.last_hash,
        )
        event.hash = event_hash(head.last_hash, hashed_fields(event))
        event.save()
        AuditChainHead.objects.filter(id=1).update(last_hash=event.hash, count=head.count + 1)
    return event


def verify_chain() -> tuple[int, AuditEvent | None, str]:
    """Walk the chain in order. Returns (events checked, first bad event or None, reason)."""
    prev = GENESIS
    checked = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        if event.prev_hash != prev:
            return checked, event, "the event before it was removed or altered (previous hash does not match)"
        # Reload through JSON so values compare exactly as they were hashed.
        if event_hash(prev, json.loads(json.dumps(hashed_fields(event), default=str))) != event.hash:
            return checked, event, "its contents were altered (hash does not match)"
        prev = event.hash
        checked += 1
    head = AuditChainHead.objects.filter(id=1).first()
    if head is not None and head.last_hash != prev:
        return checked, None, "the newest events were removed (chain head does not match the last event)"
    return checked, None, ""
