from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import NamedTuple

from django.db import connection
from django.db.models import BooleanField, CharField, F, Q, TextField
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from django.http import Http404

from apps.accounts.permissions import require
from apps.core.models import Job
from apps.core.prepared import Prepared

from .models import AuditEvent


@dataclass(frozen=True)
class EventFilters:
    """What the audit log page narrows to; every field optional."""

    actor: str | None = None  # the actor's name, exact
    action: str | None = None  # a prefix: "encryption." or a whole action
    target: str | None = None  # the target's name, exact
    q: str | None = None  # words in the target's name
    host: str | None = None  # events about the host of that name and its VMs, pools, alerts, disks
    vm: str | None = None  # events about VMs of that name and their alerts and encrypted disks
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ip: str | None = None  # the client's address

    def apply(self, qs):
        if self.actor:
            qs = qs.filter(actor_name=self.actor)
        if self.action:
            qs = qs.filter(action__startswith=self.action)
        if self.target:
            qs = qs.filter(target_name=self.target)
        if self.q:
            qs = qs.filter(target_name__icontains=self.q)
        if self.host:
            qs = qs.filter(_about_host(self.host))
        if self.vm:
            qs = qs.filter(_about_vms(self.vm))
        if self.outcome:
            qs = qs.filter(outcome=self.outcome)
        if self.since:
            qs = qs.filter(created_at__gte=self.since)
        if self.until:
            qs = qs.filter(created_at__lte=self.until)
        if self.ip:
            qs = qs.filter(source_ip=self.ip)
        return qs

    def described(self) -> dict:
        """The filters in use, for the audit of an export."""
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v}


def _text_ids(qs):
    """A queryset's ids as text, to compare with AuditEvent.target_id (a subquery)."""
    return qs.order_by().annotate(text_id=Cast("id", CharField())).values("text_id")


def _about_host(name: str) -> Q:
    """Events about the host of that name and about what lives on it: its VMs, its pools
    (target id `host/pool`), its storage alerts and encrypted disks. Each is an equality on
    (target_type, target_id): the target index answers every branch."""
    from apps.encryption.models import EncryptedDisk
    from apps.storage.models import StorageAlert
    from apps.vms.models import VirtualMachine

    return (Q(target_type="host", target_name=name)
            | Q(target_type="virtualmachine", target_id__in=_text_ids(VirtualMachine.objects.filter(host__name=name)))
            | Q(target_type="pool", target_id__startswith=f"{name}/")
            | Q(target_type="storagealert", target_id__in=_text_ids(StorageAlert.objects.filter(host__name=name)))
            | Q(target_type="encrypteddisk",
                target_id__in=_text_ids(EncryptedDisk.objects.filter(host__name=name))))  # fmt: skip


def _about_vms(name: str) -> Q:
    """Events about VMs of that name and about their disks (volume operations name the VM
    itself) and storage alerts."""
    from apps.encryption.models import EncryptedDisk
    from apps.storage.models import StorageAlert

    return (Q(target_type="virtualmachine", target_name=name)
            | Q(target_type="storagealert", target_id__in=_text_ids(StorageAlert.objects.filter(vm__name=name)))
            | Q(target_type="encrypteddisk",
                target_id__in=_text_ids(EncryptedDisk.objects.filter(vm__name=name))))  # fmt: skip


@dataclass(frozen=True)
class Cursor:
    """A position in the log, newest first: the event at a page's edge and which way to go."""

    created_at: datetime
    id: int
    direction: str  # "older" (the next page down) or "newer"


@dataclass
class EventPage:
    events: list
    older: Cursor | None  # where the next, older page starts (None at the oldest end)
    newer: Cursor | None  # where the previous, newer page starts (None at the newest end)


NEWEST_FIRST = ("-created_at", "-id")
OLDEST_FIRST = ("created_at", "id")
# params as its stored JSON text: shown as is, so a page decodes no JSON
ROW_FIELDS = ("id", "created_at", "actor_name", "source_ip", "action", "target_name", "outcome", "error", "params_text",
              "job_id")  # fmt: skip


_PARAMS_TEXT = Cast("params", TextField())


