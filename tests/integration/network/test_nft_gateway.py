"""The nft gateway and the compiler against the real kernel: our own tables only, loaded
atomically, listed back, and real packets filtered by them."""

import pytest

from apps.core.errors import InvalidInput
from apps.core.gateways import nft
from apps.network.compiler import Ruleset, RuleSpec, VmSpec, ZoneSpec, compile_ruleset


def lab_ruleset(table, lab, *, b_rules=(), quarantined=()):
    zone = ZoneSpec(id=1, name="lab", kind="untrusted", bridge=lab.bridge)
    return Ruleset(table=table, zones=[zone], quarantined_macs=list(quarantined), vms=[
        VmSpec(id=1, name="a", zone_id=1, macs=(lab.a.mac,),
               rules=(RuleSpec(id=100, direction="out", protocol="any", action="accept"),)),
        VmSpec(id=2, name="b", zone_id=1, macs=(lab.b.mac,), rules=tuple(b_rules)),
    ])  # fmt: skip


def test_packets_obey_the_rules_in_both_families(lab, nft_table):
    a, b = lab.a, lab.b
    assert a.probe("tcp", b.ipv4, 9090) and a.probe("ping", b.ipv6), "the lab must connect before any rule"
    b_rules = [
        RuleSpec(id=1, direction="in", protocol="tcp", action="accept", ports=(8080, 8080),
                 remote_cidrs=(f"{a.ipv4}/32", f"{a.ipv6}/128"), comment="web from a"),
        RuleSpec(id=2, direction="in", protocol="udp", action="accept", ports=(9000, 9100)),
        RuleSpec(id=3, direction="in", protocol="icmp", action="accept"),
        RuleSpec(id=4, direction="in", protocol="icmpv6", action="accept"),
    ]  # fmt: skip
    nft.load(compile_ruleset(lab_ruleset(nft_table, lab, b_rules=b_rules)))
    for addr in (b.ipv4, b.ipv6):
        assert a.probe("tcp", addr, 8080), f"tcp 8080 to {addr} is allowed"
        assert not a.probe("tcp", addr, 9090), f"tcp 9090 to {addr} is denied (untrusted: default drop)"
        assert a.probe("udp", addr, 9090), f"udp 9090 to {addr} is allowed"
        assert not a.probe("udp", addr, 8080), f"udp 8080 to {addr} is denied"
        assert a.probe("ping", addr), f"ping {addr} is allowed"
    # b's own traffic out is dropped by the untrusted zone's policy: only replies pass
    assert not b.probe("tcp", a.ipv4, 8080) and not b.probe("ping", a.ipv6)
    counters = nft.counters(nft_table)
    assert counters["r1"][0] > 0, counters


def test_quarantined_mac_is_cut_off(lab, nft_table):
    everything = [RuleSpec(id=1, direction="in", protocol="any", action="accept")]
    nft.load(compile_ruleset(lab_ruleset(nft_table, lab, b_rules=everything)))
    assert lab.a.probe("ping", lab.b.ipv4)
    nft.load(compile_ruleset(lab_ruleset(nft_table, lab, b_rules=everything, quarantined=[lab.b.mac])))
    assert not lab.a.probe("ping", lab.b.ipv4) and not lab.a.probe("tcp", lab.b.ipv6, 8080)


def test_an_unknown_mac_on_a_zone_bridge_is_dropped(lab, nft_table):
    if not nft.bridge_name_match_supported():
        pytest.skip("this kernel cannot match a frame's bridge (meta ibrname: no nft_meta_bridge)")
    rs = lab_ruleset(nft_table, lab, b_rules=[RuleSpec(id=1, direction="in", protocol="any", action="accept")])
    rs.match_bridge_name = True
    rs.vms = [vm for vm in rs.vms if vm.name != "a"]  # a: defined outside the portal, NICs unknown
    nft.load(compile_ruleset(rs))
    assert not lab.a.probe("ping", lab.b.ipv4)


def test_a_vpn_only_vm_reaches_only_its_uplink(lab, nft_table):
    zone = ZoneSpec(id=1, name="vpn", kind="vpn-only", bridge=lab.bridge, policy_out="accept",
                    uplink=lab.ports["c"])  # c stands in for the VPN endpoint behind the uplink
    everything = (RuleSpec(id=1, direction="in", protocol="any", action="accept"),)
    rs = Ruleset(table=nft_table, zones=[zone], vms=[
        VmSpec(id=1, name="a", zone_id=1, macs=(lab.a.mac,)),
        VmSpec(id=2, name="b", zone_id=1, macs=(lab.b.mac,), rules=everything),
    ])  # fmt: skip
    nft.load(compile_ruleset(rs))
    assert lab.a.probe("tcp", lab.c.ipv4, 8080) and lab.a.probe("udp", lab.c.ipv6, 9090)
    assert not lab.a.probe("tcp", lab.b.ipv4, 8080) and not lab.a.probe("tcp", lab.b.ipv6, 8080)


def test_a_refused_document_changes_nothing(nft_table):
    ok = compile_ruleset(Ruleset(table=nft_table, zones=[ZoneSpec(id=1, name="z", kind="untrusted", bridge="nobr0")]))
    nft.load(ok)
    before = nft.list_ruleset()
    bad = compile_ruleset(Ruleset(table=nft_table))
    bad["nftables"].append({"add": {"rule": {"family": "inet", "table": nft_table, "chain": "no-such-chain",
                                             "expr": [{"accept": None}]}}})  # fmt: skip
    with pytest.raises(InvalidInput, match="nftables refused"):
        nft.load(bad)
    assert nft.normalize(nft.list_ruleset()) == nft.normalize(before)


