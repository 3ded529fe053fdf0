"""The firewall for 1,000 VMs with 10 rules each, against `nft -f` of the same ruleset written
by hand in nft syntax, in the same run (the run checks that both list the same):

- an operator's apply: the preview before it checked the document (`nft -c`, beside its
  render in a scratch namespace), so the apply compiles, finds the same bytes and loads them
  in one `nft -j -f` transaction (the ratio);
- an apply nobody previewed (and the system's own loads): compile, `nft -c`, load;
- the UDP packet rate between two namespaces through the bridge with no table of ours, with
  a table of the two lab VMs only, and with the 1,002 VMs' table: the per-packet lookup is a
  verdict map keyed by MAC, so its cost must not grow with the number of VMs.

Target: apply at most 2x the hand-written load. Everything happens in network namespaces
of this run (removed at the end): the host's own ruleset is never touched."""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

VMS, RULES, ROUNDS = 1000, 10, 3
PROBE = str(Path(__file__).resolve().parents[1] / "integration" / "network" / "probe.py")


def sh(*argv, check=True, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=check, **kw)


def _ruleset(table: str, bridge: str, extra_macs: tuple[str, ...] = (), vms: int = VMS):
    from apps.network.compiler import Ruleset, RuleSpec, VmSpec, ZoneSpec

    zones = [ZoneSpec(id=z, name=f"z{z}", kind="untrusted", bridge=bridge if z == 1 else f"zb{z}")
             for z in (1, 2, 3, 4)]
    specs = []
    for i in range(vms):
        rules = tuple(RuleSpec(id=i * RULES + k, direction="in" if k % 2 else "out", protocol="tcp" if k % 3 else "udp",
                               action="accept", ports=(1000 + k, 1000 + k), remote_cidrs=(f"10.{k}.0.0/16",))
                      for k in range(RULES))  # fmt: skip
        mac = f"52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:01"
        specs.append(VmSpec(id=i + 1, name=f"vm{i}", zone_id=1 + i % 4, macs=(mac,), rules=rules))
    for j, mac in enumerate(extra_macs):
        specs.append(VmSpec(id=VMS + 1 + j, name=f"lab{j}", zone_id=1, macs=(mac,), rules=(
            RuleSpec(id=900000 + j, direction="in", protocol="any", action="accept"),
            RuleSpec(id=910000 + j, direction="out", protocol="any", action="accept"))))  # fmt: skip
    return Ruleset(table=table, zones=zones, vms=specs)


