"""The state collector's periodic bulk read of a host (vms.services.inventory_sync: one
bulk libvirt read, the VM rows brought up to date) over 500 defined domains, against the
bare libvirt reads it needs (getAllDomainStats + every pool's volumes), in the same run.
Pages read the rows it writes (tests/bench/bench_pages.py), never libvirt.

Target: at most 1.5x the bare reads, with a constant number of SQL queries. Defines 500
small domains (one sparse disk each) on qemu:///system in a temporary pool; removes them."""

from __future__ import annotations

import statistics
import time

import libvirt
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.bench._scratch import remove_scratch, scratch_pool

VMS = 500
ROUNDS = 5
STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)


def _bare(conn) -> int:
    domains = conn.getAllDomainStats(STATS, 0)
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            for vol in pool.listAllVolumes(0):
                vol.info()
        except libvirt.libvirtError:  # a pool another process removed meanwhile
            continue
    return len(domains)


def run(args) -> dict:
    from apps.core.gateways import libvirt as gw
    from apps.core.gateways.libvirt import domain_xml
    from apps.core.models import Host
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    vms = max(1, int(VMS * args.scale))
    uri = settings.LIBVIRT_URI
    tag, pool_name, pool_dir = scratch_pool()
    conn = libvirt.open(uri)
    names: list[str] = []
    host = None
    try:
        for i in range(vms):
            path = pool_dir / f"d{i:04d}.qcow2"
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            name = f"bench-{tag}-{i:04d}"
            conn.defineXML(domain_xml(name=name, memory_mib=64, vcpus=1, disk_paths=[str(path)], networks=[]))
            names.append(name)
        gw.pool_ensure_dir(uri, pool_name, str(pool_dir))
        host = Host.objects.create(name=f"bench-{tag}", uri=uri)
        inventory_sync(host)  # warm-up: the connection, and the first read writes every row
        bare, portal, queries = [], [], []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            listed = _bare(conn)
            bare.append(time.perf_counter() - t)
            with CaptureQueriesContext(connection) as ctx:
                t = time.perf_counter()
                inventory_sync(host)
                portal.append(time.perf_counter() - t)
            queries.append(len(ctx.captured_queries))
        rows = VirtualMachine.objects.filter(host=host, present=True).count()
        b, p = statistics.median(bare), statistics.median(portal)
        return {
            "name": f"collector bulk read, {listed} domains",
            "target": "<= 1.5",
            "ratio": p / b,
            "bare libvirt reads (median s)": round(b, 3),
            "inventory_sync (median s)": round(p, 3),
            "VM rows kept": rows,
            "SQL queries per call": sorted(set(queries)),
        }
    finally:
        if host is not None:  # the next benchmark must not see this host's VMs
            VirtualMachine.objects.filter(host=host).delete()
            host.delete()
        remove_scratch(conn, pool_name, pool_dir, names)
