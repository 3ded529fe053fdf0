"""Zones: created, edited and deleted by admins. Creating one defines and starts its
isolated libvirt network in a job; deleting one removes the network in a job."""

from __future__ import annotations

import hashlib

from django.core.exceptions import ValidationError
from django.db import IntegrityError

from apps.audit.services import audited
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Host, Job
from apps.vms.collector import interfaces_refresh
from apps.vms.history import revision_capture
from apps.vms.models import VmInterface

from ..models import FirewallRule, Zone


def _default_bridge(host: Host, name: str) -> str:
    return f"pz{hashlib.sha256(f'{host.pk}/{name}'.encode()).hexdigest()[:8]}"


def zone_create(*, actor, host: Host, name: str, kind: str, description: str = "", network_name: str = "",
                bridge: str = "", uplink: str = "", ipv4_cidr: str = "", ipv6_cidr: str = "",
                policy_in: str = "", policy_out: str = "", host_access: bool = False,
                nat: bool = False) -> tuple[Zone, Job]:  # fmt: skip
    """Typed values from ZoneForm. The zone row exists at once (network_state pending); the
    job defines and starts its isolated libvirt network."""
    params = {"kind": kind, "host": host.name, "nat": nat}
    with audited(actor=actor, action="network.zone.create", target=("zone", "", name), obj=host,
                 perm="network.zones", params=params, atomic=True) as ev:  # fmt: skip
        zone = Zone(host=host, name=name, kind=kind, description=description, nat=nat,
                    network_name=network_name or f"portal-{name}"[:63], bridge=bridge or _default_bridge(host, name),
                    uplink=uplink, ipv4_cidr=ipv4_cidr, ipv6_cidr=ipv6_cidr)  # fmt: skip
        if kind == Zone.Kind.CUSTOM:
            zone.policy_in, zone.policy_out, zone.host_access = policy_in, policy_out, host_access
        else:
            zone.apply_kind_defaults()
        for field, value, what in (("name", zone.name, "name"), ("bridge", zone.bridge, "bridge"),
                                   ("network_name", zone.network_name, "libvirt network")):  # fmt: skip
            if Zone.objects.filter(host=host, **{field: value}).exists():
                raise Conflict(f"A zone with the {what} {value!r} already exists on {host}.")
        if gw.network_exists(host.uri, zone.network_name):
            raise Conflict(f"A libvirt network named {zone.network_name!r} already exists on {host}: "
                           "pick another name (the portal does not take over networks it did not make).")  # fmt: skip
        try:
            zone.full_clean()
            zone.save()
        except ValidationError as exc:
            raise InvalidInput("; ".join(exc.messages)) from None
        except IntegrityError:
            raise Conflict(f"A zone named {name!r} already exists on {host}.") from None
        ev.target = zone
        ev.params.update(bridge=zone.bridge, network=zone.network_name)
        job = jobs.job_enqueue(actor=actor, kind="network.zone.create", target=zone, host=host,
                               params={"zone": zone.pk})  # fmt: skip
    return zone, job


@jobs.handler("network.zone.create")
def _run_zone_create(job: Job, progress: jobs.Progress) -> dict:
    from apps.accounts.permissions import authorize

    zone = Zone.objects.select_related("host").get(pk=job.params["zone"])
    authorize(jobs.job_actor(job), "network.zones", zone.host, action=job.kind, target=zone)
    progress(20, f"defining the isolated network {zone.network_name} on bridge {zone.bridge}")
    try:
        gw.network_ensure_zone(zone.host.uri, zone.network_name, zone.bridge, zone.ipv4_cidr, zone.ipv6_cidr)
    except Exception:
        Zone.objects.filter(pk=zone.pk).update(network_state="failed")
        raise
    Zone.objects.filter(pk=zone.pk).update(network_state="active")
    return {"network": zone.network_name, "bridge": zone.bridge}


def zone_edit(*, actor, zone: Zone, description: str, policy_in: str, policy_out: str, host_access: bool,
              uplink: str = "", host_services: list[str] | None = None, nat: bool | None = None) -> Zone:  # fmt: skip
    """Description and policy (enforced by the next apply). Name, bridge and network stay.
    host_services: with host access, only these services of the host (None: unchanged).
    nat: masquerade what leaves by the uplink (needs one; None: unchanged)."""
    host_services = sorted(zone.host_services if host_services is None else host_services)
    nat = zone.nat if nat is None else nat
    params = {"nat": nat,
              "policy_in": policy_in, "policy_out": policy_out, "host_access": host_access, "uplink": uplink,
              "host_services": host_services}  # fmt: skip
    with audited(actor=actor, action="network.zone.edit", target=zone, obj=zone.host, perm="network.zones",
                 params=params, atomic=True):  # fmt: skip
        zone.description, zone.policy_in, zone.policy_out = description, policy_in, policy_out
        zone.host_access, zone.uplink, zone.host_services, zone.nat = host_access, uplink, host_services, nat
        try:
            zone.full_clean()
        except ValidationError as exc:
            raise InvalidInput("; ".join(exc.messages)) from None
        zone.save()
    return zone