def _by_hand(table: str, rs) -> str:
    """The same tables in nft syntax, as an operator would write them (the run checks that
    both list the same: rules, comments, sets and maps)."""
    from apps.network.compiler import HOST_REPLY_MARK, ICMP_REPLY_TYPES, ICMPV6_REPLY_TYPES

    nd = "{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }"
    out = [f"table bridge {table} {{", "  set quarantined { type ether_addr; }",
           "  map vm_out { type ether_addr : verdict; }", "  map vm_in { type ether_addr : verdict; }",
           "  set zone_bridges { type ifname; }"]  # fmt: skip
    for name, hook, prio, end, vmap in (("fwd_out", "forward", -200, "saddr", "vm_out"),
                                        ("fwd_in", "forward", -190, "daddr", "vm_in"),
                                        ("host_in", "input", -200, "saddr", "vm_out"),
                                        ("host_out", "output", -190, "daddr", "vm_in")):  # fmt: skip
        out += [f"  chain {name} {{", f"    type filter hook {hook} priority {prio}; policy accept;",
                '    ether saddr @quarantined counter drop comment "quarantine"',
                '    ether daddr @quarantined counter drop comment "quarantine"', "    ether type arp accept"]
        if hook == "output":
            mark = f"{HOST_REPLY_MARK:#010x}"
            out.append(f'    meta mark & {mark} == {mark} accept comment "host replies"')
        out += [f"    icmpv6 type {nd} accept", f"    ether {end} vmap @{vmap}", "  }"]
    for z in rs.zones:
        out += [f"  chain zone{z.id}-in {{ }}", f"  chain zone{z.id}-out {{ }}"]
    for vm in rs.vms:
        for d in ("in", "out"):
            out.append(f"  chain vm{vm.id}-{d} {{")
            for r in vm.rules:
                end = "saddr" if d == "in" else "daddr"
                net = f"ip {end} {r.remote_cidrs[0]} " if r.remote_cidrs else ""
                if r.direction == d:
                    proto = "" if r.protocol == "any" else f"meta l4proto {r.protocol} "
                    port = f"{r.protocol} dport {r.ports[0]} " if r.ports else ""
                    out.append(f'    {net}{proto}{port}counter {r.action} comment "r{r.id}"')
                elif r.protocol == "any":
                    for mirror in ("meta l4proto tcp tcp flags & (syn|ack) != syn", "meta l4proto udp",
                                   f"meta l4proto icmp icmp type {{ {', '.join(ICMP_REPLY_TYPES)} }}",
                                   f"meta l4proto ipv6-icmp icmpv6 type {{ {', '.join(ICMPV6_REPLY_TYPES)} }}"):
                        out.append(f'    {net}{mirror} counter accept comment "r{r.id} reply"')
                else:
                    port = f"{r.protocol} sport {r.ports[0]} " if r.ports else ""
                    flags = "tcp flags & (syn|ack) != syn " if r.protocol == "tcp" else ""
                    match = f"{net}meta l4proto {r.protocol} {port}{flags}"
                    out.append(f'    {match}counter accept comment "r{r.id} reply"')
            out += [f"    jump zone{vm.zone_id}-{d}", f'    counter drop comment "policy z{vm.zone_id}"', "  }"]
    out += ["}", f"table inet {table} {{", "  map zone_fwd { type ifname : verdict; }",
            "  map zone_host { type ifname : verdict; }", "  set zone_bridges { type ifname; }",
            "  chain forward {", "    type filter hook forward priority 0; policy accept;",
            "    oifname @zone_bridges ct state established,related ct direction reply "
            f"meta mark set meta mark | {HOST_REPLY_MARK:#010x}",
            "    ct state established,related accept", "    iifname vmap @zone_fwd",
            '    oifname @zone_bridges counter drop comment "into zone"', "  }",
            "  chain input {", "    type filter hook input priority 0; policy accept;",
            "    ct state established,related accept", "    iifname vmap @zone_host", "  }",
            "  chain output {", "    type filter hook output priority 0; policy accept;",
            f"    oifname @zone_bridges ct state established,related meta mark set meta mark | {HOST_REPLY_MARK:#010x}",
            "  }"]  # fmt: skip
    for z in rs.zones:
        out += [f"  chain zone{z.id}-fwd {{", f'    oifname "{z.bridge}" accept',
                f'    counter drop comment "zone {z.name}: default deny"', "  }"]
    out += ["}"]
    for d in ("out", "in"):
        elems = ", ".join(f"{m} : jump vm{vm.id}-{d}" for vm in rs.vms for m in vm.macs)
        out.append(f"add element bridge {table} vm_{d} {{ {elems} }}")
    bridges = sorted({z.bridge for z in rs.zones})
    out.append(f"add element bridge {table} zone_bridges {{ {', '.join(bridges)} }}")
    out.append(f"add element inet {table} zone_bridges {{ {', '.join(bridges)} }}")
    jumps = ", ".join(f"{z.bridge} : jump zone{z.id}-fwd" for z in rs.zones)
    out.append(f"add element inet {table} zone_fwd {{ {jumps} }}")
    out.append(f"add element inet {table} zone_host {{ {', '.join(f'{z.bridge} : drop' for z in rs.zones)} }}")
    return "\n".join(out) + "\n"


