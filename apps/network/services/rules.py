"""Firewall rules: added and deleted here, enforced by the next apply."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import Max

from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput, NotFound

from ..models import FirewallRule, Zone
from .nics import vm_zones


def _zone_of(vm) -> Zone:
    zones = vm_zones(vm)
    if not zones:
        raise InvalidInput(f"{vm.name} has no interface in a zone: attach it to a zone's network first.")
    if len(zones) > 1:
        raise Conflict(f"{vm.name} has interfaces in {len(zones)} zones ({', '.join(z.name for z in zones)}): "
                       "it is flagged; attach it to one zone before giving it rules.")  # fmt: skip
    return zones[0]


def rule_add(*, actor, direction: str, protocol: str, action: str, vm=None, zone: Zone | None = None,
             ports: tuple[int, int] | None = None, remote_cidr: str = "", remote_zone: Zone | None = None,
             comment: str = "", position: int | None = None) -> FirewallRule:  # fmt: skip
    """A rule of one VM (vm) or a zone-wide rule (zone). Typed values from RuleForm; the
    model's validation runs again, so nothing invalid is ever stored."""
    target = vm if vm is not None else zone
    params = {"direction": direction, "protocol": protocol, "action": action, "ports": list(ports) if ports else None,
              "remote": remote_cidr or (remote_zone.name if remote_zone else ""), "comment": comment}  # fmt: skip
    with audited(actor=actor, action="network.rule.add", target=target, perm="network.change", params=params,
                 atomic=True) as ev:  # fmt: skip
        if (vm is None) == (zone is None):
            raise InvalidInput("A rule belongs to one VM or to one zone.")
        owner_zone = _zone_of(vm) if vm is not None else zone
        if remote_zone is not None:
            remote_zone = Zone.objects.filter(pk=remote_zone.pk, host_id=owner_zone.host_id).first()
            if remote_zone is None:
                raise NotFound("The remote zone no longer exists on this host.")
        if position is None:
            last = FirewallRule.objects.filter(zone=owner_zone, vm=vm).aggregate(m=Max("position"))["m"]
            position = (last or 0) + 10
        rule = FirewallRule(zone=owner_zone, vm=vm, direction=direction, protocol=protocol, action=action,
                            port_from=ports[0] if ports else None, port_to=ports[1] if ports else None,
                            remote_cidr=remote_cidr, remote_zone=remote_zone, comment=comment,
                            position=position)  # fmt: skip
        try:
            rule.full_clean()
        except ValidationError as exc:
            raise InvalidInput("; ".join(exc.messages)) from None
        rule.save()
        ev.params["rule"] = rule.pk
    return rule


def rule_delete(*, actor, rule_id: int) -> None:
    rule = FirewallRule.objects.select_related("vm", "vm__host", "zone").filter(pk=rule_id).first()
    target = rule.vm if rule is not None and rule.vm_id else (rule.zone if rule is not None else None)
    if rule is None:
        with audited(actor=actor, action="network.rule.delete", target=("firewallrule", rule_id, f"#{rule_id}"),
                     params={"rule": rule_id}):  # fmt: skip
            raise NotFound(f"No firewall rule #{rule_id}.")
    with audited(actor=actor, action="network.rule.delete", target=target, perm="network.change",
                 params={"rule": rule_id, "was": str(rule)}, atomic=True):  # fmt: skip
        rule.delete()
