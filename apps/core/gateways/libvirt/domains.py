"""Domains (VMs): bulk and single reads, lifecycle, and their disks.

`domain_disks_live` is what a running domain uses (every file of every disk's chain, with
capacity and allocation); `domain_disks_defined` the disks of its persistent definition.
The `domain_disk_*` calls change one disk of a domain.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from apps.core.errors import GatewayError, NotFound

from . import connection, storage
from .storage import VolumeInfo
from .xml import disk_element, disk_with_source, disk_xml, domain_devices_parse, domain_security_parse, to_string

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
_STORAGE_STATS = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BLOCK


@dataclass(frozen=True)
class DiskInfo:
    target: str
    path: str
    capacity: int = 0
    allocation: int = 0
    physical: int = 0


@dataclass(frozen=True)
class InterfaceInfo:
    mac: str
    network: str
    device: str = ""
    link: str = "up"


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: str
    vcpus: int
    memory_kib: int
    disks: tuple[DiskInfo, ...] = ()
    interfaces: tuple[InterfaceInfo, ...] = ()
    persistent: bool = True


@dataclass(frozen=True)
class DomainDisks:
    """A domain's disks as storage sees them: every file of every disk's chain (external
    snapshot overlays and their backing files included) with capacity and allocation."""

    uuid: str
    name: str
    state: str
    disks: tuple[DiskInfo, ...] = ()

    @property
    def provisioned(self) -> int:
        """Virtual capacity of the disks the guest sees (top of each chain)."""
        seen: set[str] = set()
        total = 0
        for d in self.disks:
            if d.target not in seen:
                seen.add(d.target)
                total += d.capacity
        return total

    @property
    def allocation(self) -> int:
        """Physical bytes of every distinct file, snapshots included."""
        by_path = {d.path: d.allocation for d in self.disks if d.path}
        return sum(by_path.values())


# ---------------------------------------------------------------- reads on an open connection (package-internal)


def _state_name(stats: dict) -> str:
    return _STATES.get(stats.get("state.state", 0), "unknown")


def _domain_from_stats(dom, stats: dict, volumes_by_path: dict[str, VolumeInfo]) -> DomainInfo:
    disks = []
    for i in range(stats.get("block.count", 0)):
        path = stats.get(f"block.{i}.path", "")
        vol = volumes_by_path.get(path)
        disks.append(
            DiskInfo(
                target=stats.get(f"block.{i}.name", ""),
                path=path,
                capacity=stats.get(f"block.{i}.capacity") or (vol.capacity if vol else 0),
                allocation=stats.get(f"block.{i}.allocation") or (vol.allocation if vol else 0),
                physical=stats.get(f"block.{i}.physical") or (vol.allocation if vol else 0),
            )
        )
    ifaces = tuple(
        InterfaceInfo(mac="", network="", device=stats.get(f"net.{i}.name", ""))
        for i in range(stats.get("net.count", 0))
    )
    memory = stats.get("balloon.maximum") or stats.get("balloon.current") or 0
    return DomainInfo(
        uuid=dom.UUIDString(),
        name=dom.name(),
        state=_state_name(stats),
        vcpus=stats.get("vcpu.maximum") or stats.get("vcpu.current") or 0,
        memory_kib=memory,
        disks=tuple(disks),
        interfaces=ifaces,
        persistent=True,
    )


def _disks_from_stats(stats: dict, volumes_by_path: dict[str, VolumeInfo]) -> tuple[DiskInfo, ...]:
    disks = []
    for i in range(stats.get("block.count", 0)):
        path = stats.get(f"block.{i}.path", "")
        vol = volumes_by_path.get(path)
        capacity = vol.capacity if vol else stats.get(f"block.{i}.capacity", 0)
        allocation = vol.allocation if vol else stats.get(f"block.{i}.physical", 0)
        disks.append(DiskInfo(stats.get(f"block.{i}.name", ""), path, capacity, allocation, allocation))
    return tuple(disks)


def _defined_disks(dom) -> list[dict]:
    return domain_devices_parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))[0]


def _free_target(disks: list[dict]) -> str:
    used = {d["target"] for d in disks}
    return next(f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1) if f"vd{chr(c)}" not in used)


# ---------------------------------------------------------------- reads


def domain_list(uri: str) -> list[DomainInfo]:
    """Every domain of the host with state, vCPUs, memory and disks: two bulk calls."""

    def _list(conn):
        volumes_by_path = {v.path: v for v in storage._all_volumes(conn)}
        return [_domain_from_stats(dom, stats, volumes_by_path) for dom, stats in conn.getAllDomainStats(_STATS, 0)]

    return connection.call(uri, "list VMs", _list)


def domain_get(uri: str, name: str) -> DomainInfo:
    """One domain in full, interfaces (networks, MACs) and disks included."""

    def _get(conn):
        dom = conn.lookupByName(name)
        ((_, stats),) = conn.domainListGetStats([dom], _STATS, 0)
        disks_xml, ifaces_xml = domain_devices_parse(dom.XMLDesc(0))
        # only this domain's volumes: reading every volume of the host costs seconds on
        # a host with thousands of them
        paths = {d["path"] for d in disks_xml} | {
            stats.get(f"block.{i}.path", "") for i in range(stats.get("block.count", 0))
        }
        volumes_by_path = storage._volumes_at(conn, paths)
        info = _domain_from_stats(dom, stats, volumes_by_path)
        by_target = {d.target: d for d in info.disks}
        disks = []
        for d in disks_xml:
            known = by_target.get(d["target"])
            vol = volumes_by_path.get(d["path"])
            disks.append(
                known
                or DiskInfo(
                    target=d["target"],
                    path=d["path"],
                    capacity=vol.capacity if vol else 0,
                    allocation=vol.allocation if vol else 0,
                )
            )
        ifaces = tuple(InterfaceInfo(**i) for i in ifaces_xml)
        return DomainInfo(
            uuid=info.uuid,
            name=info.name,
            state=info.state,
            vcpus=info.vcpus,
            memory_kib=info.memory_kib,
            disks=tuple(disks),
            interfaces=ifaces,
            persistent=bool(dom.isPersistent()),
        )

    return connection.call(uri, name, _get)


def domain_state(uri: str, name: str) -> str:
    return connection.call(uri, name, lambda conn: _STATES.get(conn.lookupByName(name).state()[0], "unknown"))


def domain_disks_live(uri: str, name: str) -> DomainDisks:
    """One domain's disks in use, with capacity and allocation (for a single action; the
    periodic check uses host_storage_snapshot)."""

    def _read(conn):
        dom = conn.lookupByName(name)
        ((_, stats),) = conn.domainListGetStats(
            [dom], _STORAGE_STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
        )
        by_path = {}
        for i in range(stats.get("block.count", 0)):
            path = stats.get(f"block.{i}.path", "")
            if not path or path in by_path:
                continue
            try:
                vol = conn.storageVolLookupByPath(path)
            except libvirt.libvirtError:
                continue  # a disk outside any pool: its block stats are used
            _t, cap, alloc = vol.info()
            by_path[path] = VolumeInfo(vol.storagePoolLookupByVolume().name(), vol.name(), path, cap, alloc)
        return DomainDisks(dom.UUIDString(), dom.name(), _state_name(stats), _disks_from_stats(stats, by_path))

    return connection.call(uri, name, _read)


def domain_disks_defined(uri: str, name: str) -> list[dict]:
    """The disks (target, path, format) of the VM's persistent definition."""
    return connection.call(uri, name, lambda conn: _defined_disks(conn.lookupByName(name)))


