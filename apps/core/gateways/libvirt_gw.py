"""The only module that talks to libvirt.

One connection per process and URI, opened lazily (never at import time) and reopened when
libvirtd restarts. libvirt's errors and VIR_* constants never leave this module: callers
get plain dataclasses and the project's own errors.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import libvirt

from apps.core.errors import Conflict, GatewayError, NotFound

from . import host_paths, libvirt_xml

T = TypeVar("T")

# libvirt prints every error to stderr by default; we report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_lock = threading.Lock()
_connections: dict[str, libvirt.virConnect] = {}
_owner_pid = os.getpid()

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

_RECONNECT_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
}
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN: "VM",
    libvirt.VIR_ERR_NO_STORAGE_POOL: "storage pool",
    libvirt.VIR_ERR_NO_STORAGE_VOL: "volume",
    libvirt.VIR_ERR_NO_NETWORK: "network",
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT: "snapshot",
    libvirt.VIR_ERR_NO_SECRET: "secret",
}
_CONFLICT_CODES = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED}


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
class SnapshotInfo:
    name: str
    created: int
    state: str
    description: str = ""


@dataclass(frozen=True)
class VolumeInfo:
    pool: str
    name: str
    path: str
    capacity: int
    allocation: int
    format: str = ""


@dataclass(frozen=True)
class PoolInfo:
    uuid: str
    name: str
    active: bool
    capacity: int
    allocation: int
    available: int
    path: str
    volumes: tuple[VolumeInfo, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class NetworkInfo:
    uuid: str
    name: str
    active: bool
    bridge: str
    forward_mode: str


def _translate(exc: libvirt.libvirtError, what: str) -> GatewayError | NotFound | Conflict:
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code in _NOT_FOUND_CODES:
        kind = _NOT_FOUND_CODES[code]
        return NotFound(f"{kind[0].upper()}{kind[1:]} not found: {what}")
    if code in _CONFLICT_CODES:
        return Conflict(f"{what}: {message}")
    return GatewayError(f"libvirt could not complete the request ({what}): {message}")


def _open(uri: str) -> libvirt.virConnect:
    global _owner_pid
    with _lock:
        if os.getpid() != _owner_pid:  # forked (Celery prefork): never share a socket
            _connections.clear()
            _owner_pid = os.getpid()
        conn = _connections.get(uri)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            _connections.pop(uri, None)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise GatewayError(f"Cannot connect to the hypervisor at {uri}: {exc.get_error_message()}") from None
        _connections[uri] = conn
        return conn


def _drop(uri: str) -> None:
    with _lock:
        conn = _connections.pop(uri, None)
    if conn is not None:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def call(uri: str, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
    """Run fn(connection); reconnect once if libvirtd went away; translate errors."""
    for attempt in (1, 2):
        conn = _open(uri)
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            if attempt == 1 and (exc.get_error_code() in _RECONNECT_CODES or not _alive(conn)):
                _drop(uri)
                continue
            raise _translate(exc, what) from None
    raise AssertionError("unreachable")


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def reset_connections() -> None:
    """Close every cached connection (used after a fork and by tests)."""
    for uri in list(_connections):
        _drop(uri)


def version(uri: str) -> str:
    def _version(conn):
        v = conn.getLibVersion()
        return f"{v // 1_000_000}.{(v // 1000) % 1000}.{v % 1000}"

    return call(uri, "version", _version)


def qemu_identity(uri: str) -> tuple[int, int] | None:
    """The uid and gid QEMU runs as on this host (libvirt's DAC security model, e.g.
    libvirt-qemu's 64055:64055), or None when the host reports none."""

    def _identity(conn):
        caps = ET.fromstring(conn.getCapabilities())
        for model in caps.iterfind("host/secmodel"):
            if model.findtext("model") != "dac":
                continue
            labels = {el.get("type"): (el.text or "") for el in model.iterfind("baselabel")}
            label = labels.get("kvm") or labels.get("qemu") or ""
            uid, _, gid = label.partition(":")
            if uid.lstrip("+").isdigit() and gid.lstrip("+").isdigit():
                return int(uid.lstrip("+")), int(gid.lstrip("+"))
        return None

    return call(uri, "capabilities", _identity)


# ---------------------------------------------------------------- domains

_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)


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
    state = _STATES.get(stats.get("state.state", 0), "unknown")
    memory = stats.get("balloon.maximum") or stats.get("balloon.current") or 0
    return DomainInfo(
        uuid=dom.UUIDString(),
        name=dom.name(),
        state=state,
        vcpus=stats.get("vcpu.maximum") or stats.get("vcpu.current") or 0,
        memory_kib=memory,
        disks=tuple(disks),
        interfaces=ifaces,
        persistent=True,
    )