def zone_delete(*, actor, zone: Zone, confirmed: bool = False) -> Job:
    """Refused while VMs are attached or other zones' rules name it; the job removes its
    libvirt network."""
    with audited(actor=actor, action="network.zone.delete", target=zone, obj=zone.host, perm="network.zones",
                 atomic=True) as ev:  # fmt: skip
        if not confirmed:
            raise InvalidInput(f"Deleting zone {zone.name} needs confirmation.")
        on_zone = VmInterface.objects.filter(vm__host=zone.host, vm__present=True, network=zone.network_name)
        attached = sorted(set(on_zone.values_list("vm__name", flat=True)))
        if attached:
            raise Conflict(f"Zone {zone.name} still has VMs attached: {', '.join(attached)}. Move them first.")
        naming = FirewallRule.objects.filter(remote_zone=zone).exclude(zone=zone).count()
        if naming:
            raise Conflict(f"{naming} rule(s) of other zones name zone {zone.name}: delete them first.")
        host, params = zone.host, {"network": zone.network_name, "zone": zone.name}
        ev.params.update(params)
        FirewallRule.objects.filter(zone=zone).delete()
        zone.delete()
        job = jobs.job_enqueue(actor=actor, kind="network.zone.delete", target=host, host=host, params=params)
    return job


@jobs.handler("network.zone.delete")
def _run_zone_delete(job: Job, progress: jobs.Progress) -> dict:
    from apps.accounts.permissions import authorize

    host = Host.objects.get(pk=job.target_id)
    authorize(jobs.job_actor(job), "network.zones", host, action=job.kind)
    name = job.params["network"]
    if gw.network_exists(host.uri, name):
        progress(30, f"removing the libvirt network {name}")
        gw.network_remove(host.uri, name)
    return {"network": name}


def vm_zone_move(*, actor, vm, zone: Zone) -> str:
    """Move a VM to another zone: its interfaces are attached to the zone's network (live
    where libvirt allows, else at its next start) and its zone label, which role scopes
    use, changes in the same audited change; its rules move with it. Returns when the move
applies: MOVED_LIVE (now), MOVED_AT_START (a shut-off VM: its persistent definition names
the zone's network, it joins at its next start) or MOVED_AT_RESTART (a running VM libvirt
could not move live: it stays on the old network until its next start)."""
    from apps.accounts.permissions import authorize
    from apps.vms.models import VirtualMachine


    with audited(actor=actor, action="network.vm.move", target=vm, perm="network.change",
                 params={"from": vm.zone, "to": zone.name}) as ev:  # fmt: skip
        authorize(actor, "network.change", zone, action="network.vm.move", target=vm)
        if zone.host_id != vm.host_id:
            raise InvalidInput(f"Zone {zone.name} is on another host than {vm.name}.")
        interfaces_refresh(vm.host, vm)
        nics = list(VmInterface.objects.filter(vm=vm))
        if not nics:
            raise Conflict(f"{vm.name} has no network interface to move.")
        zone_networks = set(Zone.objects.filter(host_id=vm.host_id).values_list("network_name", flat=True))
        moving = [n for n in nics if n.network in zone_networks] or nics
        live = [gw.domain_interface_set_network(vm.host.uri, vm.name, n.mac, zone.network_name) for n in moving]
        moved_live = all(live)
        revision_capture(vm=vm, actor=actor, reason="network.vm.move")  # configuration history
        running = gw.domain_state(vm.host.uri, vm.name) != "shut off"
        VirtualMachine.objects.filter(pk=vm.pk).update(zone=zone.name)
        vm.zone = zone.name
        if moved_live or not running:  # what libvirt now shows (a running VM not moved live: next start)
            interfaces_refresh(vm.host, vm)
        FirewallRule.objects.filter(vm=vm).update(zone=zone)
        applies = MOVED_LIVE if moved_live else MOVED_AT_RESTART if running else MOVED_AT_START
        ev.params.update(live=moved_live, applies=applies, interfaces=[n.mac for n in moving])
    return applies


MOVED_LIVE, MOVED_AT_START, MOVED_AT_RESTART = "now", "at next start", "at next restart"
MOVE_MESSAGES = {
    MOVED_LIVE: " now.",
    MOVED_AT_START: "; it is shut off: its interfaces join the zone's network at its next start.",
    MOVED_AT_RESTART: "; its running interfaces move at its next start.",
}
