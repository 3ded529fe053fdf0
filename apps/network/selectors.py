"""Reads for the network pages (no writes, no services)."""

from __future__ import annotations

from apps.accounts.permissions import has_perm, restrict
from apps.core.errors import NotFound
from apps.core.models import Host, Job
from apps.vms.models import VmInterface

from .models import FirewallApply, FirewallRule, Quarantine, Zone


def host_named(name: str) -> Host:
    host = Host.objects.filter(name=name).first()
    if host is None:
        raise NotFound(f"No host named {name!r}.")
    return host


def zones_visible_to(user, host: Host | None = None) -> list[Zone]:
    zones = Zone.objects.select_related("host")
    if host is not None:
        zones = zones.filter(host=host)
    return [z for z in zones if has_perm(user, "network.view", z)]


def zone_for(user, host_name: str, zone_name: str) -> Zone:
    zone = Zone.objects.select_related("host").filter(host__name=host_name, name=zone_name).first()
    if zone is None or not has_perm(user, "network.view", zone):
        raise NotFound(f"No zone named {zone_name!r} on host {host_name!r} that you can see.")
    return zone


def zone_rules(zone: Zone) -> list[FirewallRule]:
    return list(FirewallRule.objects.filter(zone=zone, vm__isnull=True).select_related("remote_zone"))


def zone_vm_names(zone: Zone) -> list[str]:
    return sorted(set(VmInterface.objects.filter(vm__host=zone.host, vm__present=True, network=zone.network_name)
                      .values_list("vm__name", flat=True)))  # fmt: skip


def vm_rules(vm) -> list[FirewallRule]:
    return list(FirewallRule.objects.filter(vm=vm).select_related("zone", "remote_zone"))


def vm_network(vm) -> dict:
    """The VM's zones (as its NICs were last read), its NICs and its quarantine."""
    nics = list(VmInterface.objects.filter(vm=vm))
    zones = list(Zone.objects.filter(host_id=vm.host_id, network_name__in={n.network for n in nics}))
    problem = ""
    if len(zones) > 1:
        problem = f"interfaces in {len(zones)} zones: flagged, no zone rules apply"
    elif zones and zones[0].name != vm.zone:
        problem = f"its label says zone {vm.zone!r} but its interfaces are in {zones[0].name!r}"
    return {"nics": nics, "zones": zones, "zone_problem": problem,
            "quarantine": Quarantine.objects.filter(vm=vm, released_at__isnull=True).first()}  # fmt: skip


def applies(host: Host, limit: int = 10) -> list[FirewallApply]:
    return list(FirewallApply.objects.filter(host=host)[:limit])


def pending_apply(host: Host) -> FirewallApply | None:
    return FirewallApply.objects.filter(host=host, state=FirewallApply.State.PENDING).first()


def quarantined(user) -> list[Quarantine]:
    return list(restrict(Quarantine.objects.filter(released_at__isnull=True).select_related("vm", "vm__host"),
                         user, "network.view"))  # fmt: skip


def quarantined_vm_ids() -> set[int]:
    return set(Quarantine.objects.filter(released_at__isnull=True).values_list("vm_id", flat=True))


def quarantine_job(vm):
    """The VM's latest quarantine job (its progress is shown on the VM's firewall page)."""
    jobs = Job.objects.filter(kind="network.vm.quarantine", target_type="virtualmachine", target_id=str(vm.pk))
    return jobs.order_by("-created_at", "-id").first()
