"""Zones, VMs and rules -> one nftables JSON document (pure: plain values in, a dict out).

Two tables of our own, replaced as a whole in one transaction (`add` + `delete` + the new
content, so the first apply and every later one are the same document):

- `bridge <table>`: VM traffic on the zone bridges, matched by MAC address, so a rule
  follows its VM whatever tap device (`vnetN`) it got this boot. The lookup is one verdict
  map per direction (MAC -> the VM's chain): its cost does not grow with the number of VMs.
  Traffic from VM A to VM B passes A's "out" chain (base chain at priority -200) and then
  B's "in" chain (priority -190): an accept in one base chain does not skip the next.
  The bridge family has no connection tracking here (no nf_conntrack_bridge), so an accept
  rule also lets the replies of what it accepts back (sport for dport, echo-reply for icmp,
  TCP replies never a bare SYN): a stateless firewall's usual mirror.
  A frame from a MAC that no VM of ours has, entering a zone bridge, is dropped (default
  deny also for VMs defined outside the portal until their NICs are known), where the kernel
  can match a frame's bridge; elsewhere such a VM is unfiltered at layer 2 until the next
  apply or check reads its NICs (routed traffic is still denied by the inet table).
  Quarantined MACs are dropped before anything else; ARP and IPv6 neighbour discovery of
  unquarantined VMs pass, or no allowed packet could find its way.
- `inet <table>`: routed traffic. Default deny between zones (whatever leaves a zone bridge
  for another interface is dropped, but for its vpn-only uplink and the zone pairs a rule
  allows), and from zones without host access to the host; a zone with host access reaches
  the whole host or only the host services it lists (ssh, dns, ...). The host's replies to
  what a VM may reach on it are marked (HOST_REPLY_MARK) on their way out, so the bridge
  table, which sees no connection state, lets them past the VM's own inbound policy; so are
  routed replies (conntrack: the reply direction of a flow that left the zone, e.g. by a
  vpn-only uplink). No NAT, but for a zone whose policy asks for it (`nat`): what leaves its
  bridge by its uplink is masqueraded as the uplink's address (a postrouting nat chain).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import ipaddress
from dataclasses import dataclass, field

BRIDGE_OUT_PRIO = -200
BRIDGE_IN_PRIO = -190
# a bit of the packet mark: set by the inet table on the host's replies to what a zone's VM
# may reach on it (conntrack: established), read by the bridge table, which has no conntrack
HOST_REPLY_MARK = 0x00010000
ND_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert"]


@dataclass(frozen=True)
class RuleSpec:
    id: int
    direction: str  # in | out
    protocol: str  # any | tcp | udp | icmp | icmpv6
    action: str  # accept | drop
    ports: tuple[int, int] | None = None
    remote_cidrs: tuple[str, ...] = ()  # empty: anywhere
    remote_zone_bridge: str = ""  # the rule names a zone: its bridge (routed traffic)
    comment: str = ""


@dataclass(frozen=True)
class ZoneSpec:
    id: int
    name: str
    kind: str
    bridge: str
    policy_in: str = "drop"
    policy_out: str = "drop"
    host_access: bool = False
    host_services: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, port); empty: the whole host
    uplink: str = ""
    nat: bool = False  # masquerade what leaves by the uplink (only with an uplink)
    rules: tuple[RuleSpec, ...] = ()


@dataclass(frozen=True)
class VmSpec:
    id: int
    name: str
    zone_id: int
    macs: tuple[str, ...]
    rules: tuple[RuleSpec, ...] = ()


@dataclass
class Ruleset:
    table: str
    zones: list[ZoneSpec] = field(default_factory=list)
    vms: list[VmSpec] = field(default_factory=list)
    quarantined_macs: list[str] = field(default_factory=list)
    # the kernel can match a frame's bridge (`meta ibrname`, nft_meta_bridge): then frames
    # from unknown MACs on zone bridges are dropped too (nft.bridge_name_match_supported)
    match_bridge_name: bool = False


def _payload(proto: str, fld: str) -> dict:
    return {"payload": {"protocol": proto, "field": fld}}


def _match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


# Expressions that thousands of rules share are built once and shared by reference (the
# document is never changed after it is compiled, only encoded and stored): far fewer objects
# to allocate, and to free.
_cached = functools.lru_cache(maxsize=4096)
COUNTER = {"counter": None}
_VERDICT = {"accept": {"accept": None}, "drop": {"drop": None}}


@_cached
def _l4(protocol: str) -> tuple[dict, ...]:
    if protocol == "any":
        return ()
    return (_match({"meta": {"key": "l4proto"}}, "ipv6-icmp" if protocol == "icmpv6" else protocol),)


@_cached
def _port(protocol: str, fld: str, lo: int, hi: int) -> dict:
    return _match(_payload(protocol, fld), lo if lo == hi else {"range": [lo, hi]})


@functools.lru_cache(maxsize=4096)  # thousands of rules name the same few networks
def _addr_parts(cidr: str) -> tuple[str, str, int, bool]:
    net = ipaddress.ip_network(cidr)
    return ("ip" if net.version == 4 else "ip6", str(net.network_address), net.prefixlen,
            net.prefixlen == net.max_prefixlen)  # fmt: skip


@_cached
def _addr(cidr: str, end: str) -> dict:
    proto, addr, plen, host = _addr_parts(cidr)
    return _match(_payload(proto, end), addr if host else {"prefix": {"addr": addr, "len": plen}})


def _rule_exprs(rule: RuleSpec, direction: str, *, reply: bool) -> list[list[dict]]:
    """The expression lists of one rule in the chain of `direction` (one per remote CIDR).
    reply=True: the mirrored rule that lets the replies of an accepted flow back."""
    # the remote end: the source of traffic to the VM, the destination of traffic from it
    end = "saddr" if direction == "in" else "daddr"
    port_field = "sport" if reply else "dport"
    out = []
    for cidr in rule.remote_cidrs or (None,):
        exprs = [_addr(cidr, end)] if cidr else []
        if reply and rule.protocol == "any":
            # the replies of any protocol: never a bare TCP SYN, never an echo request (a
            # remote cannot open a connection to the VM, nor ping it, through this mirror)
            out += [[*exprs, *_l4(proto), *extra] for proto, extra in _ANY_REPLIES]
            continue
        exprs += _l4(rule.protocol)
        if rule.ports and rule.protocol in ("tcp", "udp"):
            exprs.append(_port(rule.protocol, port_field, *rule.ports))
        if reply and rule.protocol == "tcp":  # a reply is never a connection attempt
            exprs.append(_not_syn())
        if reply and rule.protocol in ("icmp", "icmpv6"):
            exprs.append(_match(_payload(rule.protocol, "type"), "echo-reply"))
        out.append(exprs)
    return out


@_cached
def _not_syn() -> dict:
    return _match({"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "syn", "!=")


ICMP_REPLY_TYPES = ["echo-reply", "destination-unreachable", "time-exceeded", "parameter-problem"]
ICMPV6_REPLY_TYPES = ["echo-reply", "destination-unreachable", "packet-too-big", "time-exceeded",
                      "parameter-problem"]  # fmt: skip
# the stateless mirror of an accepted "any" rule: (protocol, extra matches) per reply rule
_ANY_REPLIES = (
    ("tcp", (_not_syn(),)),
    ("udp", ()),
    ("icmp", (_match(_payload("icmp", "type"), {"set": ICMP_REPLY_TYPES}),)),
    ("icmpv6", (_match(_payload("icmpv6", "type"), {"set": ICMPV6_REPLY_TYPES}),)),
)


def _comment(rule: RuleSpec, reply: bool) -> str:
    text = f"r{rule.id}{' reply' if reply else ''} {rule.comment}".strip()
    return text[:120]


def _chain_rules(table: str, chain: str, rules: tuple[RuleSpec, ...], direction: str) -> list[dict]:
    cmds = []
    for rule in rules:
        if rule.direction == direction:
            for exprs in _rule_exprs(rule, direction, reply=False):
                cmds.append(_rule("bridge", table, chain, [*exprs, COUNTER, _VERDICT[rule.action]],
                                  _comment(rule, False)))  # fmt: skip
        elif rule.action == "accept":  # the replies of what the other direction accepts
            for exprs in _rule_exprs(rule, direction, reply=True):
                cmds.append(_rule("bridge", table, chain, [*exprs, COUNTER, _VERDICT["accept"]],
                                  _comment(rule, True)))  # fmt: skip
    return cmds


def _rule(family: str, table: str, chain: str, expr: list[dict], comment: str = "") -> dict:
    body = {"family": family, "table": table, "chain": chain, "expr": expr}
    if comment:
        body["comment"] = comment
    return {"add": {"rule": body}}


def _chain(family: str, table: str, name: str, hook: str | None = None, prio: int = 0) -> dict:
    body = {"family": family, "table": table, "name": name}
    if hook:
        body.update(type="filter", hook=hook, prio=prio, policy="accept")
    return {"add": {"chain": body}}


@contextlib.contextmanager
def _no_gc():
    """Compiling 1,000 VMs builds a few hundred thousand small dicts and lists, none of them
    cyclic: the cyclic collector would walk the growing document again and again (it was
    90% of the compile time). Paused while compiling; it resumes as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_ruleset(rs: Ruleset) -> dict:
    with _no_gc():
        return _compile(rs)


