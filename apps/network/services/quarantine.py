"""Quarantine: one action for a VM suspected of compromise, run as a job with progress. Links
down, its traffic dropped in nftables, suspended, a forensic snapshot
`incident-YYYYmmdd-HHMMSS` taken (with memory state, the VM being paused), an alert raised.
Every step is audited under one incident id; a step that fails does not stop the others,
and the result says which held. Release
restores the previous link states, rules and run state, and needs a reason."""

from __future__ import annotations

import logging
import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.vms import services as vm_services
from apps.vms.collector import interfaces_refresh
from apps.vms.history import revision_capture
from apps.vms.models import VirtualMachine, VmInterface

from ..models import Quarantine
from ..validation import check_text
from .firewall import firewall_enforce

log = logging.getLogger(__name__)


def _step(q: Quarantine, actor, vm, name: str, fn) -> bool:
    """Run one step; record its outcome under the incident id; never raise a PortalError."""
    try:
        detail = fn() or ""
        ok, error = True, ""
    except PortalError as exc:
        detail, ok, error = exc.message, False, exc.message
    except Exception as exc:  # a bug in one step must not leave the VM half isolated
        log.exception("quarantine %s: step %s", q.incident_id, name)
        detail, ok, error = f"internal error ({type(exc).__name__})", False, f"internal error ({type(exc).__name__})"
    q.steps = [*q.steps, {"step": name, "ok": ok, "detail": str(detail)[:300]}]
    Quarantine.objects.filter(pk=q.pk).update(steps=q.steps)
    record(actor=actor, action=f"network.quarantine.{name}", target=vm, outcome="success" if ok else "failed",
           params={"incident": q.incident_id}, error=error)  # fmt: skip
    return ok


QUARANTINE = "network.vm.quarantine"
# each step, with the progress the job reports when it starts
_STEPS = (("links", 10), ("firewall", 30), ("suspend", 45), ("snapshot", 55), ("alert", 95))


def vm_quarantine(*, actor, vm, reason: str = "") -> Job:
    """Ask for a quarantine: checked here (permission, reason, not already quarantined or
    being quarantined), then run as a job with progress (`_run_quarantine`). The incident id
    is fixed now, so the page and the log name the incident before the job starts."""
    now = timezone.localtime()
    with audited(actor=actor, action=QUARANTINE, target=vm, perm="network.change", params={"reason": reason}) as ev:
        try:
            check_text(reason, "reason")
        except Exception as exc:
            raise InvalidInput(" ".join(getattr(exc, "messages", [str(exc)]))) from None
        if Quarantine.objects.filter(vm=vm, released_at__isnull=True).exists():
            raise Conflict(f"{vm.name} is already quarantined.")
        pending = Job.objects.filter(kind=QUARANTINE, target_type=vm._meta.model_name, target_id=str(vm.pk),
                                     state__in=[Job.State.QUEUED, Job.State.RUNNING]).first()  # fmt: skip
        if pending is not None:
            raise Conflict(f"{vm.name} is already being quarantined (job #{pending.pk}).")
        incident = f"incident-{now:%Y%m%d-%H%M%S}"
        params = {"reason": reason, "incident": f"{incident}-{secrets.token_hex(2)}", "snapshot": incident}
        ev.params["incident"] = params["incident"]
        with transaction.atomic():
            job = jobs.job_enqueue(actor=actor, kind=QUARANTINE, target=vm, host=vm.host, params=params)
        ev.recorded = True  # job_enqueue recorded "requested"; the job records how it ended
    return job


@jobs.handler(QUARANTINE)
def _run_quarantine(job: Job, progress: jobs.Progress) -> dict:
    """The quarantine's steps, each audited under the incident id; a step that fails does not
    stop the others. Delivered again (its worker died), it re-runs only the steps that did
    not hold. Fails (naming them) when a step did not hold: the VM may not be isolated."""
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    actor = jobs.job_actor(job)
    authorize(actor, "network.change", vm, action=job.kind)
    q = Quarantine.objects.filter(vm=vm, incident_id=job.params["incident"]).first()
    if q is None:
        q = _open_incident(vm, actor, job, progress)
    done = {s["step"] for s in q.steps if s["ok"]}
    fns = _steps(q, actor, vm)
    held = {}
    for name, percent in _STEPS:
        if name in done:
            held[name] = True
            continue
        progress(percent, f"{name}: {_LABELS[name]}")
        held[name] = _step(q, actor, vm, name, fns[name])
    failed = [name for name, ok in held.items() if not ok]
    if failed:
        raise PortalError(f"{vm.name} quarantined ({q.incident_id}), but these steps failed: {', '.join(failed)}; "
                          "the others held. See the VM's firewall page.")  # fmt: skip
    return {"incident": q.incident_id, "held": held, "snapshot": q.snapshot}


_LABELS = {"links": "setting its links down", "firewall": "dropping its traffic in nftables",
           "suspend": "suspending it", "snapshot": "taking the forensic snapshot (with memory state)",
           "alert": "raising the alert"}  # fmt: skip


