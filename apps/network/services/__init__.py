"""Network services: zones, firewall rules, applying the ruleset (with confirmation,
rollback and drift repair) and quarantine. Views, the `vm_firewall` command and Celery
tasks all come through here."""

from apps.accounts.permissions import has_perm, require
from apps.core.gateways import libvirt as gw
from apps.core.models import Host

from .firewall import (
    ApplyPreview,
    firewall_apply,
    firewall_check,
    firewall_confirm,
    firewall_counters,
    firewall_enforce,
    firewall_preview,
    firewall_restore,
    firewall_rollback_due,
)
from .nics import vm_zones
from .quarantine import vm_quarantine, vm_release
from .rules import rule_add, rule_delete
from .zones import MOVE_MESSAGES, vm_zone_move, zone_create, zone_delete, zone_edit

__all__ = [
    "ApplyPreview", "firewall_apply", "firewall_check", "firewall_confirm", "firewall_counters", "firewall_enforce",
    "firewall_preview", "firewall_restore", "firewall_rollback_due", "networks_for", "rule_add",
    "MOVE_MESSAGES", "rule_delete", "vm_quarantine", "vm_release", "vm_zone_move", "vm_zones", "zone_create",
    "zone_delete", "zone_edit",
]  # fmt: skip


def networks_for(user) -> list[tuple[Host, list[gw.NetworkInfo]]]:
    require(user, "network.view", anywhere=True, action="network.networks.view")
    return [(host, gw.network_list(host.uri)) for host in Host.objects.all() if has_perm(user, "network.view", host)]