# ---------------------------------------------------------------- lifecycle


def domain_define(uri: str, xml: str) -> str:
    return connection.call(uri, "define VM", lambda conn: conn.defineXML(xml).UUIDString())


def domain_undefine(uri: str, name: str) -> None:
    """Stop (if running) and remove a domain with its snapshot metadata."""

    def _undefine(conn):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM  # a UEFI guest's variables file
            | libvirt.VIR_DOMAIN_UNDEFINE_TPM  # and its vTPM's state
        )

    connection.call(uri, name, _undefine)


def domain_set_limits(
    uri: str,
    name: str,
    *,
    cpu_period_us: int | None = None,
    cpu_quota_us: int | None = None,
    memory_hard_limit_kib: int | None = None,
    iotune: dict[str, tuple[int, int]] | None = None,
) -> bool:
    """Set a domain's resource limits in its definition and, while it runs, live: vCPU
    bandwidth (setSchedulerParameters vcpu_period/vcpu_quota; quota -1 lifts it), memory
    hard limit (setMemoryParameters; -1 lifts it) and per-disk I/O (setBlockIoTune, iotune:
    {target: (total_bytes_sec, total_iops_sec)}, 0 lifts it). True when applied live."""

    def _set(conn):
        dom = conn.lookupByName(name)
        live = bool(dom.isActive())
        # one call per side: some of these refuse LIVE|CONFIG together
        for flags in ([libvirt.VIR_DOMAIN_AFFECT_LIVE] if live else []) + [libvirt.VIR_DOMAIN_AFFECT_CONFIG]:
            if cpu_quota_us is not None:
                params = {"vcpu_quota": int(cpu_quota_us)}
                if cpu_period_us:
                    params["vcpu_period"] = int(cpu_period_us)
                dom.setSchedulerParametersFlags(params, flags)
            if memory_hard_limit_kib is not None:
                dom.setMemoryParameters({"hard_limit": int(memory_hard_limit_kib)}, flags)
            for target, (bytes_sec, iops_sec) in (iotune or {}).items():
                tune = {"total_bytes_sec": int(bytes_sec), "total_iops_sec": int(iops_sec)}
                dom.setBlockIoTune(target, tune, flags)
        return live

    return connection.call(uri, name, _set)