def _compile(rs: Ruleset) -> dict:
    t = rs.table
    cmds: list[dict] = []
    for family in ("bridge", "inet"):  # replace our tables whole: create (if absent), delete, build
        cmds += [{"add": {"table": {"family": family, "name": t}}},
                 {"delete": {"table": {"family": family, "name": t}}},
                 {"add": {"table": {"family": family, "name": t}}}]  # fmt: skip
    cmds += _bridge_table(rs)
    cmds += _inet_table(rs)
    return {"nftables": cmds}


def _bridge_table(rs: Ruleset) -> list[dict]:
    t, B = rs.table, "bridge"
    zones = {z.id: z for z in rs.zones}
    cmds = [
        {"add": {"set": {"family": B, "table": t, "name": "quarantined", "type": "ether_addr"}}},
        {"add": {"map": {"family": B, "table": t, "name": "vm_out", "type": "ether_addr", "map": "verdict"}}},
        {"add": {"map": {"family": B, "table": t, "name": "vm_in", "type": "ether_addr", "map": "verdict"}}},
        {"add": {"set": {"family": B, "table": t, "name": "zone_bridges", "type": "ifname"}}},
    ]
    # base chains: from VMs (forward and to the host), to VMs (forward and from the host)
    bases = [("fwd_out", "forward", BRIDGE_OUT_PRIO, "saddr", "vm_out"),
             ("fwd_in", "forward", BRIDGE_IN_PRIO, "daddr", "vm_in"),
             ("host_in", "input", BRIDGE_OUT_PRIO, "saddr", "vm_out"),
             ("host_out", "output", BRIDGE_IN_PRIO, "daddr", "vm_in")]  # fmt: skip
    for name, hook, prio, end, vmap in bases:
        cmds.append(_chain(B, t, name, hook, prio))
        for e in ("saddr", "daddr"):
            cmds.append(_rule(B, t, name, [_match(_payload("ether", e), "@quarantined"), {"counter": None},
                                           {"drop": None}], "quarantine"))  # fmt: skip
        cmds.append(_rule(B, t, name, [_match(_payload("ether", "type"), "arp"), {"accept": None}]))
        if hook == "output":  # the host's replies to what its zones' VMs may reach on it (host services)
            cmds.append(_rule(B, t, name, [_match({"&": [{"meta": {"key": "mark"}}, HOST_REPLY_MARK]}, HOST_REPLY_MARK),
                                           {"accept": None}], "host replies"))  # fmt: skip
        cmds.append(_rule(B, t, name, [_match(_payload("icmpv6", "type"), {"set": ND_TYPES}), {"accept": None}]))
        cmds.append(_rule(B, t, name, [{"vmap": {"key": _payload("ether", end), "data": f"@{vmap}"}}]))
        if end == "saddr" and rs.match_bridge_name:  # a MAC no VM of ours has, sending on a zone bridge: default deny
            cmds.append(_rule(B, t, name, [_match({"meta": {"key": "ibrname"}}, "@zone_bridges"), {"counter": None},
                                           {"drop": None}], "unknown MAC"))  # fmt: skip
    # zone-wide rules and policies, then one chain pair per VM
    for z in rs.zones:
        for direction in ("in", "out"):
            cmds.append(_chain(B, t, f"zone{z.id}-{direction}"))
            cmds += _chain_rules(t, f"zone{z.id}-{direction}", z.rules, direction)
    elems = {"vm_out": [], "vm_in": []}
    for vm in rs.vms:
        zone = zones.get(vm.zone_id)
        if zone is None or not vm.macs:
            continue
        for direction in ("in", "out"):
            chain = f"vm{vm.id}-{direction}"
            cmds.append(_chain(B, t, chain))
            cmds += _chain_rules(t, chain, vm.rules, direction)
            if zone.kind == "vpn-only" and direction == "in" and zone.uplink:
                # what comes back through the uplink: replies (stateless: TCP never a bare SYN)
                from_uplink = _match({"meta": {"key": "iifname"}}, zone.uplink)
                not_syn = _match({"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "syn", "!=")
                cmds.append(_rule(B, t, chain, [from_uplink, not_syn, {"accept": None}], "vpn replies"))
                cmds.append(_rule(B, t, chain, [from_uplink, _match({"meta": {"key": "l4proto"}},
                                                                    {"set": ["udp", "icmp", "ipv6-icmp"]}),
                                                {"accept": None}], "vpn replies"))  # fmt: skip
            cmds.append(_rule(B, t, chain, [{"jump": {"target": f"zone{zone.id}-{direction}"}}]))
            if zone.kind == "vpn-only" and direction == "out" and zone.uplink:
                # a vpn-only VM's frames leave the bridge only by the uplink; frames to the host
                # itself (pkttype host: routed or for the host) pass on, and the inet table lets
                # them out by the uplink only (at the bridge's input hook oifname is empty)
                cmds.append(_rule(B, t, chain, [_match({"meta": {"key": "pkttype"}}, "host", "!="),
                                                _match({"meta": {"key": "oifname"}}, zone.uplink, "!="),
                                                {"counter": None}, {"drop": None}], "vpn-only"))  # fmt: skip
            policy = zone.policy_in if direction == "in" else zone.policy_out
            # the policy ends the chain either way: an out chain that only returned would meet
            # the unknown-MAC drop; an accept ends only this base chain (the in stage follows)
            cmds.append(_rule(B, t, chain, [{"counter": None}, {policy: None}], f"policy {zone.name}"))
            elems[f"vm_{direction}"] += [[mac, {"jump": {"target": chain}}] for mac in vm.macs]
    for name, elem in elems.items():
        if elem:
            cmds.append({"add": {"element": {"family": B, "table": t, "name": name, "elem": elem}}})
    if rs.zones:
        cmds.append({"add": {"element": {"family": B, "table": t, "name": "zone_bridges",
                                         "elem": sorted({z.bridge for z in rs.zones})}}})  # fmt: skip
    if rs.quarantined_macs:
        cmds.append({"add": {"element": {"family": B, "table": t, "name": "quarantined",
                                         "elem": sorted(set(rs.quarantined_macs))}}})  # fmt: skip
    return cmds


def _inet_table(rs: Ruleset) -> list[dict]:
    t, F = rs.table, "inet"
    established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
    cmds = [
        {"add": {"map": {"family": F, "table": t, "name": "zone_fwd", "type": "ifname", "map": "verdict"}}},
        {"add": {"map": {"family": F, "table": t, "name": "zone_host", "type": "ifname", "map": "verdict"}}},
        {"add": {"set": {"family": F, "table": t, "name": "zone_bridges", "type": "ifname"}}},
        _chain(F, t, "forward", "forward", 0),
        # routed replies into a zone (the flow left the zone, allowed): marked like the host's
        # own replies, so the bridge table, which has no conntrack, lets them reach the VM
        _rule(F, t, "forward", [_match({"meta": {"key": "oifname"}}, "@zone_bridges"), established,
                                _match({"ct": {"key": "direction"}}, "reply"),
                                {"mangle": {"key": {"meta": {"key": "mark"}},
                                            "value": {"|": [{"meta": {"key": "mark"}}, HOST_REPLY_MARK]}}}]),
        _rule(F, t, "forward", [established, {"accept": None}]),
        _rule(F, t, "forward", [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@zone_fwd"}}]),
        # into a zone from anywhere else (not a reply, not a pair a rule allows): dropped
        _rule(F, t, "forward", [_match({"meta": {"key": "oifname"}}, "@zone_bridges"), {"counter": None},
                                {"drop": None}], "into zone"),  # fmt: skip
        _chain(F, t, "input", "input", 0),
        _rule(F, t, "input", [established, {"accept": None}]),
        # the host's replies into a zone: marked, so the bridge table lets them reach the VM
        _chain(F, t, "output", "output", 0),
        _rule(F, t, "output", [_match({"meta": {"key": "oifname"}}, "@zone_bridges"), established,
                               {"mangle": {"key": {"meta": {"key": "mark"}},
                                           "value": {"|": [{"meta": {"key": "mark"}}, HOST_REPLY_MARK]}}}]),
        _rule(F, t, "input", [{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@zone_host"}}]),
    ]
    fwd_elems, host_elems = [], []
    bridges = {z.bridge for z in rs.zones}
    pairs: dict[int, list[RuleSpec]] = {}
    for vm in rs.vms:
        for rule in vm.rules:
            if rule.remote_zone_bridge:
                pairs.setdefault(vm.zone_id, []).append(rule)
    for z in rs.zones:
        pairs.setdefault(z.id, []).extend(r for r in z.rules if r.remote_zone_bridge)
    for z in rs.zones:
        chain = f"zone{z.id}-fwd"
        cmds.append(_chain(F, t, chain))
        cmds.append(_rule(F, t, chain, [_match({"meta": {"key": "oifname"}}, z.bridge), {"accept": None}]))
        if z.kind == "vpn-only" and z.uplink:
            cmds.append(_rule(F, t, chain, [_match({"meta": {"key": "oifname"}}, z.uplink), {"counter": None},
                                            {"accept": None}], "vpn uplink"))  # fmt: skip
        for rule in pairs.get(z.id, []):
            if rule.direction == "out" and rule.action == "accept":
                exprs = [_match({"meta": {"key": "oifname"}}, rule.remote_zone_bridge), *_l4(rule.protocol)]
                if rule.ports and rule.protocol in ("tcp", "udp"):
                    lo, hi = rule.ports
                    exprs.append(_match(_payload(rule.protocol, "dport"), lo if lo == hi else {"range": [lo, hi]}))
                cmds.append(_rule(F, t, chain, [*exprs, {"counter": None}, {"accept": None}], _comment(rule, False)))
        cmds.append(_rule(F, t, chain, [{"counter": None}, {"drop": None}], f"zone {z.name}: default deny"))
        fwd_elems.append([z.bridge, {"jump": {"target": chain}}])
        host_elems.append([z.bridge, _host_verdict(t, z, cmds)])
    nat = [z for z in rs.zones if z.nat and z.uplink]
    if nat:  # only a zone whose policy says so is masqueraded, and only out of its uplink
        cmds.append({"add": {"chain": {"family": F, "table": t, "name": "nat", "type": "nat", "hook": "postrouting",
                                       "prio": 100, "policy": "accept"}}})  # fmt: skip
        for z in nat:
            cmds.append(_rule(F, t, "nat", [_match({"meta": {"key": "iifname"}}, z.bridge),
                                            _match({"meta": {"key": "oifname"}}, z.uplink), {"counter": None},
                                            {"masquerade": None}], f"zone {z.name}: nat"))  # fmt: skip
    if bridges:
        cmds.append({"add": {"element": {"family": F, "table": t, "name": "zone_bridges", "elem": sorted(bridges)}}})
        cmds.append({"add": {"element": {"family": F, "table": t, "name": "zone_fwd", "elem": fwd_elems}}})
        cmds.append({"add": {"element": {"family": F, "table": t, "name": "zone_host", "elem": host_elems}}})
    return cmds


def _host_verdict(t: str, z: ZoneSpec, cmds: list[dict]) -> dict:
    """What the zone's VMs may reach on the host: nothing, everything, or only its listed
    services (a chain of their own: neighbour discovery, each service, then drop)."""
    if not z.host_access:
        return {"drop": None}
    if not z.host_services:
        return {"accept": None}
    F, chain = "inet", f"zone{z.id}-host"
    cmds.append(_chain(F, t, chain))
    cmds.append(_rule(F, t, chain, [_match(_payload("icmpv6", "type"), {"set": ND_TYPES}), {"accept": None}]))
    for name, proto, port in z.host_services:
        if proto in ("icmp", "icmpv6"):
            exprs = [*_l4(proto), _match(_payload(proto, "type"), "echo-request")]
        else:
            exprs = [*_l4(proto), _match(_payload(proto, "dport"), port)]
        cmds.append(_rule(F, t, chain, [*exprs, {"counter": None}, {"accept": None}], f"host {name}"))
    cmds.append(_rule(F, t, chain, [{"counter": None}, {"drop": None}], f"zone {z.name}: host services only"))
    return {"jump": {"target": chain}}
