"""The audit log's keyed hash chain: its key, verification (full and incremental) and the
anchors that make a truncated table visible.

Each event's `hash` is HMAC-SHA256, under the chain key, of the previous event's hash and
the event's fields (canonical JSON). The key is 32 random bytes in a file outside the
database (settings.AUDIT_CHAIN_KEY_PATH, in the key store's directory by default: 0400 in a
0700 directory, written atomically), created when the first event is written. Someone with
write access to the database but not to that file can delete or edit events, but cannot
compute the links that would hide it: verification names the first event whose link does
not match. Web and worker read the same file.

Incremental verification (beat) starts at the checkpoint row (the newest event verified,
its hash, HMAC-signed), so each run reads only the events added since. After a run that
found the chain intact, the verified head is written to an anchor file outside the database
(settings.AUDIT_ANCHOR_DIR, signed with a key derived from the chain key): if later the
anchored event is missing from the table (the newest events, or all of them, deleted),
verification reports the truncation. Nothing here logs, prints or raises with the key."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.errors import PortalError

GENESIS = "0" * 64
KEY_BYTES = 32
ANCHOR_FILE = "audit-head.json"
ANCHOR_FORMAT = 1
CHUNK = 5000
VERIFY_ACTION = "audit.chain.verify"

# the fields each link covers, in the order of AuditEvent's columns
HASHED = (
    "created_at", "actor_id", "actor_name", "source_ip", "request_id", "action", "target_type",
    "target_id", "target_name", "params", "outcome", "error", "job_id",
)  # fmt: skip


class ChainKeyMissing(PortalError):
    pass


# ------------------------------------------------------------------ the key

_key_cache: dict[str, bytes] = {}


def key_path() -> Path:
    return Path(settings.AUDIT_CHAIN_KEY_PATH)


def chain_key(*, may_create=False) -> bytes:
    """The chain key, read once per process. A missing key is created only when
    `may_create` (the log is empty, or the re-key migration): a key that vanished under an
    existing log must be restored, not silently replaced. `may_create` may be a callable,
    asked only when the file is missing."""
    from apps.encryption.keystore import read_private_file, write_private_file

    path = key_path()
    cached = _key_cache.get(str(path))
    if cached is not None:
        return cached
    if not path.exists():
        if not (may_create() if callable(may_create) else may_create):
            raise ChainKeyMissing(
                f"The audit chain key {path} is missing while the audit log holds events: restore it from the "
                "backup of the key store. Without it no event can be written or verified."
            )
        try:
            write_private_file(path, secrets.token_bytes(KEY_BYTES))
        except PortalError:
            if not path.exists():  # not a concurrent creation: a real refusal
                raise
    key = read_private_file(path, "audit chain key")
    if len(key) != KEY_BYTES:
        raise ChainKeyMissing(f"The audit chain key {path} is not {KEY_BYTES} bytes long: refusing to use it.")
    _key_cache[str(path)] = key
    return key


def _log_is_empty() -> bool:
    from .models import AuditEvent

    return not AuditEvent.objects.exists()


def _subkey(purpose: bytes) -> bytes:
    return hmac.new(chain_key(), b"portal-audit " + purpose, hashlib.sha256).digest()


# ------------------------------------------------------------------ links


def canonical(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


def link(key: bytes, prev_hash: str, fields: dict) -> str:
    """The keyed link of one event: HMAC-SHA256(key, prev_hash + canonical fields)."""
    return hmac.new(key, (prev_hash + canonical(fields)).encode(), hashlib.sha256).hexdigest()


def legacy_link(prev_hash: str, fields: dict) -> str:
    """The unkeyed link used before the chain was keyed (migration 0005 re-keyed it)."""
    return hashlib.sha256((prev_hash + canonical(fields)).encode()).hexdigest()


def event_fields(event) -> dict:
    return {name: getattr(event, name) for name in HASHED} | {"created_at": event.created_at.isoformat()}


def _row_fields(row: tuple) -> dict:
    fields = dict(zip(HASHED, row[3:], strict=True))
    fields["created_at"] = fields["created_at"].isoformat()
    return fields


def rows_after(model, after_id: int, upto_id: int | None = None):
    """(id, prev_hash, hash, *HASHED) of the events after `after_id`, in id order, read in
    keyset chunks (no OFFSET, no long-lived cursor)."""
    while True:
        qs = model.objects.filter(id__gt=after_id)
        if upto_id is not None:
            qs = qs.filter(id__lte=upto_id)
        chunk = list(qs.order_by("id").values_list("id", "prev_hash", "hash", *HASHED)[:CHUNK])
        yield from chunk
        if len(chunk) < CHUNK:
            return
        after_id = chunk[-1][0]


# ------------------------------------------------------------------ verification


@dataclass
class Verification:
    checked: int  # events whose link matched in this walk
    last_id: int  # the newest event verified intact (0: none)
    last_hash: str
    bad_id: int | None = None  # the first broken event (None: a break at the end, or none)
    reason: str = ""

    @property
    def intact(self) -> bool:
        return not self.reason


def walk(after_id: int = 0, prev_hash: str = GENESIS, *, key: bytes | None = None) -> Verification:
    """Check every link after `after_id` (whose hash is `prev_hash`), in id order."""
    from .models import AuditEvent

    key = key if key is not None else chain_key(may_create=_log_is_empty)
    result = Verification(checked=0, last_id=after_id, last_hash=prev_hash)
    prev = prev_hash
    for row in rows_after(AuditEvent, after_id):
        event_id, stored_prev, stored_hash = row[0], row[1], row[2]
        if stored_prev != prev:
            result.bad_id = event_id
            result.reason = "the event before it was removed or altered (previous hash does not match)"
            return result
        if not hmac.compare_digest(link(key, prev, _row_fields(row)), stored_hash):
            result.bad_id = event_id
            result.reason = "its contents or its link were altered (keyed hash does not match)"
            return result
        prev = stored_hash
        result.checked += 1
        result.last_id, result.last_hash = event_id, stored_hash
    return result


def _check_head(result: Verification) -> None:
    """The head row names the newest event's hash: a head naming an event that is not
    there (newest events removed) breaks the chain at its end. A head ahead of the walk
    (events appended meanwhile) is fine."""
    from .models import AuditChainHead, AuditEvent

    head = AuditChainHead.objects.filter(id=1).values_list("last_hash", flat=True).first()
    if head is None or head == result.last_hash:
        return
    if AuditEvent.objects.filter(hash=head, id__gt=result.last_id).exists():
        return
    result.reason = "the newest events were removed (chain head does not match the last event)"


def verify_full() -> Verification:
    """Walk the whole chain from the first event, then the head and the anchor."""
    result = walk()
    if result.intact:
        _check_head(result)
    if result.intact:
        _check_anchor(result)
    return result


# ------------------------------------------------------------------ checkpoint


def _checkpoint_signature(last_id: int, last_hash: str, checked: int) -> str:
    return hmac.new(_subkey(b"checkpoint"), f"{last_id}:{last_hash}:{checked}".encode(), hashlib.sha256).hexdigest()


def verify_incremental() -> tuple[Verification, dict]:
    """Verify the events added since the checkpoint, the head and the anchor; move the
    checkpoint (and the anchor) forward when intact, or record the break. Returns the
    result and what the run did (for the audit event)."""
    from .models import AuditChainCheckpoint, AuditEvent

    cp, _ = AuditChainCheckpoint.objects.get_or_create(id=1)
    info = {"from_id": 0}
    start_id, start_hash, before = 0, GENESIS, 0
    if cp.last_id:
        if hmac.compare_digest(cp.signature, _checkpoint_signature(cp.last_id, cp.last_hash, cp.checked)):
            start_id, start_hash, before = cp.last_id, cp.last_hash, cp.checked
        else:
            info["checkpoint"] = "signature does not match: verified again from the first event"
    key = chain_key(may_create=_log_is_empty)
    result: Verification
    if start_id and not AuditEvent.objects.filter(id=start_id, hash=start_hash).exists():
        result = Verification(
            checked=0,
            last_id=start_id,
            last_hash=start_hash,
            bad_id=start_id,
            reason="this event was verified before and has since been removed or altered",
        )
    else:
        result = walk(start_id, start_hash, key=key)
        if result.intact:
            _check_head(result)
        if result.intact:
            _check_anchor(result)
    info.update(from_id=start_id, checked=result.checked, upto_id=result.last_id)
    now = timezone.now()
    total = before + result.checked
    with transaction.atomic():
        cp = AuditChainCheckpoint.objects.select_for_update().get(id=1)
        if result.last_id >= cp.last_id or start_id == 0:
            cp.last_id, cp.last_hash, cp.checked = result.last_id, result.last_hash, total
            cp.signature = _checkpoint_signature(result.last_id, result.last_hash, total)
        cp.verified_at = now
        info["new_break"] = False
        if result.intact:
            cp.broken_event_id, cp.broken_reason, cp.broken_at = None, "", None
            if anchors_enabled() and result.last_id and result.last_id != cp.anchored_id:
                write_anchor(result.last_id, result.last_hash, total)
                cp.anchored_id, cp.anchored_at = result.last_id, now
                info["anchored_id"] = result.last_id
        else:
            info["new_break"] = (cp.broken_event_id, cp.broken_reason) != (result.bad_id, result.reason)
            if info["new_break"]:
                cp.broken_at = now
            cp.broken_event_id, cp.broken_reason = result.bad_id, result.reason
        cp.save()
    return result, info


def describe_break(result: Verification) -> str:
    where = f"event #{result.bad_id}" if result.bad_id else "the end of the log"
    return f"chain broken at {where}: {result.reason}"


def chain_check() -> bool:
    """Beat (AUDIT_VERIFY_INTERVAL): verify incrementally, record the run as an audit event,
    and alert (apps.monitoring.notifications) when a new break is found, naming the event."""
    import time

    from .services import record

    started = time.monotonic()
    result, info = verify_incremental()
    params = {**info, "seconds": round(time.monotonic() - started, 3)}
    if result.intact:
        record(actor=None, action=VERIFY_ACTION, outcome="success", params=params)
        return True
    error = describe_break(result)
    with transaction.atomic():
        record(actor=None, action=VERIFY_ACTION, outcome="failed", params=params, error=error)
        if info["new_break"]:
            _alert(error)
    return False


def _alert(error: str) -> None:
    from apps.monitoring import notifications
    from apps.monitoring.services import posture_host

    host = posture_host()
    notifications.notify(
        notifications.Notice(
            source="audit", name="PortalAuditChainBroken", subject="audit log",
            host=host.name if host else settings.DEFAULT_HOST_NAME, level="critical", state="firing",
            message=f"The audit log's hash chain is broken: {error}. Run `manage.py audit_verify`.",
        )
    )  # fmt: skip


# ------------------------------------------------------------------ anchors


def anchors_enabled() -> bool:
    return bool(settings.AUDIT_ANCHOR_DIR)


def anchor_path() -> Path:
    return Path(settings.AUDIT_ANCHOR_DIR) / ANCHOR_FILE


def _anchor_signature(body: dict) -> str:
    return hmac.new(_subkey(b"anchor"), canonical(body).encode(), hashlib.sha256).hexdigest()


def write_anchor(event_id: int, event_hash: str, checked: int) -> dict:
    """Replace the anchor file (atomic, 0400 in a 0700 directory) with the verified head."""
    from apps.encryption.keystore import write_private_file

    body = {
        "format": ANCHOR_FORMAT, "event_id": event_id, "hash": event_hash, "events": checked,
        "at": timezone.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    document = body | {"signature": _anchor_signature(body)}
    write_private_file(anchor_path(), json.dumps(document, sort_keys=True).encode(), replace=True)
    return document


def read_anchor() -> dict | None:
    """The latest anchor, or None when anchoring is off or none was written yet. A file
    whose signature does not match raises (someone rewrote it)."""
    from apps.encryption.keystore import read_private_file

    if not anchors_enabled() or not anchor_path().exists():
        return None
    document = json.loads(read_private_file(anchor_path(), "audit anchor"))
    signature = document.pop("signature", "")
    if not hmac.compare_digest(str(signature), _anchor_signature(document)):
        raise AnchorForged(f"The audit anchor {anchor_path()} is not signed with the chain key: it was rewritten.")
    return document


class AnchorForged(PortalError):
    pass


def _check_anchor(result: Verification) -> None:
    """The anchored event must still be in the table, with the anchored hash, at or before
    the verified head: otherwise the table was truncated (or rolled back)."""
    from .models import AuditEvent

    try:
        anchor = read_anchor()
    except AnchorForged as exc:
        result.reason = exc.message
        return
    if anchor is None:
        return
    anchored_id, anchored_hash = int(anchor["event_id"]), anchor["hash"]
    stored = AuditEvent.objects.filter(id=anchored_id).values_list("hash", flat=True).first()
    if stored is None or anchored_id > result.last_id:
        result.bad_id = anchored_id
        result.reason = (
            f"the table was truncated: this event, anchored outside the database at {anchor['at']}, is missing "
            f"(the newest event now is #{result.last_id or 'none'})"
        )
    elif stored != anchored_hash:
        result.bad_id = anchored_id
        result.reason = f"this event differs from its anchor written at {anchor['at']}"


# ------------------------------------------------------------------ re-keying the unkeyed chain


def rekey_legacy(event_model, head_model, connection) -> int:
    """Migration 0005: the log written before the chain was keyed is checked link by link
    with the old unkeyed SHA-256 and, only if it is intact, re-linked from its first event
    with the keyed HMAC, so one rule verifies the whole log and no event can claim the old
    rule. A broken old chain stops the migration naming the first broken event (someone
    must look at it before the evidence is re-sealed). Returns the events re-keyed."""
    prev, count = GENESIS, 0
    for row in rows_after(event_model, 0):
        if row[1] != prev or legacy_link(prev, _row_fields(row)) != row[2]:
            raise RuntimeError(
                f"The audit log is broken at event #{row[0]} under its old unkeyed chain: it is not re-keyed, so "
                "the break stays visible. Investigate (manage.py audit_verify on the previous release) first."
            )
        prev, count = row[2], count + 1
    if not count:
        return 0
    head = head_model.objects.filter(id=1).values_list("last_hash", flat=True).first()
    if head is not None and head != prev:
        raise RuntimeError("The audit log's newest events were removed under its old unkeyed chain: not re-keyed.")
    key = chain_key(may_create=True)
    with _triggers_lifted(connection):
        prev, updates = GENESIS, []
        for row in rows_after(event_model, 0):
            new = link(key, prev, _row_fields(row))
            updates.append((prev, new, row[0]))
            prev = new
            if len(updates) >= CHUNK:
                _apply(connection, updates)
                updates = []
        _apply(connection, updates)
    head_model.objects.update_or_create(id=1, defaults={"last_hash": prev, "count": count})
    return count


def _apply(connection, updates: list) -> None:
    if updates:
        with connection.cursor() as cur:
            cur.executemany("UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s", updates)


class _triggers_lifted:
    """The append-only triggers off for the re-key's own transaction, then back."""

    def __init__(self, connection):
        self.connection = connection
        self.sqlite = []

    def __enter__(self):
        with self.connection.cursor() as cur:
            if self.connection.vendor == "postgresql":
                cur.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update")
            elif self.connection.vendor == "sqlite":
                cur.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_auditevent'"
                )
                self.sqlite = cur.fetchall()
                for name, _ in self.sqlite:
                    cur.execute(f'DROP TRIGGER "{name}"')
        return self

    def __exit__(self, *exc):
        with self.connection.cursor() as cur:
            if self.connection.vendor == "postgresql":
                cur.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update")
            for _, text in self.sqlite:
                cur.execute(text)
        return False