def domain_set_resources(uri: str, name: str, *, vcpus: int | None = None, memory_kib: int | None = None) -> None:
    """Change vCPUs and memory in the domain's definition (its next start takes them)."""

    def _set(conn):
        dom = conn.lookupByName(name)
        config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if vcpus is not None:
            maximum = config | libvirt.VIR_DOMAIN_VCPU_MAXIMUM
            order = [maximum, config] if vcpus >= dom.vcpusFlags(maximum) else [config, maximum]
            for flags in order:  # the current count never above the maximum
                dom.setVcpusFlags(int(vcpus), flags)
        if memory_kib is not None:
            maximum = config | libvirt.VIR_DOMAIN_MEM_MAXIMUM
            current = int(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).findtext("memory") or 0)
            order = [maximum, config] if memory_kib >= current else [config, maximum]
            for flags in order:
                dom.setMemoryFlags(int(memory_kib), flags)

    connection.call(uri, name, _set)


def _domain_action(uri: str, name: str, action: str) -> None:
    def _act(conn):
        dom = conn.lookupByName(name)
        if action == "start":
            dom.create()
        elif action == "shutdown":
            dom.shutdown()
        elif action == "force_off":
            dom.destroy()
        elif action == "suspend":
            dom.suspend()
        elif action == "resume":
            dom.resume()
        else:
            raise ValueError(f"unknown action {action}")

    connection.call(uri, name, _act)


def domain_start(uri: str, name: str) -> None:
    _domain_action(uri, name, "start")


def domain_shutdown(uri: str, name: str) -> None:
    _domain_action(uri, name, "shutdown")


def domain_force_off(uri: str, name: str) -> None:
    _domain_action(uri, name, "force_off")


def domain_suspend(uri: str, name: str) -> None:
    _domain_action(uri, name, "suspend")


def domain_resume(uri: str, name: str) -> None:
    _domain_action(uri, name, "resume")


# ---------------------------------------------------------------- one disk of a domain


def domain_disk_next_target(uri: str, name: str) -> str:
    """The first free vdX target of the VM's persistent definition."""
    return _free_target(domain_disks_defined(uri, name))


def domain_disk_attach(uri: str, domain: str, path: str, fmt: str = "qcow2") -> str:
    """Attach a file as the domain's next virtio disk (persistently, and live when it runs).
    Returns the target device name."""

    def _attach(conn):
        dom = conn.lookupByName(domain)
        disks = _defined_disks(dom)
        for d in disks:
            if d["path"] == path:
                return d["target"]
        target = _free_target(disks)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.attachDeviceFlags(disk_xml(path, target, fmt), flags)
        return target

    return connection.call(uri, f"{domain}:{path}", _attach)


def domain_disk_attach_xml(uri: str, name: str, xml: str) -> None:
    """Add the disk to the VM's persistent definition (it appears at the next start, once
    the portal has opened it)."""
    connection.call(
        uri, name, lambda conn: conn.lookupByName(name).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    )


def domain_disk_detach(uri: str, domain: str, path: str) -> None:
    """Remove the disk of file `path` from the domain's persistent definition (the domain must be off)."""

    def _detach(conn):
        dom = conn.lookupByName(domain)
        for d in _defined_disks(dom):
            if d["path"] == path:
                xml = disk_xml(path, d["target"], d["format"] or "qcow2")
                dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                return

    connection.call(uri, f"{domain}:{path}", _detach)


