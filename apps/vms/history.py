"""Configuration history: every change of a VM's persistent definition (its inactive domain
XML) kept as a revision, with who and when. The portal's own changes (a disk attached or
detached, a NIC moved to another zone, links set down by a quarantine, a disk re-pointed or
re-formatted by encryption, a VM restored) call `revision_capture` (or `record_revision`)
with the acting user; the state collector compares every definition at each bulk read and
records a difference it did not cause as a change made "outside the portal".

XML is normalised (C14N, whitespace between elements dropped) before it is hashed, so a
definition that only changed its formatting is not a new revision. Each revision writes one
audit event, `vms.vm.config_changed`, and links to it."""

from __future__ import annotations

import difflib
import hashlib
import logging
import xml.etree.ElementTree as ET
from datetime import timedelta

from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.models import AuditEvent
from apps.audit.services import record
from apps.core.errors import PortalError
from apps.core.gateways import libvirt as gw
from apps.core.models import Host, Job

from .models import VirtualMachine, VmConfigRevision

log = logging.getLogger(__name__)

ACTION = "vms.vm.config_changed"
HISTORY_EVENTS = 100  # audit events shown on the History tab (newest first)


def normalise(xml: str) -> str:
    """The canonical form of a definition: C14N 2.0, whitespace-only text dropped."""
    try:
        return ET.canonicalize(xml_data=xml, strip_text=True)
    except ET.ParseError:
        return xml.strip()


def xml_sha256(xml: str) -> str:
    return hashlib.sha256(normalise(xml).encode()).hexdigest()


def _latest(vm: VirtualMachine) -> VmConfigRevision | None:
    return VmConfigRevision.objects.filter(vm=vm).order_by("-created", "-id").first()


def record_revision(vm: VirtualMachine, xml: str, actor, *, source: str = VmConfigRevision.Source.PORTAL,
                    reason: str = "") -> VmConfigRevision | None:  # fmt: skip
    """Keep `xml` as the VM's new revision, unless it equals the latest one (normalised).
    actor: the user who changed it (None: the system) for a portal change; ignored for a
    change found outside the portal. Returns the revision, or None when nothing changed."""
    sha = xml_sha256(xml)
    with transaction.atomic():
        VirtualMachine.objects.select_for_update().filter(pk=vm.pk).first()  # one writer per VM at a time
        latest = _latest(vm)
        if latest is not None and latest.sha256 == sha:
            return None
        outside = source == VmConfigRevision.Source.OUTSIDE
        authenticated = not outside and getattr(actor, "is_authenticated", False)
        name = "" if outside else (getattr(actor, "username", "") or "system")
        params = {"source": source, "reason": reason, "previous": latest.pk if latest else None}
        event = record(actor=None if outside else actor, action=ACTION, target=vm, outcome="success", params=params)
        revision = VmConfigRevision.objects.create(
            vm=vm, xml=xml, sha256=sha, source=source, author=actor if authenticated else None, author_name=name,
            reason=reason[:80], created=event.created_at, audit_event=event,
        )  # fmt: skip
    return revision


def revision_capture(*, vm: VirtualMachine, actor, reason: str) -> VmConfigRevision | None:
    """After the portal changed the VM's definition: read it and keep it as a revision by
    `actor`. A definition that cannot be read is left to the collector's next read (which
    then records it as found outside the portal); the action itself never fails for it."""
    try:
        xml = gw.domain_xml_defined(vm.host.uri, vm.name)
    except PortalError as exc:
        log.warning("configuration history of %s: %s", vm.name, exc.message)
        return None
    return record_revision(vm, xml, actor, reason=reason)