class EventRow(NamedTuple):
    """One line of the log page: what the table shows, read as plain values (a page reads
    no model instances; templates use it as they would an AuditEvent)."""

    id: int
    created_at: datetime
    actor_name: str
    source_ip: str | None
    action: str
    target_name: str
    outcome: str
    error: str
    params: str  # JSON text ("{}" when empty)
    job_id: int | None

    @property
    def pk(self) -> int:
        return self.id


def _past(created_at, pk, op: str) -> RawSQL:
    """(created_at, id) beyond a position, as a row comparison: PostgreSQL walks the
    (created_at, id) index from exactly there (SQLite has row values too, since 3.15)."""
    qn = connection.ops.quote_name
    table = qn(AuditEvent._meta.db_table)
    value = connection.ops.adapt_datetimefield_value(created_at)
    sql = f"({table}.{qn('created_at')}, {table}.{qn('id')}) {op} (%s, %s)"  # names from the model, op "<" or ">"
    return RawSQL(sql, (value, pk), output_field=BooleanField())  # noqa: S611  (values go as parameters)


def _older_than(created_at, pk) -> RawSQL:
    return _past(created_at, pk, "<")


def _newer_than(created_at, pk) -> RawSQL:
    return _past(created_at, pk, ">")


def _readable_events(user):
    """The audit log names every user, address and host: only a global audit role reads it
    (an auditor scoped to one host or zone does not)."""
    require(user, "audit.view", None, action="audit.events.view")
    return AuditEvent.objects.order_by()


_FILTER_NAMES = tuple(f.name for f in fields(EventFilters))


def _event_rows(shape, p):
    """The page's read: shape (which filters are set, the cursor's direction or None, oldest
    first?), values the filters' and the cursor's (at, id)."""
    which, direction, ascending = shape
    filters = EventFilters(**{name: p[name] for name, on in zip(_FILTER_NAMES, which, strict=True) if on})
    qs = filters.apply(AuditEvent.objects.order_by()).annotate(params_text=_PARAMS_TEXT)
    if direction == "newer":
        qs = qs.filter(_newer_than(p["at"], p["id"]))
    elif direction == "older":
        qs = qs.filter(_older_than(p["at"], p["id"]))
    return qs.order_by(*(OLDEST_FIRST if ascending else NEWEST_FIRST)).values(*ROW_FIELDS)


_EVENTS_READ = Prepared(AuditEvent, _event_rows)


def events_page(user, filters: EventFilters, *, cursor: Cursor | None = None, oldest: bool = False,
                size: int = 50) -> EventPage:  # fmt: skip
    """One page of the log, newest first, by keyset: a page one step from the cursor (or the
    newest page, or with `oldest` the oldest one). One query, an index range of `size + 1`
    rows wherever the page is: no COUNT, no OFFSET. A prepared read (apps/core/prepared.py)."""
    _readable_events(user)  # the permission check
    values = {name: getattr(filters, name) for name in _FILTER_NAMES if getattr(filters, name)}
    if "ip" in values:  # as the ORM would bind it (an IPv6 address in its short form), on any database
        values["ip"] = AuditEvent._meta.get_field("source_ip").get_prep_value(values["ip"])
    which = tuple(name in values for name in _FILTER_NAMES)
    if cursor is None:
        direction, ascending = None, oldest
    else:
        direction = "newer" if cursor.direction == "newer" else "older"
        ascending = direction == "newer"
        values.update(at=cursor.created_at, id=cursor.id)
    found = _EVENTS_READ.rows((which, direction, ascending), values, limit=size + 1)
    rows = [EventRow(*r.values()) for r in found]
    more = len(rows) > size
    rows = rows[:size]
    if ascending:
        rows.reverse()
    if not rows:
        return EventPage([], None, None)
    first, last = rows[0], rows[-1]
    # going down (newest page, or older): a newer page exists if we came from one; an older
    # page if the read found one more row. Going up (newer, or the oldest page): the reverse.
    has_newer = more if ascending else cursor is not None
    has_older = (cursor is not None and not oldest) if ascending else more
    return EventPage(
        rows,
        older=Cursor(last.created_at, last.id, "older") if has_older else None,
        newer=Cursor(first.created_at, first.id, "newer") if has_newer else None,
    )


EXPORT_COLUMNS = ("id", "created_at", "actor_name", "source_ip", "request_id", "action", "target_type", "target_id",
                  "target_name", "outcome", "error", "job_id", "params")  # fmt: skip


