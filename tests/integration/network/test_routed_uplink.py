"""Routed traffic of a zone, with real packets: a router namespace stands in for the host (its
own forwarding switch and nftables, so the machine's own forwarding and ruleset are never
touched) with the zone bridge, a VM stand-in on it, a separate uplink (a veth whose peer
namespace is the VPN endpoint) and another routed interface (a namespace the zone must not
reach). Addresses are documentation prefixes inside these namespaces only."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

from apps.core.gateways import nft
from apps.network.compiler import Ruleset, VmSpec, ZoneSpec, compile_ruleset

from .conftest import PROBE, sh

VM_ADDR, HOST_ZONE_ADDR = "203.0.113.10", "203.0.113.1"
UPLINK_ADDR, ENDPOINT = "192.0.2.1", "192.0.2.2"
OTHER = "198.51.100.2"


@dataclass
class Router:
    ns: str  # the "host": zone bridge zbr, uplink up0, another interface ot0
    vm: str
    vm_mac: str

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.vm, *argv, check=check)

    def probe(self, verb: str, addr: str, port: int) -> bool:
        return self.run(sys.executable, PROBE, verb, addr, str(port), check=False).returncode == 0

    def seen_as(self, addr: str, port: int) -> str:
        """The source address the peer saw for a datagram of the VM's ("" when none came back)."""
        out = self.run(sys.executable, PROBE, "whoami", addr, str(port), check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    def load(self, *, nat: bool) -> None:
        zone = ZoneSpec(id=1, name="vpn", kind="vpn-only", bridge="zbr", policy_out="accept", uplink="up0", nat=nat)
        rs = Ruleset(table="portal_fw", zones=[zone], vms=[VmSpec(id=1, name="vm", zone_id=1, macs=(self.vm_mac,))],
                     match_bridge_name=nft.bridge_name_match_supported())  # fmt: skip
        nft.load(compile_ruleset(rs), netns=self.ns)


@pytest.fixture(scope="module")
def router():
    tag = uuid.uuid4().hex[:6]
    r, vm, endpoint, other = (f"rt-{tag}-{x}" for x in ("host", "vm", "vpn", "other"))
    made, servers = [], []
    try:
        for ns in (r, vm, endpoint, other):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # this namespace's own switch
        sh("ip", "-n", r, "link", "add", "zbr", "type", "bridge")
        sh("ip", "-n", r, "addr", "add", f"{HOST_ZONE_ADDR}/24", "dev", "zbr")
        sh("ip", "-n", r, "link", "set", "zbr", "up")
        for port, peer, host_addr, peer_addr, gateway in (
            ("vz", vm, None, f"{VM_ADDR}/24", HOST_ZONE_ADDR),
            ("up0", endpoint, f"{UPLINK_ADDR}/24", f"{ENDPOINT}/24", UPLINK_ADDR),
            ("ot0", other, "198.51.100.1/24", f"{OTHER}/24", "198.51.100.1"),
        ):
            sh("ip", "-n", r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", peer)
            if host_addr:
                sh("ip", "-n", r, "addr", "add", host_addr, "dev", port)
            else:
                sh("ip", "-n", r, "link", "set", port, "master", "zbr")
            sh("ip", "-n", r, "link", "set", port, "up")
            sh("ip", "-n", peer, "addr", "add", peer_addr, "dev", "eth0")
            sh("ip", "-n", peer, "link", "set", "eth0", "up")
            # the VM's default route, and the way back to the zone (so without NAT replies return)
            sh("ip", "-n", peer, "route", "add", "default" if peer == vm else "203.0.113.0/24", "via", gateway)
        mac = sh("ip", "netns", "exec", vm, "cat", "/sys/class/net/eth0/address").stdout.strip()
        servers = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE, "serve", "8080", "9090"],
                                    stdout=subprocess.PIPE, text=True) for ns in (endpoint, other)]  # fmt: skip
        assert all(s.stdout.readline().strip() == "ready" for s in servers)
        yield Router(ns=r, vm=vm, vm_mac=mac)
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
        for ns in made:  # a namespace's links, bridge and tables go with it
            sh("ip", "netns", "del", ns, check=False)


def test_routed_vpn_only_traffic_leaves_only_by_its_uplink_and_is_not_masqueraded(router):
    nft.delete_tables("portal_fw", netns=router.ns)
    # without our tables both routed peers answer, the endpoint sees the VM's own address
    assert router.probe("tcp", OTHER, 8080) and router.seen_as(ENDPOINT, 9090) == VM_ADDR
    router.load(nat=False)
    assert router.probe("tcp", ENDPOINT, 8080) and router.probe("udp", ENDPOINT, 9090)
    assert router.seen_as(ENDPOINT, 9090) == VM_ADDR  # no NAT unless the policy says so
    assert not router.probe("tcp", OTHER, 8080) and not router.probe("udp", OTHER, 9090)
    assert not router.probe("tcp", HOST_ZONE_ADDR, 22)  # nor the host (vpn-only: no host access)
    listing = sh("ip", "netns", "exec", router.ns, "nft", "list", "table", "inet", "portal_fw").stdout
    assert "masquerade" not in listing


def test_nat_masquerades_out_of_the_uplink_only(router):
    router.load(nat=True)
    assert router.seen_as(ENDPOINT, 9090) == UPLINK_ADDR
    assert router.probe("tcp", ENDPOINT, 8080)
    assert not router.probe("tcp", OTHER, 8080)  # NAT opens no other way out
    router.load(nat=False)  # switched off again: the endpoint sees the VM itself
    assert router.seen_as(ENDPOINT, 9090) == VM_ADDR

