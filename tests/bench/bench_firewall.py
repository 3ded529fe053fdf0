"""The firewall for 1,000 VMs with 10 rules each: compiling the validated rules to nftables
JSON and loading them (one `nft -j -f` transaction, as `nft.load` does) against `nft -f` of the same ruleset
written by hand in nft syntax, in the same run; then the UDP packet rate between two
namespaces through a bridge with and without the table (the per-packet lookup is a verdict
map keyed by MAC, so its cost must not grow with the number of VMs).

Target: apply at most 2x the hand-written load. Everything happens in network namespaces
of this run (removed at the end): the host's own ruleset is never touched."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

VMS, RULES, ROUNDS = 1000, 10, 3
PROBE = str(Path(__file__).resolve().parents[1] / "integration" / "network" / "probe.py")


def sh(*argv, check=True, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=check, **kw)


def _ruleset(table: str, bridge: str, extra_macs: tuple[str, ...] = ()):
    from apps.network.compiler import Ruleset, RuleSpec, VmSpec, ZoneSpec

    zones = [ZoneSpec(id=z, name=f"z{z}", kind="untrusted", bridge=bridge if z == 1 else f"zb{z}")
             for z in (1, 2, 3, 4)]
    vms = []
    for i in range(VMS):
        rules = tuple(RuleSpec(id=i * RULES + k, direction="in" if k % 2 else "out", protocol="tcp" if k % 3 else "udp",
                               action="accept", ports=(1000 + k, 1000 + k), remote_cidrs=(f"10.{k}.0.0/16",))
                      for k in range(RULES))  # fmt: skip
        mac = f"52:54:00:{i >> 8 & 255:02x}:{i & 255:02x}:01"
        vms.append(VmSpec(id=i + 1, name=f"vm{i}", zone_id=1 + i % 4, macs=(mac,), rules=rules))
    for j, mac in enumerate(extra_macs):
        vms.append(VmSpec(id=VMS + 1 + j, name=f"lab{j}", zone_id=1, macs=(mac,), rules=(
            RuleSpec(id=900000 + j, direction="in", protocol="any", action="accept"),
            RuleSpec(id=910000 + j, direction="out", protocol="any", action="accept"))))  # fmt: skip
    return Ruleset(table=table, zones=zones, vms=vms)


def _by_hand(table: str, rs) -> str:
    """The same tables in nft syntax, as an operator would write them."""
    out = [f"table bridge {table} {{", "  set quarantined { type ether_addr; }",
           "  map vm_out { type ether_addr : verdict; }", "  map vm_in { type ether_addr : verdict; }",
           "  set zone_bridges { type ifname; }"]  # fmt: skip
    for name, hook, prio, end, vmap in (("fwd_out", "forward", -200, "saddr", "vm_out"),
                                        ("fwd_in", "forward", -190, "daddr", "vm_in"),
                                        ("host_in", "input", -200, "saddr", "vm_out"),
                                        ("host_out", "output", -190, "daddr", "vm_in")):  # fmt: skip
        out += [f"  chain {name} {{", f"    type filter hook {hook} priority {prio}; policy accept;",
                "    ether saddr @quarantined counter drop", "    ether daddr @quarantined counter drop",
                "    ether type arp accept",
                "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert }"
                " accept",
                f"    ether {end} vmap @{vmap}", "  }"]  # fmt: skip
    for z in rs.zones:
        out += [f"  chain zone{z.id}-in {{ }}", f"  chain zone{z.id}-out {{ }}"]
    for vm in rs.vms:
        for d in ("in", "out"):
            out.append(f"  chain vm{vm.id}-{d} {{")
            for r in vm.rules:
                end = "saddr" if d == "in" else "daddr"
                net = f"ip {end} {r.remote_cidrs[0]} " if r.remote_cidrs else ""
                proto = "" if r.protocol == "any" else f"meta l4proto {r.protocol} "
                if r.direction == d:
                    port = f"{r.protocol} dport {r.ports[0]} " if r.ports else ""
                    out.append(f"    {net}{proto}{port}counter {r.action}")
                else:
                    port = f"{r.protocol} sport {r.ports[0]} " if r.ports else ""
                    flags = "tcp flags & (syn|ack) != syn " if r.protocol == "tcp" else ""
                    out.append(f"    {net}{proto}{port}{flags}counter accept")
            out += [f"    jump zone{vm.zone_id}-{d}", "    counter drop", "  }"]
    out += ["}"]
    for d in ("out", "in"):
        elems = ", ".join(f"{m} : jump vm{vm.id}-{d}" for vm in rs.vms for m in vm.macs)
        out.append(f"add element bridge {table} vm_{d} {{ {elems} }}")
    out.append(f"add element bridge {table} zone_bridges {{ {', '.join(sorted({z.bridge for z in rs.zones}))} }}")
    return "\n".join(out) + "\n"


def _rate(ns_from: str, ns_to: str, addr: str, seconds: float = 2.0) -> float:
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


def run(args) -> dict:
    from apps.core.gateways import nft
    from apps.network.compiler import compile_ruleset

    tag = uuid.uuid4().hex[:6]
    hostns, table, bridge = f"pbh-{tag}", f"pfw_bench_{tag}", f"bb{tag}"
    guests = [f"pbg-{tag}-{s}" for s in "ab"]
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
        ours, theirs, parts = [], [], []
        for _ in range(ROUNDS):
            nft.delete_tables(table, netns=hostns)
            t = time.perf_counter()
            sh("ip", "netns", "exec", hostns, "nft", "-f", "-", input=text)
            theirs.append(time.perf_counter() - t)
            nft.delete_tables(table, netns=hostns)
            t0 = time.perf_counter()
            doc = compile_ruleset(rs)
            t1 = time.perf_counter()
            body = orjson.dumps(doc)
            t2 = time.perf_counter()
            nft.load(doc, netns=hostns)  # what the services call (it serialises the document itself)
            t3 = time.perf_counter()
            ours.append(t1 - t0 + t3 - t2)
            parts.append((t1 - t0, t2 - t1, t3 - t2, len(body)))
        rate_with = _rate(guests[0], guests[1], "198.51.100.2")
        nft.delete_tables(table, netns=hostns)
        rate_without = _rate(guests[0], guests[1], "198.51.100.2")
        o, h = statistics.median(ours), statistics.median(theirs)
        return {
            "name": f"firewall apply, {VMS} VMs x {RULES} rules",
            "target": "<= 2",
            "ratio": o / h,
            "compile + nft.load (median s)": round(o, 3),
            "nft -f by hand (median s)": round(h, 3),
            "of ours: compile / JSON encoding / nft.load incl. encoding (median s)": [
                round(statistics.median(p[i] for p in parts), 3) for i in range(3)],
            "JSON document (MB)": round(parts[0][3] / 1e6, 1),
            "load only (nft.load) vs by hand": round(statistics.median(p[2] for p in parts) / h, 2),
            "UDP pkt/s through the bridge with our table": round(rate_with),
            "UDP pkt/s without": round(rate_without),
        }
    finally:
        for ns in [*guests, hostns]:
            sh("ip", "netns", "del", ns, check=False)