def events_for_export(user, filters: EventFilters, chunk_size: int = 5000) -> Iterator[list[tuple]]:
    """Every event the filters match, newest first, as chunks of tuples (EXPORT_COLUMNS):
    read by keyset, `chunk_size` rows per query, so memory stays flat whatever the count.
    The time comes as ISO 8601 text and params as the stored JSON text (redacted when it
    was written): a row is written out without parsing either."""
    columns = ["id", "created_text", *EXPORT_COLUMNS[2:-1], "params_text"]
    qs = filters.apply(_readable_events(user)).annotate(created_text=Cast("created_at", TextField()),
                                                        params_text=_PARAMS_TEXT).values_list(*columns)  # fmt: skip
    position = None
    while True:
        chunk = qs
        if position is not None:
            chunk = chunk.filter(_older_than(*position))
        rows = [(r[0], iso_utc(r[1]), *r[2:]) for r in chunk.order_by(*NEWEST_FIRST)[:chunk_size]]
        if not rows:
            return
        yield rows
        if len(rows) < chunk_size:
            return
        position = (datetime.fromisoformat(rows[-1][1]), rows[-1][0])


_TZ_SUFFIX = re.compile(r"[+-]\d\d(:\d\d)?$")


def iso_utc(text: str) -> str:
    """A stored time as the database prints it (PostgreSQL: `2026-01-02 03:04:05.6+00` in the
    connection's zone, UTC; SQLite: `2026-01-02 03:04:05.600000`, UTC) as ISO 8601:
    `2026-01-02T03:04:05.6+00:00`."""
    text = text.replace(" ", "T", 1)
    suffix = _TZ_SUFFIX.search(text)
    if suffix is None:
        return text + "+00:00"
    return text if suffix.group(1) else text + ":00"


@dataclass
class EventDetail:
    event: AuditEvent
    job: dict | None  # JOB_FIELDS and host_name
    same_job: list = field(default_factory=list)
    same_request: list = field(default_factory=list)


RELATED_LIMIT = 100
JOB_FIELDS = ("id", "kind", "state", "target_name", "actor_name", "error", "log")


def _event_by_pk(shape, p):
    return AuditEvent.objects.filter(pk=p["pk"]).values()


def _job_line(shape, p):
    return Job.objects.filter(pk=p["job"]).order_by().values(*JOB_FIELDS, host_name=F("host__name"))


def _around(shape, p):
    """Events of the same job and/or request (shape: which), but the event itself, oldest first."""
    by_job, by_request = shape
    around = (Q(job_id=p["job"]) if by_job else Q()) | (Q(request_id=p["request"]) if by_request else Q())
    related = AuditEvent.objects.filter(around).exclude(pk=p["pk"]).annotate(params_text=_PARAMS_TEXT)
    return related.values(*ROW_FIELDS, "request_id").order_by(*OLDEST_FIRST)


_EVENT_READ = Prepared(AuditEvent, _event_by_pk)
_JOB_READ = Prepared(Job, _job_line)
_AROUND_READ = Prepared(AuditEvent, _around)


def event_detail(user, pk: int) -> EventDetail:
    """One event with its job (and the job's log) and the other events of the same job and
    of the same request, oldest first (what happened around it): RELATED_LIMIT at most, both
    lists together. Prepared reads (apps/core/prepared.py)."""
    _readable_events(user)  # the permission check
    event = _EVENT_READ.first((), {"pk": pk})
    if event is None:
        raise Http404("No such audit event.")
    detail = EventDetail(event, None)
    if event.job_id is not None:
        detail.job = next(iter(_JOB_READ.rows((), {"job": event.job_id}, limit=1)), None)
    by_job, by_request = event.job_id is not None, bool(event.request_id)
    if by_job or by_request:  # one read for both lists, split here (an event of both is in both)
        values = {"pk": event.pk, **({"job": event.job_id} if by_job else {}),
                  **({"request": event.request_id} if by_request else {})}  # fmt: skip
        for found in _AROUND_READ.rows((by_job, by_request), values, limit=RELATED_LIMIT):
            request_id = found.pop("request_id")
            r = EventRow(*found.values())
            if by_job and r.job_id == event.job_id:
                detail.same_job.append(r)
            if by_request and request_id == event.request_id:
                detail.same_request.append(r)
    return detail
