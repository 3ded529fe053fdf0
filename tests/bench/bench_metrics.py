"""One /metrics scrape (the database collectors for every VM, pool, job and alert, plus the
libvirt bulk statistics call) over 1,000 defined domains on one host, against the bare
getAllDomainStats call it needs, in the same run.

Target: at most 1.5x the bare call, and exactly one libvirt statistics call per host per
scrape (the cache is set to 0 s here so every scrape reads libvirt). Defines 1,000 small
domains (one sparse disk each) on qemu:///system in a temporary pool; removes them."""

from __future__ import annotations

import statistics
import time

import libvirt
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.bench._scratch import remove_scratch, scratch_pool

VMS = 1000
ROUNDS = 7


def run(args) -> dict:
    from apps.core.gateways import libvirt as gw
    from apps.core.gateways.libvirt.xml import domain_xml
    from apps.core.models import Host
    from apps.monitoring import metrics
    from apps.vms.services import inventory_sync

    vms = max(1, int(VMS * args.scale))
    uri = settings.LIBVIRT_URI
    settings.METRICS_LIBVIRT_CACHE_SECONDS = 0  # every scrape pays for its libvirt call
    tag, pool_name, pool_dir = scratch_pool()
    conn = libvirt.open(uri)
    names: list[str] = []
    host = None
    try:
        for i in range(vms):
            path = pool_dir / f"m{i:04d}.qcow2"
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            name = f"bench-{tag}-{i:04d}"
            conn.defineXML(domain_xml(name=name, memory_mib=64, vcpus=1, disk_paths=[str(path)], networks=[]))
            names.append(name)
        gw.pool_ensure_dir(uri, pool_name, str(pool_dir))
        Host.objects.exclude(uri=uri).delete()
        host = Host.objects.create(name=f"bench-{tag}", uri=uri)
        inventory_sync(host)  # the VM rows the database collectors read
        metrics.scrape()  # warm-up: connection, first queries
        bare, scrape, queries, reads = [], [], [], []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            listed = len(conn.getAllDomainStats(gw.domains._RUNTIME_STATS, 0))
            bare.append(time.perf_counter() - t)
            before = metrics.libvirt_stats.reads[host.name]
            with CaptureQueriesContext(connection) as ctx:
                t = time.perf_counter()
                body = metrics.scrape()
                scrape.append(time.perf_counter() - t)
            queries.append(len(ctx.captured_queries))
            reads.append(metrics.libvirt_stats.reads[host.name] - before)
        b, s = statistics.median(bare), statistics.median(scrape)
        return {
            "name": f"/metrics scrape, {listed} domains",
            "target": "<= 1.5",
            "ratio": s / b,
            "bare getAllDomainStats (median s)": round(b, 4),
            "scrape (median s)": round(s, 4),
            "scrape size (bytes, lines)": (len(body), body.count(b"\n")),
            "SQL queries per scrape": sorted(set(queries)),
            "libvirt statistics calls per scrape": sorted(set(reads)),
        }
    finally:
        if host is not None:
            from apps.vms.models import VirtualMachine

            VirtualMachine.objects.filter(host=host).delete()
            host.delete()
        remove_scratch(conn, pool_name, pool_dir, names)
