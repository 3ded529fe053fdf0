"""Quarantine: one action for a VM suspected of compromise. Links down, its traffic dropped
in nftables, suspended, a forensic snapshot `incident-YYYYmmdd-HHMMSS` taken (with memory
state, the VM being paused), an alert raised. Every step is audited under one incident id;
a step that fails does not stop the others, and the result says which held. Release
restores the previous link states, rules and run state, and needs a reason."""

from __future__ import annotations

import logging
import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import audited, record
from apps.core.errors import Conflict, InvalidInput, PortalError
from apps.core.gateways import libvirt as gw
from apps.vms import services as vm_services
from apps.vms.collector import interfaces_refresh
from apps.vms.history import revision_capture
from apps.vms.models import VmInterface

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


def vm_quarantine(*, actor, vm, reason: str = "") -> Quarantine:
    now = timezone.localtime()
    incident = f"incident-{now:%Y%m%d-%H%M%S}"
    with audited(actor=actor, action="network.vm.quarantine", target=vm, perm="network.change",
                 params={"reason": reason}) as ev:  # fmt: skip
        try:
            check_text(reason, "reason")
        except Exception as exc:
            raise InvalidInput(" ".join(getattr(exc, "messages", [str(exc)]))) from None
        if Quarantine.objects.filter(vm=vm, released_at__isnull=True).exists():
            raise Conflict(f"{vm.name} is already quarantined.")
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
                q = Quarantine.objects.create(
                    vm=vm, incident_id=f"{incident}-{secrets.token_hex(2)}", reason=reason, previous_state=state,
                    previous_links={n.mac: n.link_state for n in nics}, macs=[n.mac for n in nics],
                    snapshot=incident, actor_name=getattr(actor, "username", "") or "system",
                )  # fmt: skip
        except IntegrityError:
            raise Conflict(f"{vm.name} is already quarantined.") from None
        ev.params["incident"] = q.incident_id

        def links_down():
            for n in nics:
                gw.domain_interface_set_link(vm.host.uri, vm.name, n.mac, "down")
            revision_capture(vm=vm, actor=actor, reason="network.vm.quarantine")  # configuration history
            interfaces_refresh(vm.host, vm)  # the collector's rows show the links down
            return f"{len(nics)} interface(s) down"

        def drop_traffic():
            firewall_enforce(actor=actor, host=vm.host, why=f"quarantine {q.incident_id}")
            return f"{len(q.macs)} MAC(s) dropped"

        def suspend():
            if state != "running":
                return f"not running ({state}): left as it is"
            return vm_services.vm_lifecycle_now(
                actor=actor, vm=vm, action="suspend", params={"incident": q.incident_id}
            )

        def snapshot():
            return vm_services.snapshot_create_now(actor=actor, vm=vm, name=incident,
                                                   description=f"forensic snapshot of {q.incident_id}")  # fmt: skip

        def alert():
            log.warning("QUARANTINE %s: %s on %s isolated (%s)", q.incident_id, vm.name, vm.host.name, reason)
            return _notify(q, vm, "firing", f"{vm.name} on {vm.host.name} was quarantined ({q.incident_id}): {reason}")

        held = {name: _step(q, actor, vm, name, fn) for name, fn in
                (("links", links_down), ("firewall", drop_traffic), ("suspend", suspend), ("snapshot", snapshot),
                 ("alert", alert))}  # fmt: skip
        ev.params["held"] = held
    return q


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