def list_domains(uri: str) -> list[DomainInfo]:
    """Every domain of the host with state, vCPUs, memory and disks: two bulk calls."""

    def _list(conn):
        volumes_by_path = {v.path: v for v in _all_volumes(conn)}
        return [_domain_from_stats(dom, stats, volumes_by_path) for dom, stats in conn.getAllDomainStats(_STATS, 0)]

    return call(uri, "list VMs", _list)


def get_domain(uri: str, name: str) -> DomainInfo:
    """One domain in full, interfaces (networks, MACs) and disks included."""

    def _get(conn):
        dom = conn.lookupByName(name)
        ((_, stats),) = conn.domainListGetStats([dom], _STATS, 0)
        disks_xml, ifaces_xml = libvirt_xml.parse_domain_devices(dom.XMLDesc(0))
        # only this domain's volumes: reading every volume of the host costs seconds on
        # a host with thousands of them
        paths = {d["path"] for d in disks_xml} | {
            stats.get(f"block.{i}.path", "") for i in range(stats.get("block.count", 0))
        }
        volumes_by_path = _volumes_at(conn, paths)
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

    return call(uri, name, _get)


def domain_state(uri: str, name: str) -> str:
    return call(uri, name, lambda conn: _STATES.get(conn.lookupByName(name).state()[0], "unknown"))


def define_domain(uri: str, xml: str) -> str:
    return call(uri, "define VM", lambda conn: conn.defineXML(xml).UUIDString())


def undefine_domain(uri: str, name: str) -> None:
    """Stop (if running) and remove a domain with its snapshot metadata."""

    def _undefine(conn):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)

    call(uri, name, _undefine)


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

    call(uri, name, _act)


def start_domain(uri: str, name: str) -> None:
    _domain_action(uri, name, "start")


def shutdown_domain(uri: str, name: str) -> None:
    _domain_action(uri, name, "shutdown")


def force_off_domain(uri: str, name: str) -> None:
    _domain_action(uri, name, "force_off")


def suspend_domain(uri: str, name: str) -> None:
    _domain_action(uri, name, "suspend")


def resume_domain(uri: str, name: str) -> None:
    _domain_action(uri, name, "resume")


def list_snapshots(uri: str, name: str) -> list[SnapshotInfo]:
    def _list(conn):
        dom = conn.lookupByName(name)
        result = []
        for snap in dom.listAllSnapshots(0):
            root = ET.fromstring(snap.getXMLDesc(0))
            result.append(
                SnapshotInfo(
                    name=snap.getName(),
                    created=int(root.findtext("creationTime") or 0),
                    state=root.findtext("state") or "",
                    description=root.findtext("description") or "",
                )
            )
        return sorted(result, key=lambda s: s.created)

    return call(uri, name, _list)


def create_snapshot(uri: str, name: str, snapshot: str, description: str = "") -> None:
    xml = libvirt_xml.snapshot_xml(snapshot, description)
    call(uri, f"{name}/{snapshot}", lambda conn: conn.lookupByName(name).snapshotCreateXML(xml, 0))


def delete_snapshot(uri: str, name: str, snapshot: str) -> None:
    call(uri, f"{name}/{snapshot}", lambda conn: conn.lookupByName(name).snapshotLookupByName(snapshot, 0).delete(0))


# ---------------------------------------------------------------- storage


def _all_volumes(conn) -> list[VolumeInfo]:
    """Every volume of every active pool (one listAllVolumes per pool)."""
    volumes = []
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            pool_type = ET.fromstring(pool.XMLDesc(0)).get("type", "")
            volumes.extend(_pool_volumes(pool, pool.name(), pool_type))
        except libvirt.libvirtError as exc:
            if not _vanished(exc):  # stopped or removed since it was listed: it holds nothing now
                raise
    return volumes


def _volumes_at(conn, paths) -> dict[str, VolumeInfo]:
    """The pool volumes at these paths (paths outside any pool are left out)."""
    found = {}
    for path in paths:
        if not path:
            continue
        try:
            vol = conn.storageVolLookupByPath(path)
            _type, capacity, allocation = vol.info()
            found[path] = VolumeInfo(vol.storagePoolLookupByVolume().name(), vol.name(), path, capacity, allocation)
        except libvirt.libvirtError as exc:
            if not _vanished(exc):
                raise
    return found


