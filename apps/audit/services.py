"""audit.record: the single entry point that writes the audit log."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from . import chain, context
from .models import AuditChainHead, AuditEvent
from .redaction import redact

GENESIS = chain.GENESIS
SYSTEM_ACTOR = "system"


def hashed_fields(event: AuditEvent) -> dict:
    """What an event's keyed link covers (apps.audit.chain)."""
    return chain.event_fields(event)


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
        key = chain.chain_key(may_create=head.last_hash == GENESIS)
        event.hash = chain.link(key, head.last_hash, hashed_fields(event))
        event.save()
        AuditChainHead.objects.filter(id=1).update(last_hash=event.hash, count=head.count + 1)
    return event


@dataclass
class Outcome:
    """What an `audited` block records; the block may add params or change the target
    once it knows them (a created object, a value read during the change).

    `error`: the block ended without raising but did not fully succeed (a batch where some
    items failed): "failed" is recorded with this error instead of "success".
    `recorded`: the block's outcome is already in the log, so nothing is added at its end
    (a service that enqueues a job: `job_enqueue` records "requested", the job its end)."""

    target: object = None
    params: dict = field(default_factory=dict)
    job: object = None
    error: str = ""
    recorded: bool = False


@contextmanager
def audited(*, actor, action: str, target=None, params: dict | None = None, perm: str | None = None,
            obj=None, job=None, atomic: bool = False):
    """The one way a service records what became of an action:

        with audited(actor=actor, action="storage.quota.set", target=vm, perm="storage.change",
                     params={"limit_bytes": limit}) as ev:
            ...the change...
            ev.params["previous_version"] = row.version - 1

    With `perm`, the permission is checked first (`authorize`: a denial is audited and
    raised, the block never runs). The block ending records "success"; a PortalError
    records "failed" with its message and is re-raised; PermissionDenied raised inside
    was already audited where it was checked. With atomic=True the block and its success
    event commit together, and a failure is recorded after the rollback."""
    from django.core.exceptions import PermissionDenied

    from apps.core.errors import PortalError

    if perm is not None:
        from apps.accounts.permissions import authorize

        authorize(actor, perm, obj if obj is not None else target, action=action, target=target)
    ev = Outcome(target=target, params=dict(params or {}), job=job)
    try:
        with transaction.atomic() if atomic else _nothing():
            yield ev
            if not ev.recorded:
                record(actor=actor, action=action, target=ev.target, outcome="failed" if ev.error else "success",
                       params=ev.params, error=ev.error, job=ev.job)
    except PermissionDenied:
        raise
    except PortalError as exc:
        record(actor=actor, action=action, target=ev.target, outcome="failed", params=ev.params,
               error=exc.message, job=ev.job)
        raise


@contextmanager
def _nothing():
    yield


def refused(*, actor, action: str, target=None, params: dict | None = None, error: str, perm: str | None = None,
            obj=None) -> None:
    """Input a form refused before any service ran: check the permission as the service
    would (a denial is audited and raised as such), then audit the refusal."""
    if perm is not None:
        from apps.accounts.permissions import authorize

        authorize(actor, perm, obj if obj is not None else target, action=action, target=target)
    record(actor=actor, action=action, target=target, outcome="failed", params=params, error=error)


def verify_chain() -> tuple[int, AuditEvent | None, str]:
    """Walk the whole keyed chain, then the head and the anchor (apps.audit.chain).
    Returns (events verified intact, first bad event or None, reason)."""
    result = chain.verify_full()
    bad = AuditEvent.objects.filter(id=result.bad_id).first() if result.bad_id else None
    return result.checked, bad, result.reason