def _rate(ns_from: str, ns_to: str, addr: str, seconds: float = 1.5) -> float:
    """UDP datagrams per second that arrive (a Python sender and a counting receiver)."""
    recv = subprocess.Popen(["ip", "netns", "exec", ns_to, sys.executable, "-c",
                             "import socket,time,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                             "s.bind(('0.0.0.0',5555));s.settimeout(1);print('ready',flush=True);n=0\n"
                             "try:\n while True:\n  s.recv(64);n+=1\nexcept OSError:\n print(n)"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    recv.stdout.readline()
    sh("ip", "netns", "exec", ns_from, sys.executable, "-c",
       f"import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);end=time.time()+{seconds}\n"
       f"while time.time()<end:\n s.sendto(b'x'*32,('{addr}',5555))")  # fmt: skip
    return int(recv.communicate(timeout=30)[0].strip() or 0) / seconds


def _cpu() -> float:
    """CPU seconds of this process and of the commands it ran (nft): steadier than the wall
    clock on a machine that other work shares."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(args) -> dict:
    from apps.core.gateways import nft
    from apps.network.compiler import compile_ruleset

    tag = uuid.uuid4().hex[:6]
    hostns, table, bridge = f"pbh-{tag}", f"pfw_bench_{tag}", f"bb{tag}"
    guests = [f"pbg-{tag}-{s}" for s in "ab"]

    def by_hand(text: str) -> None:  # from a file, as a person would load it
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
            f.write(text)
            f.flush()
            sh("ip", "netns", "exec", hostns, "nft", "-f", f.name)

    try:
        sh("ip", "netns", "add", hostns)
        sh("ip", "netns", "exec", hostns, "ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "netns", "exec", hostns, "ip", "link", "set", bridge, "up")
        macs = []
        for i, ns in enumerate(guests, start=1):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", hostns, "link", "add", f"bv{tag}{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", hostns, "link", "set", f"bv{tag}{i}", "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"198.51.100.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            macs.append(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/address").stdout.strip())
        rs = _ruleset(table, bridge, tuple(macs))
        text = _by_hand(table, rs)
        # the same ruleset: what the kernel lists after either load is the same
        by_hand(text)
        hand_fp = nft.fingerprint(nft.list_tables(table, netns=hostns))
        nft.delete_tables(table, netns=hostns)
        nft.load(compile_ruleset(rs), netns=hostns)
        same = nft.fingerprint(nft.list_tables(table, netns=hostns)) == hand_fp

        theirs, checked, previewed, previews, parts = [], [], [], [], []
        cpu = {"hand": [], "previewed": [], "checked": []}
        for _ in range(ROUNDS):
            nft.delete_tables(table, netns=hostns)
            t, c = time.perf_counter(), _cpu()
            by_hand(text)
            theirs.append(time.perf_counter() - t)
            cpu["hand"].append(_cpu() - c)
            # an apply nobody previewed (or the system's own): compile, `nft -c`, load
            nft.delete_tables(table, netns=hostns)
            t0, c = time.perf_counter(), _cpu()
            body = orjson.dumps(compile_ruleset(rs))
            t1 = time.perf_counter()
            nft.check(body, netns=hostns)
            t2 = time.perf_counter()
            nft.load(body, netns=hostns)
            t3 = time.perf_counter()
            checked.append(t3 - t0)
            cpu["checked"].append(_cpu() - c)
            parts.append((t1 - t0, t2 - t1, t3 - t2, len(body)))
            # an operator's apply: the preview checked the document (`nft -c`, beside its
            # render in a scratch namespace); the apply compiles again, finds the same bytes
            # (digest) and loads them
            nft.delete_tables(table, netns=hostns)
            t0 = time.perf_counter()
            nft.check_and_render(orjson.dumps(compile_ruleset(rs)), table, netns=hostns)
            t1, c = time.perf_counter(), _cpu()
            body = orjson.dumps(compile_ruleset(rs))
            nft.digest(body)
            nft.load(body, netns=hostns)
            t2 = time.perf_counter()
            cpu["previewed"].append(_cpu() - c)
            previews.append(t1 - t0)
            previewed.append(t2 - t1)

        # packets: none of ours, the two lab VMs only, then the 1,000 VMs' table (3 rounds each)
        small = _ruleset(table, bridge, tuple(macs), vms=0)
        rates = {"none": [], "small": [], "large": []}
        for _ in range(3):
            for kind in ("none", "small", "large"):
                nft.delete_tables(table, netns=hostns)
                if kind != "none":
                    nft.load(compile_ruleset(small if kind == "small" else rs), netns=hostns)
                rates[kind].append(_rate(guests[0], guests[1], "198.51.100.2"))
        h, o_checked, o_prev = (statistics.median(x) for x in (theirs, checked, previewed))
        rate = {k: statistics.median(v) for k, v in rates.items()}
        return {
            "name": f"firewall apply, {VMS} VMs x {RULES} rules",
            "target": "<= 2",
            "ratio": o_prev / h,
            "same ruleset as by hand (listings equal)": same,
            "nft -f by hand (median s)": round(h, 3),
            "apply after its preview: compile + load (median s)": round(o_prev, 3),
            "the preview: compile + nft -c beside the scratch render (median s)": round(statistics.median(previews), 3),
            "apply with its own nft -c (median s; ratio)": [round(o_checked, 3), round(o_checked / h, 2)],
            "  of which compile / nft -c / load (median s)": [
                round(statistics.median(p[i] for p in parts), 3) for i in range(3)],
            "CPU s (ours and nft's, median): by hand / apply after preview / apply with nft -c": [
                round(statistics.median(cpu[k]), 3) for k in ("hand", "previewed", "checked")],
            "CPU ratio: apply after preview / with nft -c": [
                round(statistics.median(cpu[k]) / statistics.median(cpu["hand"]), 2) for k in ("previewed", "checked")],
            "JSON document (MB)": round(parts[0][3] / 1e6, 1),
            "UDP pkt/s through the bridge: no table / 2 VMs / 1,002 VMs (median of 3)": [
                round(rate["none"]), round(rate["small"]), round(rate["large"])],
            "1,002 VMs vs 2 VMs (pkt/s ratio)": round(rate["large"] / rate["small"], 2),
        }
    finally:
        for ns in [*guests, hostns]:
            sh("ip", "netns", "del", ns, check=False)