def domain_disk_detach_target(uri: str, name: str, target: str) -> bool:
    """Remove disk `target` from the VM's persistent definition (whatever its source names:
    the image or the unlocked mapping). False when the VM has no such disk (already done)."""

    def _detach(conn):
        dom = conn.lookupByName(name)
        disk = disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
        if disk is None:
            return False
        dom.detachDeviceFlags(to_string(disk), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return True

    return connection.call(uri, name, _detach)


def _defined_disk(dom, name: str, target: str):
    disk = disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
    if disk is None:
        raise NotFound(f"{name} has no disk {target}.")
    return disk


def domain_disk_set_source(uri: str, name: str, target: str, source: str, *, block: bool) -> None:
    """Point the VM's persistent disk `target` at another file or block device."""

    def _set(conn):
        dom = conn.lookupByName(name)
        disk = _defined_disk(dom, name, target)
        dom.updateDeviceFlags(disk_with_source(disk, source=source, block=block), libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    connection.call(uri, name, _set)


def domain_disk_set_format(uri: str, name: str, target: str, fmt: str) -> None:
    """Set the driver type (image format) of the VM's persistent disk `target`."""

    def _set(conn):
        dom = conn.lookupByName(name)
        disk = _defined_disk(dom, name, target)
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", fmt)
        dom.updateDeviceFlags(to_string(disk), libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    connection.call(uri, name, _set)


def domain_disk_resize(uri: str, domain: str, path: str, capacity_bytes: int) -> None:
    """Grow a disk of a running guest (`blockresize`): QEMU resizes it live."""
    connection.call(
        uri,
        f"{domain}:{path}",
        lambda conn: conn.lookupByName(domain).blockResize(
            path, int(capacity_bytes), libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        ),
    )


def domain_xml_defined(uri: str, name: str) -> str:
    """The domain's persistent definition (what a restore defines again)."""
    return connection.call(uri, name, lambda conn: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def domain_xml_defined_all(uri: str) -> dict[str, str]:
    """The persistent definition of every persistent domain of the host, by UUID (one
    XMLDesc per domain; the configuration history compares them at each bulk read)."""

    def _read(conn):
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
        inactive = libvirt.VIR_DOMAIN_XML_INACTIVE
        return dict(connection.read_present(doms, lambda d: (d.UUIDString(), d.XMLDesc(inactive))))

    return connection.call(uri, "read definitions", _read)


def domain_xml_live(uri: str, name: str) -> str:
    """The domain's current definition (a running guest's disks as QEMU uses them)."""
    return connection.call(uri, name, lambda conn: conn.lookupByName(name).XMLDesc(0))


def domain_disk_commit_active(uri: str, name: str, target: str, *, timeout: float = 600) -> None:
    """Merge the active overlay of disk `target` back into its backing file and pivot the
    guest onto it (blockcommit --active --pivot); returns once the pivot is done."""

    def _start(conn):
        conn.lookupByName(name).blockCommit(target, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)

    connection.call(uri, f"{name}:{target}", _start)
    deadline = time.monotonic() + timeout

    def _pivot(conn) -> bool:
        dom = conn.lookupByName(name)
        if not dom.blockJobInfo(target, 0):
            raise GatewayError(f"The block commit of {name}:{target} stopped before it was ready.")
        try:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        except libvirt.libvirtError as exc:
            if "not ready" in (exc.get_error_message() or ""):
                return False  # QEMU is still copying: the job becomes ready when it catches up
            raise
        return True

    while not connection.call(uri, f"{name}:{target}", _pivot):
        if time.monotonic() > deadline:
            connection.call(uri, name, lambda conn: conn.lookupByName(name).blockJobAbort(target, 0))
            raise GatewayError(f"The block commit of {name}:{target} did not finish within {timeout:g} seconds.")
        time.sleep(0.1)
    while connection.call(uri, f"{name}:{target}", lambda conn: conn.lookupByName(name).blockJobInfo(target, 0)):
        if time.monotonic() > deadline:
            raise GatewayError(f"The pivot of {name}:{target} did not finish within {timeout:g} seconds.")
        time.sleep(0.05)


# ------------------------------------------------------------------ runtime statistics (metrics)


@dataclass(frozen=True)
class BlockStats:
    device: str
    read_bytes: int
    write_bytes: int
    read_requests: int
    write_requests: int


@dataclass(frozen=True)
class NetStats:
    device: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int
    tx_errors: int
    rx_drops: int
    tx_drops: int


@dataclass(frozen=True)
class DomainRuntimeStats:
    """What the metrics export of a domain: counters since the guest started (zero while off)."""

    uuid: str
    name: str
    state: str
    cpu_time_ns: int
    memory_current_kib: int
    memory_rss_kib: int
    block: tuple[BlockStats, ...]
    net: tuple[NetStats, ...]


_RUNTIME_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)


def _runtime_from_stats(dom, s: dict) -> DomainRuntimeStats:
    block = tuple(
        BlockStats(
            device=s.get(f"block.{i}.name", str(i)),
            read_bytes=s.get(f"block.{i}.rd.bytes", 0),
            write_bytes=s.get(f"block.{i}.wr.bytes", 0),
            read_requests=s.get(f"block.{i}.rd.reqs", 0),
            write_requests=s.get(f"block.{i}.wr.reqs", 0),
        )
        for i in range(s.get("block.count", 0))
    )
    net = tuple(
        NetStats(
            device=s.get(f"net.{i}.name", str(i)),
            rx_bytes=s.get(f"net.{i}.rx.bytes", 0),
            tx_bytes=s.get(f"net.{i}.tx.bytes", 0),
            rx_packets=s.get(f"net.{i}.rx.pkts", 0),
            tx_packets=s.get(f"net.{i}.tx.pkts", 0),
            rx_errors=s.get(f"net.{i}.rx.errs", 0),
            tx_errors=s.get(f"net.{i}.tx.errs", 0),
            rx_drops=s.get(f"net.{i}.rx.drop", 0),
            tx_drops=s.get(f"net.{i}.tx.drop", 0),
        )
        for i in range(s.get("net.count", 0))
    )
    return DomainRuntimeStats(
        uuid=dom.UUIDString(),
        name=dom.name(),
        state=_STATES.get(s.get("state.state", 0), "unknown"),
        cpu_time_ns=s.get("cpu.time", 0),
        memory_current_kib=s.get("balloon.current", 0),
        memory_rss_kib=s.get("balloon.rss", 0),
        block=block,
        net=net,
    )


_LIVE_STATES = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED)


def domain_runtime_stats(uri: str) -> list[DomainRuntimeStats]:
    """CPU time, memory, disk and network I/O of the host's running and paused domains (the
    others have no counters): ONE bulk call (getAllDomainStats), never a round trip per domain."""

    def _read(conn):
        return [
            _runtime_from_stats(dom, stats)
            for dom, stats in conn.getAllDomainStats(_RUNTIME_STATS, 0)
            if stats.get("state.state") in _LIVE_STATES
        ]

    return connection.call(uri, "read domain statistics", _read)


@dataclass(frozen=True)
class InterfaceState:
    """One network interface of a domain as its (live) definition says: for the state
    collector's VmInterface rows."""

    mac: str
    source_type: str  # the <interface type>: network, bridge, direct, user, ...
    network: str = ""  # the libvirt network it is attached to (type network)
    bridge: str = ""  # the host bridge its tap is plugged into (type bridge; type network while running)
    target_dev: str = ""  # the tap device on the host (vnetN) while the domain runs
    link_state: str = "up"  # up or down (virsh domif-setlink)
    model: str = ""  # virtio, e1000, ...


def _interface_states(xml: str | ET.Element) -> tuple[InterfaceState, ...]:
    out = []
    root = ET.fromstring(xml) if isinstance(xml, str) else xml
    for iface in root.iterfind("./devices/interface"):
        source, mac, target = iface.find("source"), iface.find("mac"), iface.find("target")
        link, model = iface.find("link"), iface.find("model")
        src = source.attrib if source is not None else {}
        out.append(
            InterfaceState(
                mac=mac.get("address", "") if mac is not None else "",
                source_type=iface.get("type", ""),
                network=src.get("network", ""),
                bridge=src.get("bridge", ""),
                target_dev=target.get("dev", "") if target is not None else "",
                link_state=link.get("state", "up") if link is not None else "up",
                model=model.get("type", "") if model is not None else "",
            )
        )
    return tuple(out)


def domain_interfaces_live(uri: str, name: str | None = None) -> dict[str, tuple[InterfaceState, ...]]:
    """Network interfaces of every domain of the host (or of the one named), by domain UUID,
    from each domain's live definition: one XMLDesc per domain (getAllDomainStats has no
    MAC, network, model or link state). Domains undefined meanwhile are left out."""

    def _read(conn):
        if name is not None:
            dom = conn.lookupByName(name)
            return {dom.UUIDString(): _interface_states(dom.XMLDesc(0))}
        return dict(
            connection.read_present(conn.listAllDomains(0), lambda d: (d.UUIDString(), _interface_states(d.XMLDesc(0))))
        )

    return connection.call(uri, name or "read interfaces", _read)


@dataclass(frozen=True)
class DomainFacts:
    """What the state collector keeps of a domain's live definition: its interfaces and its
    security facts (`xml.domain_security_parse`: firmware, TPM, memory encryption, seclabels,
    limits, QEMU-LUKS disks, graphics consoles)."""

    interfaces: tuple[InterfaceState, ...]
    security: dict


def _domain_facts(xml: str) -> DomainFacts:
    root = ET.fromstring(xml)  # parsed once for both
    return DomainFacts(_interface_states(root), domain_security_parse(root))


def domain_facts_live(uri: str, name: str | None = None) -> dict[str, DomainFacts]:
    """Interfaces and security facts of every domain of the host (or of the one named), by
    domain UUID: one XMLDesc per domain, read once for both. Domains undefined meanwhile
    are left out."""

    def _read(conn):
        if name is not None:
            dom = conn.lookupByName(name)
            return {dom.UUIDString(): _domain_facts(dom.XMLDesc(0))}
        domains = conn.listAllDomains(0)
        return dict(connection.read_present(domains, lambda d: (d.UUIDString(), _domain_facts(d.XMLDesc(0)))))

    return connection.call(uri, name or "read domain definitions", _read)


def domain_interface_set_link(uri: str, domain: str, mac: str, state: str) -> None:
    """Set one interface's link up or down (`<link state='down'/>`: the guest sees its cable
    pulled; nothing needed from the guest), live when the domain runs and in its definition."""
    if state not in ("up", "down"):
        raise ValueError(f"link state {state!r}")

    def _set(conn):
        dom = conn.lookupByName(domain)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if not dom.isActive() else 0))
        for iface in root.findall("./devices/interface"):
            m = iface.find("mac")
            if m is not None and m.get("address", "").lower() == mac.lower():
                break
        else:
            raise NotFound(f"{domain} has no interface with MAC {mac}.")
        link = iface.find("link")
        if link is None:
            link = ET.SubElement(iface, "link")
        link.set("state", state)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0
        if dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        dom.updateDeviceFlags(ET.tostring(iface, encoding="unicode"), flags or libvirt.VIR_DOMAIN_AFFECT_CURRENT)

    connection.call(uri, f"{domain} {mac}", _set)