def list_pools(uri: str) -> list[PoolInfo]:
    """Every pool with its volumes. A pool or volume removed while we read is left out."""

    def _list(conn):
        pools = []
        for pool in conn.listAllStoragePools(0):
            try:
                pools.append(_read_pool(pool))
            except libvirt.libvirtError as exc:
                if not _vanished(exc):
                    raise
        return sorted(pools, key=lambda p: p.name)

    return call(uri, "list storage pools", _list)


def ensure_dir_pool(uri: str, name: str, path: str) -> None:
    """Define, build, start and autostart a dir pool, reusing one that exists."""

    def _ensure(conn):
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            host_paths.make_traversable_dir(path)
            pool = conn.storagePoolDefineXML(libvirt_xml.pool_dir_xml(name, path), 0)
        if not pool.isActive():
            pool.create(0)
        pool.setAutostart(1)
        pool.refresh(0)

    call(uri, name, _ensure)


def remove_pool(uri: str, name: str, delete_volumes: bool = True) -> None:
    def _remove(conn):
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            if delete_volumes:
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
            pool.destroy()
        pool.undefine()

    call(uri, name, _remove)


def create_volume(uri: str, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo:
    def _create(conn):
        p = conn.storagePoolLookupByName(pool)
        vol = p.createXML(libvirt_xml.volume_xml(name, capacity_bytes, fmt), 0)
        _t, cap, alloc = vol.info()
        return VolumeInfo(pool, vol.name(), vol.path(), cap, alloc, fmt)

    return call(uri, f"{pool}/{name}", _create)


def find_volume(uri: str, pool: str, name: str) -> VolumeInfo | None:
    def _find(conn):
        p = conn.storagePoolLookupByName(pool)
        try:
            vol = p.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise
        _t, cap, alloc = vol.info()
        return VolumeInfo(pool, vol.name(), vol.path(), cap, alloc)

    return call(uri, f"{pool}/{name}", _find)


# ---------------------------------------------------------------- networks


def list_networks(uri: str) -> list[NetworkInfo]:
    """Every network of the host; one removed while we read is left out."""

    def _read(net) -> NetworkInfo:
        root = ET.fromstring(net.XMLDesc(0))
        bridge = root.find("bridge")
        forward = root.find("forward")
        return NetworkInfo(
            uuid=net.UUIDString(),
            name=net.name(),
            active=bool(net.isActive()),
            bridge=bridge.get("name", "") if bridge is not None else "",
            forward_mode=(forward.get("mode", "nat") if forward is not None else "isolated"),
        )

    def _list(conn):
        nets = []
        for net in conn.listAllNetworks(0):
            try:
                nets.append(_read(net))
            except libvirt.libvirtError as exc:
                if not _vanished(exc):
                    raise
        return sorted(nets, key=lambda n: n.name)

    return call(uri, "list networks", _list)


def ensure_isolated_network(uri: str, name: str, bridge: str) -> None:
    def _ensure(conn):
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            net = conn.networkDefineXML(libvirt_xml.isolated_network_xml(name, bridge))
        if not net.isActive():
            net.create()
        net.setAutostart(1)

    call(uri, name, _ensure)


def remove_network(uri: str, name: str) -> None:
    def _remove(conn):
        net = conn.networkLookupByName(name)
        if net.isActive():
            net.destroy()
        net.undefine()

    call(uri, name, _remove)


# ---------------------------------------------------------------- storage: bulk reads and volume changes

_FILE_POOL_TYPES = {"dir", "fs", "netfs"}  # the volume key is its path: no extra round trip


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


@dataclass(frozen=True)
class StorageSnapshot:
    """One bulk read of a host: pools with their volumes, domains with their disks."""

    pools: tuple[PoolInfo, ...]
    domains: tuple[DomainDisks, ...]


_VANISHED = {
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
}


def _vanished(exc: libvirt.libvirtError) -> bool:
    """Removed (or its pool stopped) between being listed and being read."""
    return exc.get_error_code() in _VANISHED or (
        exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "not active" in (exc.get_error_message() or "")
    )


def _volume_infos(items: list) -> list[VolumeInfo]:
    """info() of each (pool name, file pool?, volume); volumes removed meanwhile are skipped."""
    result = []
    for pool_name, file_pool, vol in items:
        try:
            _t, cap, alloc = vol.info()
            path = vol.key() if file_pool else vol.path()
        except libvirt.libvirtError as exc:
            if _vanished(exc):
                continue
            raise
        result.append(VolumeInfo(pool_name, vol.name(), path, cap, alloc))
    return result


def _pool_volumes(pool, pool_name: str, pool_type: str) -> tuple[VolumeInfo, ...]:
    file_pool = pool_type in _FILE_POOL_TYPES
    vols = _volume_infos([(pool_name, file_pool, vol) for vol in pool.listAllVolumes(0)])
    return tuple(sorted(vols, key=lambda v: v.name))


def _read_pool(pool) -> PoolInfo:
    active = bool(pool.isActive())
    _state, capacity, allocation, available = pool.info()
    root = ET.fromstring(pool.XMLDesc(0))
    path = root.findtext("./target/path") or ""
    name = pool.name()
    volumes = _pool_volumes(pool, name, root.get("type", "")) if active else ()
    return PoolInfo(pool.UUIDString(), name, active, capacity, allocation, available, path, volumes)


def _disks_from_stats(stats: dict, volumes_by_path: dict[str, VolumeInfo]) -> tuple[DiskInfo, ...]:
    disks = []
    for i in range(stats.get("block.count", 0)):
        path = stats.get(f"block.{i}.path", "")
        vol = volumes_by_path.get(path)
        capacity = vol.capacity if vol else stats.get(f"block.{i}.capacity", 0)
        allocation = vol.allocation if vol else stats.get(f"block.{i}.physical", 0)
        disks.append(DiskInfo(stats.get(f"block.{i}.name", ""), path, capacity, allocation, allocation))
    return tuple(disks)


_STORAGE_STATS = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BLOCK


def storage_snapshot(uri: str, workers: int = 4) -> StorageSnapshot:
    """Every pool, volume and domain disk of a host in bulk: one listAllVolumes per pool,
    one info() per volume and one getAllDomainStats for all domains, never a round trip
    per VM. With workers > 1 the volume reads and the domain stats go to libvirtd as
    concurrent calls on the one connection (its RPC layer pipelines them). Pools and
    volumes removed while being read are left out, not an error."""

    def _read(conn):
        heads, items = [], []
        for pool in conn.listAllStoragePools(0):
            try:
                active = bool(pool.isActive())
                _state, capacity, allocation, available = pool.info()
                root = ET.fromstring(pool.XMLDesc(0))
                name = pool.name()
                file_pool = root.get("type", "") in _FILE_POOL_TYPES
                if active:
                    items.extend((name, file_pool, vol) for vol in pool.listAllVolumes(0))
            except libvirt.libvirtError as exc:
                if _vanished(exc):
                    continue
                raise
            path = root.findtext("./target/path") or ""
            heads.append((pool.UUIDString(), name, active, capacity, allocation, available, path))
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
        if workers > 1:
            chunks = [items[i::workers] for i in range(workers)]
            with ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="libvirt-read") as pool_exec:
                stats_future = pool_exec.submit(conn.getAllDomainStats, _STORAGE_STATS, flags)
                volumes = [v for part in pool_exec.map(_volume_infos, chunks) for v in part]
                all_stats = stats_future.result()
        else:
            volumes = _volume_infos(items)
            all_stats = conn.getAllDomainStats(_STORAGE_STATS, flags)
        by_pool: dict[str, list[VolumeInfo]] = {}
        for v in volumes:
            by_pool.setdefault(v.pool, []).append(v)
        pools = tuple(
            sorted(
                (PoolInfo(*head[:7], tuple(sorted(by_pool.get(head[1], ()), key=lambda v: v.name))) for head in heads),
                key=lambda p: p.name,
            )
        )
        by_path = {v.path: v for v in volumes}
        domains = tuple(
            DomainDisks(
                dom.UUIDString(),
                dom.name(),
                _STATES.get(stats.get("state.state", 0), "unknown"),
                _disks_from_stats(stats, by_path),
            )
            for dom, stats in all_stats
        )
        return StorageSnapshot(pools, domains)

    return call(uri, "read storage", _read)


