"""Applying the firewall: the ruleset compiled from the database, shown as a diff against the
running one, checked (`nft -c`) and loaded atomically, confirmed within FIREWALL_CONFIRM_SECONDS or
rolled back to the apply before it; drift (our tables changed by hand) detected, audited
and repaired by re-applying."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize
from apps.audit.services import audited, record
from apps.core.errors import Conflict, NotFound
from apps.core.gateways import nft
from apps.core.models import Host
from apps.vms.models import VirtualMachine, VmInterface

from .. import compiler
from ..models import HOST_SERVICES, FirewallApply, FirewallRule, Quarantine, Zone


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


def policy_spec(host: Host) -> dict:
    """What the database says the policy is: zones and their rules, each VM's rules (by VM
    id). Stored with every apply, so a later refresh (a new VM, a NIC that moved, a
    quarantine, a rollback) recompiles exactly what was applied, never unconfirmed edits."""
    zone_rules: dict[int, list] = {}
    vm_rules: dict[str, list] = {}
    rules = FirewallRule.objects.filter(zone__host=host).select_related("remote_zone")
    for r in sorted(rules, key=lambda r: (r.position, r.pk)):
        spec = dataclasses.asdict(_rule_spec(r))
        (vm_rules.setdefault(str(r.vm_id), []) if r.vm_id else zone_rules.setdefault(r.zone_id, [])).append(spec)
    zones = [
        {"id": z.pk, "name": z.name, "kind": z.kind, "bridge": z.bridge, "network": z.network_name,
         "policy_in": z.policy_in, "policy_out": z.policy_out, "host_access": z.host_access,
         "host_services": list(z.host_services), "uplink": z.uplink, "nat": z.nat,
         "rules": zone_rules.get(z.pk, [])}  # fmt: skip
        for z in Zone.objects.filter(host=host)
    ]
    return {"zones": zones, "vm_rules": vm_rules}


def _rule(d: dict) -> compiler.RuleSpec:
    return compiler.RuleSpec(**{**d, "ports": tuple(d["ports"]) if d.get("ports") else None,
                                "remote_cidrs": tuple(d.get("remote_cidrs") or ())})  # fmt: skip


def _host_services(names) -> tuple[tuple[str, str, int], ...]:
    return tuple((n, proto, port) for n in names or () for proto, port in HOST_SERVICES.get(n, ()))


def build_ruleset(host: Host, spec: dict | None = None) -> compiler.Ruleset:
    """The ruleset of `spec` (default: the database's policy) for the VMs' interfaces as
    last read and today's quarantines (a constant number of queries)."""
    spec = spec if spec is not None else policy_spec(host)
    by_network = {z["network"]: z for z in spec["zones"]}
    nics: dict[int, list[VmInterface]] = {}
    for nic in VmInterface.objects.filter(vm__host=host, vm__present=True):
        nics.setdefault(nic.vm_id, []).append(nic)
    active = Quarantine.objects.filter(vm__host=host, released_at__isnull=True)
    quarantined = set(active.values_list("vm_id", flat=True))
    vms, q_macs = [], []
    names = dict(VirtualMachine.objects.filter(pk__in=nics).values_list("pk", "name"))
    for vm_id, vm_nics in sorted(nics.items()):
        if vm_id in quarantined:
            q_macs += [n.mac for n in vm_nics]
        in_zones = {by_network[n.network]["id"] for n in vm_nics if n.network in by_network}
        if len(in_zones) != 1:
            continue  # outside every zone, or flagged (two zones): not trusted with a zone's rules
        (zone_id,) = in_zones
        macs = tuple(sorted(n.mac for n in vm_nics if n.network in by_network))
        vms.append(compiler.VmSpec(id=vm_id, name=names.get(vm_id, ""), zone_id=zone_id, macs=macs,
                                   rules=tuple(_rule(r) for r in spec["vm_rules"].get(str(vm_id), ()))))  # fmt: skip
    zone_specs = [
        compiler.ZoneSpec(id=z["id"], name=z["name"], kind=z["kind"], bridge=z["bridge"], policy_in=z["policy_in"],
                          policy_out=z["policy_out"], host_access=z["host_access"], uplink=z["uplink"],
                          nat=bool(z.get("nat")),
                          host_services=_host_services(z.get("host_services")),
                          rules=tuple(_rule(r) for r in z["rules"]))  # fmt: skip
        for z in spec["zones"]
    ]
    return compiler.Ruleset(table=_table(), zones=zone_specs, vms=vms, quarantined_macs=sorted(set(q_macs)),
                            match_bridge_name=nft.bridge_name_match_supported())  # fmt: skip


def _document(host: Host, spec: dict | None = None) -> dict:
    return compiler.compile_ruleset(build_ruleset(host, spec))


# how long a document checked when its diff was shown stays checked for its apply
CHECKED_SECONDS = 600


def _checked_key(host: Host, body: bytes) -> str:
    return f"network:nft-checked:{host.pk}:{nft.digest(body)}"


def _check_and_load(host: Host, doc: dict) -> str:
    """`nft -c` of the document, then its load in one transaction. The check is skipped only
    for the very bytes that were checked on this host when the diff was shown (the preview
    that precedes an operator's apply): then the apply costs one nft pass, not two. Returns
    where the document was checked ("preview" or "apply")."""
    body = nft.encode(doc)
    key = _checked_key(host, body)
    where = "preview" if cache.get(key) else "apply"
    if where == "apply":
        nft.check(body)
    nft.load(body)
    return where


def _confirmed(host: Host) -> FirewallApply | None:
    return FirewallApply.objects.filter(host=host, state=FirewallApply.State.CONFIRMED).first()


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
    (rendered in a scratch network namespace: the host's ruleset is not touched). The new
    document is checked with `nft -c` against the host's ruleset meanwhile; its apply then
    loads it without a second check (the same bytes)."""
    authorize(actor, "network.view", host, action="network.firewall.preview")
    body = nft.encode(_document(host))  # a page reads: the NICs as the state collector last stored them
    running = nft.describe(nft.list_tables(_table()))
    new = nft.describe(nft.check_and_render(body, _table()))  # `nft -c` here, the listing from a scratch netns
    cache.set(_checked_key(host, body), True, CHECKED_SECONDS)
    diff = list(difflib.unified_diff(running, new, "running", "new", lineterm="", n=1))
    return ApplyPreview(running=running, new=new, diff=diff)


def firewall_apply(*, actor, host: Host, confirm_seconds: int | None = None) -> FirewallApply:
    """Check and load the ruleset; it rolls back unless confirmed within `confirm_seconds`
    (default FIREWALL_CONFIRM_SECONDS; 0: confirmed at once, for the system's own applies).
    A refused ruleset changes nothing (`nft -c` first, at the preview or here; the load is
    one transaction)."""
    seconds = settings.FIREWALL_CONFIRM_SECONDS if confirm_seconds is None else confirm_seconds
    with audited(actor=actor, action="network.firewall.apply", target=host, perm="network.change",
                 params={"confirm_seconds": seconds}) as ev:  # fmt: skip
        pending = FirewallApply.objects.filter(host=host, state=FirewallApply.State.PENDING).first()
        if pending is not None and seconds:
            raise Conflict(f"Apply #{pending.pk} still waits for confirmation: confirm it or let it roll back first.")
        apply = _load(host, actor, seconds, policy_spec(host))
        ev.params.update(apply=apply.pk, checked_at=apply.checked_at)
    if seconds:
        from ..tasks import firewall_rollback_due as task

        transaction.on_commit(lambda: task.apply_async(args=[apply.pk], countdown=seconds + 1))
    return apply


def _load(host: Host, actor, seconds: int, spec: dict) -> FirewallApply:
    doc = _document(host, spec)
    checked_at = _check_and_load(host, doc)
    fingerprint = nft.fingerprint(nft.list_tables(_table()))
    with transaction.atomic():
        previous = _confirmed(host)
        now = timezone.now()
        if not seconds:  # a confirmed apply: the one it replaces is history
            FirewallApply.objects.filter(host=host, state=FirewallApply.State.CONFIRMED).update(
                state=FirewallApply.State.SUPERSEDED, finished_at=now)  # fmt: skip
        apply = FirewallApply.objects.create(
            host=host, document=doc, spec=spec, fingerprint=fingerprint, previous=previous,
            state=FirewallApply.State.PENDING if seconds else FirewallApply.State.CONFIRMED,
            deadline=now + timedelta(seconds=seconds) if seconds else None,
            finished_at=None if seconds else now,
            actor_name=getattr(actor, "username", "") or "system",
        )  # fmt: skip
    apply.checked_at = checked_at
    return apply


def firewall_enforce(*, actor, host: Host, why: str) -> FirewallApply:
    """Load the last confirmed policy again with today's interfaces and quarantines, confirmed
    at once (a quarantine or release). An unconfirmed apply running then is rolled back
    first: what runs afterwards is the confirmed policy, never half-confirmed edits."""
    for pending in FirewallApply.objects.filter(host=host, state=FirewallApply.State.PENDING):
        firewall_rollback_due(pending.pk, force=True, reason=why)
    current = _confirmed(host)
    return _load(host, actor, 0, current.spec if current is not None else policy_spec(host))


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


def firewall_rollback_due(apply_id: int, *, now=None, force: bool = False, reason: str = "") -> bool:
    """Roll an unconfirmed apply back once its deadline passed (the Celery countdown task,
    and the periodic check in case the worker was down then), or at once with force. The
    confirmed policy is loaded again with today's interfaces and quarantines (a rollback
    never releases a quarantined VM). True when it rolled back."""
    now = now or timezone.now()
    apply = FirewallApply.objects.select_related("host").filter(pk=apply_id).first()
    if apply is None or apply.state != FirewallApply.State.PENDING:
        return False
    if not force and apply.deadline and apply.deadline > now:
        return False
    host = apply.host
    target = _confirmed(host)
    with audited(actor=None, action="network.firewall.rollback", target=host,
                 params={"apply": apply.pk, "to": target.pk if target else None,
                         "reason": reason or "not confirmed in time"}):  # fmt: skip
        has_quarantine = Quarantine.objects.filter(vm__host=host, released_at__isnull=True).exists()
        if target is None and not has_quarantine:
            nft.delete_tables(_table())  # nothing of ours ran before
        else:
            spec = target.spec if target is not None else {"zones": [], "vm_rules": {}}
            doc = _document(host, spec)
            _check_and_load(host, doc)
            if target is not None:
                FirewallApply.objects.filter(pk=target.pk).update(
                    document=doc, fingerprint=nft.fingerprint(nft.list_tables(_table())))  # fmt: skip
        FirewallApply.objects.filter(pk=apply.pk).update(state=FirewallApply.State.ROLLED_BACK, finished_at=now)
    return True


@dataclass
class CheckResult:
    host: str
    rolled_back: list[int]
    drift: bool
    repaired: bool


def firewall_check(host: Host, *, now=None) -> CheckResult:
    """The periodic check (beat, as the system): roll back applies past their deadline;
    compare our running tables with the last apply (drift is audited and repaired); bring
    in VMs whose interfaces changed since (a VM defined or started outside the portal gets
    its zone's policy), audited as a refresh."""
    now = now or timezone.now()
    overdue = FirewallApply.objects.filter(host=host, state=FirewallApply.State.PENDING, deadline__lt=now)
    rolled = [a.pk for a in overdue if firewall_rollback_due(a.pk, now=now)]
    current = _current(host)
    if current is None:
        return CheckResult(host=host.name, rolled_back=rolled, drift=False, repaired=False)
    live = nft.fingerprint(nft.list_tables(_table()))
    drift = live != current.fingerprint
    if drift:
        record(actor=None, action="network.firewall.drift", target=host, outcome="failed",
               params={"apply": current.pk},
               error="our nftables tables differ from the last apply (changed by hand?)")  # fmt: skip
    _refresh(host, current, drift=drift, now=now)
    return CheckResult(host=host.name, rolled_back=rolled, drift=drift, repaired=drift)


def _refresh(host: Host, current: FirewallApply, *, drift: bool = False, now=None, why: str = "") -> bool:
    """Load `current`'s policy again with today's interfaces and quarantines if that changes
    the document (or our tables drifted). True when it loaded."""
    doc = _document(host, current.spec)
    if not drift and doc == current.document:
        return False
    action = "network.firewall.repair" if drift else "network.firewall.refresh"
    params = {"apply": current.pk, **({"why": why} if why else {})}
    with audited(actor=None, action=action, target=host, params=params):
        _check_and_load(host, doc)
        FirewallApply.objects.filter(pk=current.pk).update(
            document=doc, fingerprint=nft.fingerprint(nft.list_tables(_table())),
            **({"drift_seen_at": now or timezone.now()} if drift else {}))  # fmt: skip
    return True


# lifecycle events after which a VM's interfaces may be new to the firewall
REFRESH_ON = frozenset({"found", "defined", "started", "resumed"})


def firewall_on_domain_event(host: Host, vm: VirtualMachine, kind: str) -> bool:
    """The state collector's hook after a lifecycle event (apps.vms.collector.AFTER_DOMAIN_REFRESH):
    a VM defined or started outside the portal gets its zone's rules at once, not at the next
    periodic check. Only the host's current policy is loaded again (never unconfirmed edits),
    and only when the VM's interfaces change the document. True when it loaded."""
    if kind not in REFRESH_ON:
        return False
    current = _current(host)
    if current is None:  # the portal does not manage this host's firewall
        return False
    return _refresh(host, current, why=f"{vm.name} {kind}")


def firewall_restore(host: Host) -> bool:
    """When the worker starts (host reboot, tables lost): load the last apply again if our
    tables are missing or differ. True when it loaded."""
    current = _current(host)
    if current is None:
        return False
    if nft.fingerprint(nft.list_tables(_table())) == current.fingerprint:
        return False
    with audited(actor=None, action="network.firewall.restore", target=host, params={"apply": current.pk}):
        doc = _document(host, current.spec)
        _check_and_load(host, doc)
        FirewallApply.objects.filter(pk=current.pk).update(
            document=doc, fingerprint=nft.fingerprint(nft.list_tables(_table())))  # fmt: skip
    return True


def firewall_counters(*, actor, host: Host) -> dict[int, tuple[int, int]]:
    """Packets and bytes per rule id (replies of an accept rule counted with it)."""
    authorize(actor, "network.view", host, action="network.firewall.counters")
    out: dict[int, tuple[int, int]] = {}
    for key, (p, b) in nft.counters(_table()).items():
        if key.startswith("r") and key[1:].isdigit():
            out[int(key[1:])] = (p, b)
    return out