_LIVE_MOVE_REFUSED = {libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
                      libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_ERR_OPERATION_INVALID}  # fmt: skip


_LIVE_MOVE_REFUSED = {libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
                      libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_ERR_OPERATION_INVALID}  # fmt: skip


def domain_interface_set_network(uri: str, domain: str, mac: str, network: str) -> bool:
    """Attach one interface to another libvirt network, in the definition and, where libvirt
    allows it, live. Returns True when the running VM was moved now, False when the change
    waits for the next start (or the VM is off)."""

    def _move(conn):
        dom = conn.lookupByName(domain)

        def iface_xml(flags: int) -> str:
            root = ET.fromstring(dom.XMLDesc(flags))
            for iface in root.findall("./devices/interface"):
                m = iface.find("mac")
                if m is not None and m.get("address", "").lower() == mac.lower():
                    iface.set("type", "network")
                    source = iface.find("source")
                    if source is None:
                        source = ET.SubElement(iface, "source")
                    source.attrib.clear()
                    source.set("network", network)
                    target = iface.find("target")
                    if target is not None:
                        iface.remove(target)
                    return ET.tostring(iface, encoding="unicode")
            raise NotFound(f"{domain} has no interface with MAC {mac}.")

        if dom.isPersistent():
            dom.updateDeviceFlags(iface_xml(libvirt.VIR_DOMAIN_XML_INACTIVE), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        if not dom.isActive():
            return False
        try:
            dom.updateDeviceFlags(iface_xml(0), libvirt.VIR_DOMAIN_AFFECT_LIVE)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _LIVE_MOVE_REFUSED:
                return False
            raise

    return connection.call(uri, f"{domain} {mac}", _move)
