"""Applying the firewall: the ruleset compiled from the database, shown as a diff against the
running one, checked and loaded atomically, confirmed within FIREWALL_CONFIRM_SECONDS or
rolled back to the apply before it; drift (our tables changed by hand) detected, audited
and repaired by re-applying."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core.errors import Conflict, NotFound
from apps.core.gateways import nft
from apps.core.models import Host
from apps.vms.models import VirtualMachine

from .. import compiler
from ..models import FirewallApply, FirewallRule, Quarantine, VmNic, Zone
from .nics import nics_sync


def _table() -> str:
    return settings.NETWORK_NFT_TABLE


def _rule_spec(rule: FirewallRule) -> compiler.RuleSpec:
    remote = rule.remote_zone
    cidrs = remote.cidrs if remote is not None else ((rule.remote_cidr,) if rule.remote_cidr else ())
    return compiler.RuleSpec(
        id=rule.pk,
        direction=rule.direction,
        protocol=rule.protocol,
        action=rule.action,
        ports=(rule.port_from, rule.port_to) if rule.port_from is not None else None,
        remote_cidrs=cidrs,
        remote_zone_bridge=remote.bridge if remote is not None else "",
        comment=rule.comment,
    )


def build_ruleset(host: Host) -> compiler.Ruleset:
    """The ruleset the database describes for this host (a constant number of queries)."""
    zones = list(Zone.objects.filter(host=host))
    rules = list(FirewallRule.objects.filter(zone__host=host).select_related("remote_zone"))
    zone_rules: dict[int, list] = {}
    vm_rules: dict[int, list] = {}
    for r in sorted(rules, key=lambda r: (r.position, r.pk)):
        (vm_rules.setdefault(r.vm_id, []) if r.vm_id else zone_rules.setdefault(r.zone_id, [])).append(_rule_spec(r))
    by_network = {z.network_name: z for z in zones}
    nics: dict[int, list[VmNic]] = {}
    for nic in VmNic.objects.filter(vm__host=host, vm__present=True):
        nics.setdefault(nic.vm_id, []).append(nic)
    active = Quarantine.objects.filter(vm__host=host, released_at__isnull=True)
    quarantined = set(active.values_list("vm_id", flat=True))
    vms, q_macs = [], []
    names = dict(VirtualMachine.objects.filter(pk__in=nics).values_list("pk", "name"))
    for vm_id, vm_nics in nics.items():
        if vm_id in quarantined:
            q_macs += [n.mac for n in vm_nics]
        in_zones = {by_network[n.network].pk for n in vm_nics if n.network in by_network}
        if len(in_zones) != 1:
            continue  # outside every zone, or flagged (two zones): not trusted with a zone's rules
        (zone_id,) = in_zones
        macs = tuple(n.mac for n in vm_nics if n.network in by_network)
        vms.append(compiler.VmSpec(id=vm_id, name=names.get(vm_id, ""), zone_id=zone_id, macs=macs,
                                   rules=tuple(vm_rules.get(vm_id, ()))))  # fmt: skip
    zone_specs = [
        compiler.ZoneSpec(id=z.pk, name=z.name, kind=z.kind, bridge=z.bridge, policy_in=z.policy_in,
                          policy_out=z.policy_out, host_access=z.host_access, uplink=z.uplink,
                          rules=tuple(zone_rules.get(z.pk, ())))  # fmt: skip
        for z in zones
    ]
    return compiler.Ruleset(table=_table(), zones=zone_specs, vms=vms, quarantined_macs=q_macs,
                            match_bridge_name=nft.bridge_name_match_supported())  # fmt: skip


def _document(host: Host, *, sync: bool = True) -> dict:
    if sync:
        nics_sync(host)
    return compiler.compile_ruleset(build_ruleset(host))


def _current(host: Host) -> FirewallApply | None:
    """The apply the host runs now (pending or confirmed)."""
    return FirewallApply.objects.filter(
        host=host, state__in=[FirewallApply.State.PENDING, FirewallApply.State.CONFIRMED]
    ).first()


@dataclass
class ApplyPreview:
    running: list[str]
    new: list[str]
    diff: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.diff)


def firewall_preview(*, actor, host: Host) -> ApplyPreview:
    """The diff between the running ruleset (our tables) and the one an apply would load
    (rendered in a scratch network namespace: the host's ruleset is not touched)."""
    authorize(actor, "network.view", host, action="network.firewall.preview")
    doc = _document(host, sync=False)  # a page reads: the NICs as the state collector last stored them
    running = nft.describe(nft.list_tables(_table()))
    new = nft.describe(nft.render(doc, _table()))
    diff = list(difflib.unified_diff(running, new, "running", "new", lineterm="", n=1))
    return ApplyPreview(running=running, new=new, diff=diff)


def firewall_apply(*, actor, host: Host, confirm_seconds: int | None = None) -> FirewallApply:
    """Check and load the ruleset; it rolls back unless confirmed within `confirm_seconds`
    (default FIREWALL_CONFIRM_SECONDS; 0: confirmed at once, for the system's own applies).
    A refused ruleset changes nothing (nft -c first; the load is one transaction)."""
    seconds = settings.FIREWALL_CONFIRM_SECONDS if confirm_seconds is None else confirm_seconds
    with audited(actor=actor, action="network.firewall.apply", target=host, perm="network.change",
                 params={"confirm_seconds": seconds}) as ev:  # fmt: skip
        pending = FirewallApply.objects.filter(host=host, state=FirewallApply.State.PENDING).first()
        if pending is not None and seconds:
            raise Conflict(f"Apply #{pending.pk} still waits for confirmation: confirm it or let it roll back first.")
        apply = _load(host, actor, seconds)
        ev.params["apply"] = apply.pk
    if seconds:
        from ..tasks import firewall_rollback_due as task

        transaction.on_commit(lambda: task.apply_async(args=[apply.pk], countdown=seconds + 1))
    return apply


def _load(host: Host, actor, seconds: int, document: dict | None = None) -> FirewallApply:
    doc = document if document is not None else _document(host)
    nft.load(doc)
    fingerprint = nft.fingerprint(nft.list_tables(_table()))
    with transaction.atomic():
        previous = FirewallApply.objects.filter(host=host, state=FirewallApply.State.CONFIRMED).first()
        now = timezone.now()
        if not seconds:  # a confirmed apply: the one it replaces is history
            FirewallApply.objects.filter(host=host, state=FirewallApply.State.CONFIRMED).update(
                state=FirewallApply.State.SUPERSEDED, finished_at=now)  # fmt: skip
        return FirewallApply.objects.create(
            host=host, document=doc, fingerprint=fingerprint, previous=previous,
            state=FirewallApply.State.PENDING if seconds else FirewallApply.State.CONFIRMED,
            deadline=now + timedelta(seconds=seconds) if seconds else None,
            finished_at=None if seconds else now,
            actor_name=getattr(actor, "username", "") or "system",
        )  # fmt: skip


def firewall_confirm(*, actor, host: Host, apply_id: int) -> FirewallApply:
    with audited(actor=actor, action="network.firewall.confirm", target=host, perm="network.change",
                 params={"apply": apply_id}, atomic=True):  # fmt: skip
        apply = FirewallApply.objects.select_for_update().filter(pk=apply_id, host=host).first()
        if apply is None:
            raise NotFound(f"No firewall apply #{apply_id} on {host}.")
        if apply.state != FirewallApply.State.PENDING:
            raise Conflict(f"Apply #{apply_id} is {apply.get_state_display()}: there is nothing to confirm.")
        if apply.deadline and apply.deadline < timezone.now():
            raise Conflict(f"Apply #{apply_id} was not confirmed in time: it is being rolled back.")
        now = timezone.now()
        FirewallApply.objects.filter(host=host, state=FirewallApply.State.CONFIRMED).update(
            state=FirewallApply.State.SUPERSEDED, finished_at=now)  # fmt: skip
        apply.state, apply.finished_at = FirewallApply.State.CONFIRMED, now
        apply.save(update_fields=["state", "finished_at"])
    return apply


def _with_current_quarantine(host: Host, document: dict) -> dict:
    """A stored document with today's quarantined MACs: a rollback never releases a VM."""
    t = _table()
    macs = sorted({m for q in Quarantine.objects.filter(vm__host=host, released_at__isnull=True) for m in q.macs})
    cmds = [c for c in document["nftables"]
            if not ("element" in c.get("add", {}) and c["add"]["element"].get("name") == "quarantined")]  # fmt: skip
    if macs:
        cmds.append({"add": {"element": {"family": "bridge", "table": t, "name": "quarantined", "elem": macs}}})
    return {"nftables": cmds}


def firewall_rollback_due(apply_id: int, *, now=None) -> bool:
    """Roll an unconfirmed apply back once its deadline passed (the Celery countdown task,
    and the periodic check in case the worker was down then). True when it rolled back."""
    now = now or timezone.now()
    apply = FirewallApply.objects.select_related("host", "previous").filter(pk=apply_id).first()
    if apply is None or apply.state != FirewallApply.State.PENDING or (apply.deadline and apply.deadline > now):
        return False
    host = apply.host
    # back to the confirmed ruleset (the one before this apply, or a system apply made since,
    # e.g. a quarantine, which never waits for confirmation)
    target = FirewallApply.objects.filter(host=host, state=FirewallApply.State.CONFIRMED).first()
    with audited(actor=None, action="network.firewall.rollback", target=host,
                 params={"apply": apply.pk, "to": target.pk if target else None}) as ev:  # fmt: skip
        base = target.document if target is not None else compiler.compile_ruleset(compiler.Ruleset(table=_table()))
        if target is None and not Quarantine.objects.filter(vm__host=host, released_at__isnull=True).exists():
            nft.delete_tables(_table())  # nothing of ours ran before
        else:
            nft.load(_with_current_quarantine(host, base))
        FirewallApply.objects.filter(pk=apply.pk).update(state=FirewallApply.State.ROLLED_BACK, finished_at=now)
        if target is not None:
            FirewallApply.objects.filter(pk=target.pk).update(fingerprint=nft.fingerprint(nft.list_tables(_table())))
        ev.params["reason"] = "not confirmed in time"
    return True


@dataclass
class CheckResult:
    host: str
    rolled_back: list[int]
    drift: bool
    repaired: bool


def firewall_check(host: Host, *, now=None) -> CheckResult:
    """The periodic check (beat, as the system): roll back applies past their deadline,
    then compare our running tables with the last apply; drift is audited and repaired."""
    now = now or timezone.now()
    overdue = FirewallApply.objects.filter(host=host, state=FirewallApply.State.PENDING, deadline__lt=now)
    rolled = [a.pk for a in overdue if firewall_rollback_due(a.pk, now=now)]
    current = _current(host)
    if current is None:
        return CheckResult(host=host.name, rolled_back=rolled, drift=False, repaired=False)
    live = nft.fingerprint(nft.list_tables(_table()))
    if live == current.fingerprint:
        return CheckResult(host=host.name, rolled_back=rolled, drift=False, repaired=False)
    record(actor=None, action="network.firewall.drift", target=host, outcome="failed",
           params={"apply": current.pk},
           error="our nftables tables differ from the last apply (changed by hand?)")  # fmt: skip
    with audited(actor=None, action="network.firewall.repair", target=host, params={"apply": current.pk}):
        nft.load(_with_current_quarantine(host, current.document))
        FirewallApply.objects.filter(pk=current.pk).update(
            fingerprint=nft.fingerprint(nft.list_tables(_table())), drift_seen_at=now)  # fmt: skip
    return CheckResult(host=host.name, rolled_back=rolled, drift=True, repaired=True)


def firewall_restore(host: Host) -> bool:
    """When the worker starts (host reboot, tables lost): load the last apply again if our
    tables are missing or differ. True when it loaded."""
    current = _current(host)
    if current is None:
        return False
    if nft.fingerprint(nft.list_tables(_table())) == current.fingerprint:
        return False
    with audited(actor=None, action="network.firewall.restore", target=host, params={"apply": current.pk}):
        nft.load(_with_current_quarantine(host, current.document))
        FirewallApply.objects.filter(pk=current.pk).update(fingerprint=nft.fingerprint(nft.list_tables(_table())))
    return True


def firewall_counters(*, actor, host: Host) -> dict[int, tuple[int, int]]:
    """Packets and bytes per rule id (replies of an accept rule counted with it)."""
    authorize(actor, "network.view", host, action="network.firewall.counters")
    out: dict[int, tuple[int, int]] = {}
    for key, (p, b) in nft.counters(_table()).items():
        if key.startswith("r") and key[1:].isdigit():
            out[int(key[1:])] = (p, b)
    return out
