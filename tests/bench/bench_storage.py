"""The periodic storage check over 1,000 VMs and 10,000 volumes, against the bare libvirt
listing of the same volumes (listAllVolumes + info per volume), in the same run.

Target: the check costs at most 1.5x the bare listing, with a constant number of SQL
queries. Sets up a temporary dir pool of 10,000 tiny sparse raw volumes and 1,000
defined-but-not-running domains of 10 disks each on qemu:///system; removes them after."""

from __future__ import annotations

import shutil
import statistics
import time
import xml.etree.ElementTree as ET

import libvirt
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.bench._scratch import scratch_pool

VMS, DISKS_PER_VM = 1000, 10
ROUNDS = 3


def _domain_xml(name: str, paths: list[str]) -> str:
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "64"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    devices = ET.SubElement(dom, "devices")
    for i, path in enumerate(paths):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        ET.SubElement(disk, "source", file=path)
        ET.SubElement(disk, "target", dev=f"vd{chr(ord('a') + i)}", bus="virtio")
    return ET.tostring(dom, encoding="unicode")


def _bare_listing(uri: str) -> int:
    """What any tool must do to know every volume's size, one call after another: the baseline."""
    conn = libvirt.open(uri)
    try:
        count = 0
        for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            try:
                for vol in pool.listAllVolumes(0):
                    vol.info()
                    count += 1
            except libvirt.libvirtError:  # another process removed its test pool meanwhile
                continue
        return count
    finally:
        conn.close()


def _measure(uri: str, gw, storage_check) -> dict:
    storage_check(actor=None)  # warm-up: connection, first samples
    bare_times, check_times, serial_times, snapshot_times, queries = [], [], [], [], []
    listed = 0
    workers = settings.STORAGE_LIBVIRT_READ_WORKERS
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        listed = _bare_listing(uri)
        bare_times.append(time.perf_counter() - t0)
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            report = storage_check(actor=None)
            check_times.append(time.perf_counter() - t0)
        queries.append(len(ctx.captured_queries))
        t0 = time.perf_counter()
        gw.host_storage_snapshot(uri, workers=workers)
        snapshot_times.append(time.perf_counter() - t0)
        settings.STORAGE_LIBVIRT_READ_WORKERS = 1  # the same check reading libvirt one call at a time
        try:
            t0 = time.perf_counter()
            storage_check(actor=None)
            serial_times.append(time.perf_counter() - t0)
        finally:
            settings.STORAGE_LIBVIRT_READ_WORKERS = workers
    bare, check, serial = (statistics.median(t) for t in (bare_times, check_times, serial_times))
    return {
        "ratio": check / bare,
        "bare listing, sequential (median s)": f"{bare:.3f} ({listed} volumes, all pools of the host)",
        f"check, {workers} concurrent libvirt calls (median s)": (
            f"{check:.3f} ({report.vms} VMs, {report.pools} pools measured)"
        ),
        "of which the bulk libvirt read (median s)": f"{statistics.median(snapshot_times):.3f}",
        "check reading libvirt sequentially (median s)": f"{serial:.3f}, ratio {serial / bare:.2f}",
        "SQL queries per check": queries,
    }


def run(args) -> dict:
    from apps.core.gateways import libvirt as gw
    from apps.core.models import Host
    from apps.storage.models import UsageSample
    from apps.storage.services import storage_check
    from apps.vms.services import inventory_sync

    vms = max(1, int(VMS * args.scale))
    uri = settings.LIBVIRT_URI
    tag, pool_name, pool_dir = scratch_pool()
    conn = libvirt.open(uri)
    names: list[str] = []
    try:
        started = time.monotonic()
        paths = []
        for i in range(vms * DISKS_PER_VM):
            path = pool_dir / f"v{i:05d}.img"
            with open(path, "wb") as f:
                f.truncate(1 << 20)  # sparse: 1 MiB of capacity, nothing allocated
            paths.append(str(path))
        gw.pool_ensure_dir(uri, pool_name, str(pool_dir))
        for i in range(vms):
            name = f"bench-{tag}-{i:04d}"
            conn.defineXML(_domain_xml(name, paths[i * DISKS_PER_VM : (i + 1) * DISKS_PER_VM]))
            names.append(name)
        host = Host.objects.create(name=f"bench-{tag}", uri=uri)
        inventory_sync(host)
        print(f"set up {vms} domains and {len(paths)} volumes in {time.monotonic() - started:.1f}s", flush=True)
        result = _measure(uri, gw, storage_check)
        return {
            "name": f"storage check, {vms} VMs / {vms * DISKS_PER_VM} volumes",
            "target": "<= 1.5",
            **result,
            "usage samples written": UsageSample.objects.count(),
        }
    finally:
        for name in names:
            try:
                conn.lookupByName(name).undefine()
            except libvirt.libvirtError:
                pass
        try:
            pool = conn.storagePoolLookupByName(pool_name)
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        except libvirt.libvirtError:
            pass
        conn.close()
        shutil.rmtree(pool_dir, ignore_errors=True)