def pool_names(uri: str, active_only: bool = True) -> list[str]:
    """Names of the host's pools, without reading their volumes (cheap)."""
    flags = libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE if active_only else 0
    return sorted(p.name() for p in call(uri, "list storage pools", lambda conn: conn.listAllStoragePools(flags)))


def get_pool(uri: str, name: str) -> PoolInfo:
    return call(uri, name, lambda conn: _read_pool(conn.storagePoolLookupByName(name)))


def domain_disks(uri: str, name: str) -> DomainDisks:
    """One domain's disks (for a single action; the periodic check uses storage_snapshot)."""

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
        state = _STATES.get(stats.get("state.state", 0), "unknown")
        return DomainDisks(dom.UUIDString(), dom.name(), state, _disks_from_stats(stats, by_path))

    return call(uri, name, _read)


def volume_by_path(uri: str, path: str) -> VolumeInfo | None:
    def _find(conn):
        try:
            vol = conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise
        _t, cap, alloc = vol.info()
        return VolumeInfo(vol.storagePoolLookupByVolume().name(), vol.name(), path, cap, alloc)

    return call(uri, path, _find)


def resize_volume(uri: str, path: str, capacity_bytes: int) -> None:
    """Grow a volume that no running guest uses (`vol-resize`)."""
    call(uri, path, lambda conn: conn.storageVolLookupByPath(path).resize(int(capacity_bytes), 0))