def _open_incident(vm, actor, job: Job, progress: jobs.Progress) -> Quarantine:
    if Quarantine.objects.filter(vm=vm, released_at__isnull=True).exists():
        raise Conflict(f"{vm.name} is already quarantined.")
    progress(5, "reading its run state and interfaces")
    try:
        state = gw.domain_state(vm.host.uri, vm.name)
    except PortalError:
        state = vm.last_state or "unknown"
    try:
        interfaces_refresh(vm.host, vm)
    except PortalError:
        pass  # the NICs last read are used
    nics = list(VmInterface.objects.filter(vm=vm))
    try:
        with transaction.atomic():
            return Quarantine.objects.create(
                vm=vm, incident_id=job.params["incident"], reason=job.params.get("reason", ""), previous_state=state,
                previous_links={n.mac: n.link_state for n in nics}, macs=[n.mac for n in nics],
                snapshot=job.params["snapshot"], actor_name=job.actor_name,
            )  # fmt: skip
    except IntegrityError:
        raise Conflict(f"{vm.name} is already quarantined.") from None


def _steps(q: Quarantine, actor, vm) -> dict:
    def links_down():
        for mac in q.previous_links:
            gw.domain_interface_set_link(vm.host.uri, vm.name, mac, "down")
        revision_capture(vm=vm, actor=actor, reason="network.vm.quarantine")  # configuration history
        interfaces_refresh(vm.host, vm)  # the collector's rows show the links down
        return f"{len(q.previous_links)} interface(s) down"

    def drop_traffic():
        firewall_enforce(actor=actor, host=vm.host, why=f"quarantine {q.incident_id}")
        return f"{len(q.macs)} MAC(s) dropped"

    def suspend():
        if q.previous_state != "running":
            return f"not running ({q.previous_state}): left as it is"
        if gw.domain_state(vm.host.uri, vm.name) == "paused":
            return "already paused"
        return vm_services.vm_lifecycle_now(actor=actor, vm=vm, action="suspend", params={"incident": q.incident_id})

    def snapshot():
        if any(s.name == q.snapshot for s in gw.snapshot_list(vm.host.uri, vm.name)):
            return f"{q.snapshot} already taken"
        return vm_services.snapshot_create_now(actor=actor, vm=vm, name=q.snapshot,
                                               description=f"forensic snapshot of {q.incident_id}")  # fmt: skip

    def alert():
        log.warning("QUARANTINE %s: %s on %s isolated (%s)", q.incident_id, vm.name, vm.host.name, q.reason)
        return _notify(q, vm, "firing", f"{vm.name} on {vm.host.name} was quarantined ({q.incident_id}): {q.reason}")

    return {"links": links_down, "firewall": drop_traffic, "suspend": suspend, "snapshot": snapshot, "alert": alert}


def vm_release(*, actor, vm, reason: str) -> Quarantine:
    with audited(actor=actor, action="network.vm.release", target=vm, perm="network.change",
                 params={"reason": reason}) as ev:  # fmt: skip
        if not reason.strip():
            raise InvalidInput("A release needs a reason.")
        try:
            check_text(reason, "reason")
        except Exception as exc:
            raise InvalidInput(" ".join(getattr(exc, "messages", [str(exc)]))) from None
        q = Quarantine.objects.filter(vm=vm, released_at__isnull=True).first()
        if q is None:
            raise Conflict(f"{vm.name} is not quarantined.")
        ev.params["incident"] = q.incident_id
        Quarantine.objects.filter(pk=q.pk).update(released_at=timezone.now(), release_reason=reason,
                                                  released_by=getattr(actor, "username", "") or "system")  # fmt: skip

        def firewall():
            firewall_enforce(actor=actor, host=vm.host, why=f"release {q.incident_id}")
            return "MACs no longer dropped"

        def links():
            for mac, state in q.previous_links.items():
                gw.domain_interface_set_link(vm.host.uri, vm.name, mac, state)
            revision_capture(vm=vm, actor=actor, reason="network.vm.release")  # configuration history
            interfaces_refresh(vm.host, vm)
            return "previous link states restored"

        def run_state():
            now_state = gw.domain_state(vm.host.uri, vm.name)
            if q.previous_state == "running" and now_state == "paused":
                return vm_services.vm_lifecycle_now(
                    actor=actor, vm=vm, action="resume", params={"incident": q.incident_id}
                )
            return f"left {now_state}"

        ev.params["held"] = {name: _step(q, actor, vm, f"release.{name}", fn) for name, fn in
                             (("firewall", firewall), ("links", links), ("run_state", run_state),
                              ("alert", lambda: _notify(q, vm, "resolved", f"{vm.name} was released: {reason}"))
                              )}  # fmt: skip
    q.refresh_from_db()
    return q


def _notify(q, vm, state: str, message: str) -> str:
    """The quarantine on every notification channel (the pages and /metrics show it too)."""
    from apps.monitoring import notifications

    channels = notifications.notify(
        notifications.Notice(source="network", name="PortalVmQuarantined", subject=vm.name, host=vm.host.name,
                             level="critical", state=state, message=message)  # fmt: skip
    )
    return f"sent to {', '.join(channels)}" if channels else "no notification channel configured: shown on the pages"
