"""A lab for real packets: a test bridge in the host's namespace with two network
namespaces on it (veth pairs) standing in for VMs, and nftables tables of a unique name.
Everything is removed afterwards, even when the test fails. Packets stay between the
namespaces this fixture made (TEST-NET-2 and the IPv6 documentation prefix; the host is
kept from answering on the test bridge)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.core.gateways import nft

PROBE = str(Path(__file__).with_name("probe.py"))


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


@dataclass
class Guest:
    ns: str
    mac: str
    ipv4: str
    ipv6: str

    def probe(self, verb: str, addr: str, port: int | None = None) -> bool:
        argv = ["ip", "netns", "exec", self.ns, sys.executable, PROBE, verb, addr]
        return sh(*argv, *([str(port)] if port else []), check=False).returncode == 0


@dataclass
class Lab:
    bridge: str
    a: Guest
    b: Guest
    c: Guest  # the VPN endpoint of vpn-only tests
    ports: dict  # guest side -> its veth on the bridge


@pytest.fixture
def nft_table(settings):
    """A table name of this test only (in the bridge and inet families), removed at the end;
    the services use it instead of the production name."""
    name = f"pfw_{uuid.uuid4().hex[:8]}"
    settings.NETWORK_NFT_TABLE = name
    yield name
    nft.delete_tables(name)


@pytest.fixture
def lab():
    tag = uuid.uuid4().hex[:6]
    bridge, made_ns, made_links = f"tbr{tag}", [], []
    six = f"2001:db8:{tag[:4]}"
    servers = []
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        made_links.append(bridge)
        # the host never answers ARP on the test bridge (its own addresses stay out of the lab)
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/arp_ignore").write_text("8")
        Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6").write_text("1")
        sh("ip", "link", "set", bridge, "up")
        guests = []
        ports = {}
        for i, side in enumerate("abc", start=1):
            ns, host_end = f"pns-{tag}-{side}", f"tv{tag}{side}"
            sh("ip", "netns", "add", ns)
            made_ns.append(ns)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            made_links.append(host_end)
            ports[side] = host_end
            sh("ip", "link", "set", host_end, "master", bridge, "up")
            run = ["ip", "netns", "exec", ns]
            sh(*run, "ip", "link", "set", "lo", "up")
            sh(*run, "ip", "addr", "add", f"198.51.100.{i}/24", "dev", "eth0")
            sh(*run, "ip", "addr", "add", f"{six}::{i}/64", "dev", "eth0", "nodad")
            sh(*run, "ip", "link", "set", "eth0", "up")
            mac = sh(*run, "cat", "/sys/class/net/eth0/address").stdout.strip()
            guests.append(Guest(ns=ns, mac=mac, ipv4=f"198.51.100.{i}", ipv6=f"{six}::{i}"))
        a, b, c = guests
        servers = [subprocess.Popen(["ip", "netns", "exec", g.ns, sys.executable, PROBE, "serve", "8080", "9090"],
                                    stdout=subprocess.PIPE, text=True) for g in (b, c)]  # fmt: skip
        assert all(s.stdout.readline().strip() == "ready" for s in servers)
        yield Lab(bridge=bridge, a=a, b=b, c=c, ports=ports)
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
        for ns in made_ns:
            sh("ip", "netns", "del", ns, check=False)
        for link in reversed(made_links):
            sh("ip", "link", "del", link, check=False)
