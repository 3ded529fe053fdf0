"""The firewall benchmark compares our apply with `nft -f` of the same ruleset written by hand
(tests/bench/bench_firewall.py): that comparison only means something while both list the same.
A compiler change that the hand-written side does not follow fails here, not silently in the
benchmark's report."""

from __future__ import annotations

import subprocess
import uuid

from apps.core.gateways import nft
from apps.network.compiler import compile_ruleset
from tests.bench import bench_firewall


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def test_the_benchmarks_hand_written_ruleset_is_the_compilers():
    tag = uuid.uuid4().hex[:6]
    ns, table, bridge = f"pbr-{tag}", f"pfw_br_{tag}", f"br{tag}"
    _sh("ip", "netns", "add", ns)  # its own namespace: nothing of the host's ruleset is touched
    try:
        _sh("ip", "netns", "exec", ns, "ip", "link", "add", bridge, "type", "bridge")
        rs = bench_firewall._ruleset(table, bridge, ("52:54:00:aa:00:01",), vms=3)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=bench_firewall._by_hand(table, rs),
                       check=True, capture_output=True, text=True, timeout=30)  # fmt: skip
        by_hand = _sh("ip", "netns", "exec", ns, "nft", "list", "ruleset")
        nft.delete_tables(table, netns=ns)
        nft.load(compile_ruleset(rs), netns=ns)
        assert _sh("ip", "netns", "exec", ns, "nft", "list", "ruleset") == by_hand
    finally:
        _sh("ip", "netns", "del", ns)