def test_a_batch_the_kernel_refuses_half_way_changes_nothing(nft_table):
    """No `nft -c` pass before a load: its atomicity is what keeps a bad apply harmless. The
    document deletes our tables, builds new ones, and ends with a jump loop that only the
    kernel detects (ELOOP, at the last rule): the old tables must still run, unchanged."""
    ok = compile_ruleset(Ruleset(table=nft_table, zones=[ZoneSpec(id=1, name="z", kind="untrusted", bridge="nobr2")]))
    nft.load(ok)
    before = nft.list_tables(nft_table)  # ours only: other runs change the host's ruleset meanwhile
    bad = compile_ruleset(Ruleset(table=nft_table, zones=[ZoneSpec(id=2, name="y", kind="secure", bridge="nobr3")]))
    loop = [{"add": {"chain": {"family": "inet", "table": nft_table, "name": c}}} for c in ("la", "lb")]
    loop += [{"add": {"rule": {"family": "inet", "table": nft_table, "chain": a, "expr": [{"jump": {"target": b}}]}}}
             for a, b in (("input", "la"), ("la", "lb"), ("lb", "la"))]  # fmt: skip
    bad["nftables"] += loop
    with pytest.raises(InvalidInput, match="nothing was changed"):
        nft.load(bad)
    after = nft.list_tables(nft_table)
    assert after and nft.normalize(after) == nft.normalize(before)


def test_render_predicts_the_listing_and_drift_changes_the_fingerprint(nft_table):
    doc = compile_ruleset(Ruleset(table=nft_table, zones=[ZoneSpec(id=1, name="z", kind="secure", bridge="nobr1",
                                                                   host_access=True)]))  # fmt: skip
    predicted = nft.render(doc, nft_table)
    nft.load(doc)
    assert nft.fingerprint(nft.list_tables(nft_table)) == nft.fingerprint(predicted)
    nft.load({"nftables": [{"add": {"rule": {"family": "inet", "table": nft_table, "chain": "input",
                                             "expr": [{"accept": None}]}}}]})  # fmt: skip
    assert nft.fingerprint(nft.list_tables(nft_table)) != nft.fingerprint(predicted)
    nft.delete_tables(nft_table)
    assert nft.list_tables(nft_table) == []


def test_a_zone_reaches_only_the_host_services_it_lists():
    """A host of its own (a network namespace with the zone's bridge and an address on it)
    and a guest on the bridge: with host services ssh and ping, the guest reaches the host's
    port 22 and gets a ping answered, but not port 80; without host access, nothing."""
    import subprocess
    import sys
    import uuid

    from .conftest import PROBE, Guest, sh

    tag = uuid.uuid4().hex[:6]
    hostns, guestns, bridge, table = f"phh-{tag}", f"phg-{tag}", f"hb{tag}", f"pfw_{tag}"
    server = None
    try:
        for ns in (hostns, guestns):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", hostns, "link", "add", bridge, "type", "bridge")
        sh("ip", "-n", hostns, "link", "add", f"hv{tag}", "type", "veth", "peer", "name", "eth0", "netns", guestns)
        sh("ip", "-n", hostns, "link", "set", f"hv{tag}", "master", bridge, "up")
        sh("ip", "-n", hostns, "addr", "add", "198.51.100.1/24", "dev", bridge)
        sh("ip", "-n", hostns, "link", "set", bridge, "up")
        sh("ip", "-n", guestns, "addr", "add", "198.51.100.2/24", "dev", "eth0")
        sh("ip", "-n", guestns, "link", "set", "eth0", "up")
        mac = sh("ip", "netns", "exec", guestns, "cat", "/sys/class/net/eth0/address").stdout.strip()
        guest = Guest(ns=guestns, mac=mac, ipv4="198.51.100.2", ipv6="")
        server = subprocess.Popen(["ip", "netns", "exec", hostns, sys.executable, PROBE, "serve", "22", "80"],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert server.stdout.readline().strip() == "ready"
        assert guest.probe("tcp", "198.51.100.1", 80)  # no table yet: the host answers

        def load(**zone):
            z = ZoneSpec(id=1, name="sec", kind="secure", bridge=bridge, policy_out="accept", **zone)
            vm = VmSpec(id=1, name="g", zone_id=1, macs=(mac,))
            nft.load(compile_ruleset(Ruleset(table=table, zones=[z], vms=[vm])), netns=hostns)

        load(host_access=True)  # no list: the whole host (its replies pass the VM's inbound drop)
        assert guest.probe("tcp", "198.51.100.1", 80) and guest.probe("tcp", "198.51.100.1", 22)
        load(host_access=True, host_services=(("ssh", "tcp", 22), ("ping", "icmp", 0)))
        assert guest.probe("tcp", "198.51.100.1", 22) and guest.probe("ping", "198.51.100.1")
        assert not guest.probe("tcp", "198.51.100.1", 80)
        load(host_access=False)
        assert not guest.probe("tcp", "198.51.100.1", 22) and not guest.probe("ping", "198.51.100.1")
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        for ns in (guestns, hostns):
            sh("ip", "netns", "del", ns, check=False)