def block_resize(uri: str, domain: str, path: str, capacity_bytes: int) -> None:
    """Grow a disk of a running guest (`blockresize`): QEMU resizes it live."""
    call(
        uri,
        f"{domain}:{path}",
        lambda conn: conn.lookupByName(domain).blockResize(
            path, int(capacity_bytes), libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        ),
    )


def delete_volume(uri: str, pool: str, name: str) -> None:
    call(uri, f"{pool}/{name}", lambda conn: conn.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0))


def attach_disk(uri: str, domain: str, path: str, fmt: str = "qcow2") -> str:
    """Attach a file as the domain's next virtio disk (persistently, and live when it runs).
    Returns the target device name."""

    def _attach(conn):
        dom = conn.lookupByName(domain)
        disks, _ = libvirt_xml.parse_domain_devices(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for d in disks:
            if d["path"] == path:
                return d["target"]
        used = {d["target"] for d in disks}
        target = next(f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1) if f"vd{chr(c)}" not in used)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.attachDeviceFlags(libvirt_xml.disk_xml(path, target, fmt), flags)
        return target

    return call(uri, f"{domain}:{path}", _attach)


def detach_disk(uri: str, domain: str, path: str) -> None:
    """Remove a disk from the domain's persistent definition (the domain must be off)."""

    def _detach(conn):
        dom = conn.lookupByName(domain)
        disks, _ = libvirt_xml.parse_domain_devices(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for d in disks:
            if d["path"] == path:
                xml = libvirt_xml.disk_xml(path, d["target"], d["format"] or "qcow2")
                dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                return

    call(uri, f"{domain}:{path}", _detach)


# ---------------------------------------------------------------- zones (apps.network)


def zone_network_xml(name: str, bridge: str, ipv4_cidr: str = "", ipv6_cidr: str = "") -> str:
    """An isolated network (no <forward>: nothing is routed or NATed out by libvirt), with
    the host at the first address of each subnet and no DHCP."""
    import ipaddress

    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    ET.SubElement(net, "bridge", name=bridge, stp="off", delay="0")
    for cidr in (ipv4_cidr, ipv6_cidr):
        if cidr:
            n = ipaddress.ip_network(cidr)
            attrs = {"address": str(n.network_address + 1), "prefix": str(n.prefixlen)}
            if n.version == 6:
                attrs["family"] = "ipv6"
            ET.SubElement(net, "ip", **attrs)
    return ET.tostring(net, encoding="unicode")


def define_zone_network(uri: str, name: str, bridge: str, ipv4_cidr: str = "", ipv6_cidr: str = "") -> None:
    """Define (if absent), start and autostart a zone's isolated network. Idempotent."""

    def _define(conn):
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            net = conn.networkDefineXML(zone_network_xml(name, bridge, ipv4_cidr, ipv6_cidr))
        if not net.isActive():
            net.create()
        net.setAutostart(1)

    call(uri, name, _define)


def network_exists(uri: str, name: str) -> bool:
    def _exists(conn):
        try:
            conn.networkLookupByName(name)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return False
            raise

    return call(uri, name, _exists)


def domain_interfaces(uri: str) -> dict[str, tuple[InterfaceInfo, ...]]:
    """Every domain's interfaces (MAC, network, tap device, link state), by domain UUID: one
    listing and one XML read per domain."""

    def _read(conn):
        out = {}
        for dom in conn.listAllDomains(0):
            try:
                _, ifaces = libvirt_xml.parse_domain_devices(dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if _vanished(exc):
                    continue
                raise
            out[dom.UUIDString()] = tuple(InterfaceInfo(**i) for i in ifaces)
        return out

    return call(uri, "list interfaces", _read)


def set_interface_link(uri: str, domain: str, mac: str, state: str) -> None:
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

    call(uri, f"{domain} {mac}", _set)


_LIVE_MOVE_REFUSED = {libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
                      libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_ERR_OPERATION_INVALID}  # fmt: skip


def set_interface_network(uri: str, domain: str, mac: str, network: str) -> bool:
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

    return call(uri, f"{domain} {mac}", _move)