def revisions_collect(host: Host) -> list[VmConfigRevision]:
    """After each bulk read (an AFTER_COLLECT hook): compare every persistent definition
    with the VM's latest revision; a difference is a change made outside the portal (or the
    first definition ever read of the VM: its baseline). While a job of the portal runs on
    the host a difference is left for the next read: that job records its own change."""
    definitions = gw.domain_xml_defined_all(host.uri)
    latest = VmConfigRevision.objects.filter(vm=OuterRef("pk")).order_by("-created", "-id").values("sha256")[:1]
    vms = VirtualMachine.objects.filter(host=host, present=True, uuid__in=list(definitions)).annotate(
        latest_sha=Subquery(latest)
    )
    changed = []
    for vm in vms:
        xml = definitions.get(str(vm.uuid))
        if xml is not None and xml_sha256(xml) != vm.latest_sha:
            changed.append((vm, xml))
    if not changed:
        return []
    busy = Job.objects.filter(state=Job.State.RUNNING, heartbeat_at__gte=timezone.now() - timedelta(minutes=10))
    host_busy = busy.filter(host=host).exists()
    busy_vms = set(busy.filter(target_type="virtualmachine").values_list("target_id", flat=True))
    out = []
    for vm, xml in changed:
        if vm.latest_sha is not None and (host_busy or str(vm.pk) in busy_vms):
            continue
        reason = "collector: first read" if vm.latest_sha is None else "collector: changed outside the portal"
        rev = record_revision(vm, xml, None, source=VmConfigRevision.Source.OUTSIDE, reason=reason)
        if rev is not None:
            out.append(rev)
    return out


# ---------------------------------------------------------------- reads (the History tab)


def vm_history(*, actor, vm: VirtualMachine) -> dict:
    """The VM's audit events and configuration revisions, newest first (whoever may view
    the VM reads them: auditors too)."""
    authorize(actor, "vms.view", vm, action="vms.vm.history")
    revisions = list(VmConfigRevision.objects.filter(vm=vm).defer("xml").order_by("-created", "-id")[:200])
    events = list(
        AuditEvent.objects.filter(target_type="virtualmachine", target_id=str(vm.pk))
        .exclude(action=ACTION)
        .order_by("-created_at", "-id")[:HISTORY_EVENTS]
    )
    by_event = {r.audit_event_id: r for r in revisions}
    rows = [("revision", r.created, r) for r in revisions]
    rows += [("event", e.created_at, e) for e in events if e.pk not in by_event]
    rows.sort(key=lambda row: row[1], reverse=True)
    return {"rows": rows, "revisions": revisions, "events": events}


def revision_get(*, actor, vm: VirtualMachine, revision_id: int) -> tuple[VmConfigRevision, VmConfigRevision | None]:
    """One revision and the one before it (None for the first)."""
    from apps.core.errors import NotFound

    authorize(actor, "vms.view", vm, action="vms.vm.history")
    rev = VmConfigRevision.objects.filter(vm=vm, pk=revision_id).first()
    if rev is None:
        raise NotFound(f"{vm.name} has no revision #{revision_id}.")
    before = (
        VmConfigRevision.objects.filter(vm=vm)
        .filter(Q(created__lt=rev.created) | Q(created=rev.created, id__lt=rev.id))
        .order_by("-created", "-id")
        .first()
    )
    return rev, before


def _lines(xml: str) -> list[str]:
    try:
        root = ET.fromstring(normalise(xml))  # noqa: S314 - libvirt's own definition, never an upload
        ET.indent(root)
        return ET.tostring(root, encoding="unicode").splitlines()
    except ET.ParseError:
        return xml.splitlines()


def side_by_side(before: str, after: str, *, context: int = 3) -> list[dict]:
    """A two-column diff of two definitions (each pretty-printed from its normalised form):
    rows of {kind: same|changed|added|removed|gap, left, right, left_no, right_no}, with
    `context` unchanged lines around each change. Values are plain text (the template escapes)."""
    a, b = _lines(before), _lines(after)
    rows: list[dict] = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context):
        if rows:
            rows.append({"kind": "gap"})
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                rows += [{"kind": "same", "left": a[i], "right": b[j1 + k], "left_no": i + 1, "right_no": j1 + k + 1}
                         for k, i in enumerate(range(i1, i2))]  # fmt: skip
                continue
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                left = a[i] if i < i2 else None
                right = b[j] if j < j2 else None
                kind = "changed" if None not in (left, right) else ("removed" if right is None else "added")
                rows.append({"kind": kind, "left": left, "right": right,
                             "left_no": "" if left is None else i + 1,
                             "right_no": "" if right is None else j + 1})  # fmt: skip
    return rows

