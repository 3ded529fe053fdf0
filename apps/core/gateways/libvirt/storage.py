"""Storage pools and their volumes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from .. import host_paths
from . import connection
from .connection import read_present
from .xml import pool_dir_xml, volume_luks_xml, volume_xml

_FILE_POOL_TYPES = {"dir", "fs", "netfs"}  # the volume key is its path: no extra round trip
_QEMU_IMG_FLAKE = "Unable to get accurate CPU usage"


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
class PoolTarget:
    name: str
    path: str
    available: int


# ---------------------------------------------------------------- reads on an open connection (package-internal)


def _volume_info(item) -> VolumeInfo:
    pool_name, file_pool, vol = item
    _t, cap, alloc = vol.info()
    path = vol.key() if file_pool else vol.path()
    return VolumeInfo(pool_name, vol.name(), path, cap, alloc)


def _volume_infos(items: list) -> list[VolumeInfo]:
    """info() of each (pool name, file pool?, volume); volumes removed meanwhile are skipped."""
    return read_present(items, _volume_info)


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


def _all_volumes(conn) -> list[VolumeInfo]:
    """Every volume of every active pool (one listAllVolumes per pool); a pool stopped or
    removed since it was listed holds nothing now."""

    def _volumes(pool) -> tuple[VolumeInfo, ...]:
        pool_type = ET.fromstring(pool.XMLDesc(0)).get("type", "")
        return _pool_volumes(pool, pool.name(), pool_type)

    pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    return [vol for vols in read_present(pools, _volumes) for vol in vols]


def _volume_at(conn, path: str) -> VolumeInfo:
    vol = conn.storageVolLookupByPath(path)
    _type, capacity, allocation = vol.info()
    return VolumeInfo(vol.storagePoolLookupByVolume().name(), vol.name(), path, capacity, allocation)


def _volumes_at(conn, paths) -> dict[str, VolumeInfo]:
    """The pool volumes at these paths (paths outside any pool are left out)."""
    return {v.path: v for v in read_present([p for p in paths if p], lambda path: _volume_at(conn, path))}


def _delete_if_exists(pool, name: str) -> None:
    pool.refresh(0)
    try:
        pool.storageVolLookupByName(name).delete(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise


# ---------------------------------------------------------------- pools


def pool_list(uri: str) -> list[PoolInfo]:
    """Every pool with its volumes. A pool or volume removed while we read is left out."""
    return connection.call(
        uri,
        "list storage pools",
        lambda conn: sorted(read_present(conn.listAllStoragePools(0), _read_pool), key=lambda p: p.name),
    )


def pool_names(uri: str, active_only: bool = True) -> list[str]:
    """Names of the host's pools, without reading their volumes (cheap)."""
    flags = libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE if active_only else 0
    return sorted(
        p.name() for p in connection.call(uri, "list storage pools", lambda conn: conn.listAllStoragePools(flags))
    )


def pool_get(uri: str, name: str) -> PoolInfo:
    return connection.call(uri, name, lambda conn: _read_pool(conn.storagePoolLookupByName(name)))


def pool_targets(uri: str) -> list[PoolTarget]:
    """Every active pool with its target directory and free bytes. A pool that goes away
    or stops while we read is skipped, not an error (other clients manage pools too)."""

    def _target(pool) -> PoolTarget:
        _state, _capacity, _allocation, available = pool.info()
        path = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path") or ""
        return PoolTarget(pool.name(), path, available)

    return connection.call(
        uri,
        "list storage pools",
        lambda conn: read_present(conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE), _target),
    )


def pool_ensure_dir(uri: str, name: str, path: str) -> None:
    """Define, build, start and autostart a dir pool, reusing one that exists."""

    def _ensure(conn):
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            host_paths.make_traversable_dir(path)
            pool = conn.storagePoolDefineXML(pool_dir_xml(name, path), 0)
        if not pool.isActive():
            pool.create(0)
        pool.setAutostart(1)
        pool.refresh(0)

    connection.call(uri, name, _ensure)


def pool_refresh(uri: str, pool: str) -> None:
    connection.call(uri, pool, lambda conn: conn.storagePoolLookupByName(pool).refresh(0))


def pool_remove(uri: str, name: str, delete_volumes: bool = True) -> None:
    def _remove(conn):
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            if delete_volumes:
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
            pool.destroy()
        pool.undefine()

    connection.call(uri, name, _remove)


# ---------------------------------------------------------------- volumes


def volume_create(uri: str, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo:
    def _create(conn):
        p = conn.storagePoolLookupByName(pool)
        vol = p.createXML(volume_xml(name, capacity_bytes, fmt), 0)
        _t, cap, alloc = vol.info()
        return VolumeInfo(pool, vol.name(), vol.path(), cap, alloc, fmt)

    return connection.call(uri, f"{pool}/{name}", _create)


def volume_ensure_raw(uri: str, pool: str, name: str, capacity_bytes: int) -> VolumeInfo:
    """A sparse raw volume (reused if it exists: jobs are re-run after a crash)."""

    def _create(conn):
        p = conn.storagePoolLookupByName(pool)
        p.refresh(0)
        try:
            vol = p.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
            vol = p.createXML(volume_xml(name, capacity_bytes, "raw"), 0)
        _t, cap, alloc = vol.info()
        return VolumeInfo(pool, vol.name(), vol.path(), cap, alloc, "raw")

    return connection.call(uri, f"{pool}/{name}", _create)


def volume_create_luks(uri: str, pool: str, name: str, capacity_bytes: int, secret_uuid: str) -> VolumeInfo:
    """A QEMU-LUKS raw volume formatted by libvirt (qemu-img) with the secret's value.
    qemu-img's PBKDF benchmark sometimes fails on a virtual CPU ("Unable to get accurate CPU
    usage"): that one error is retried, nothing else."""
    xml = volume_luks_xml(name, capacity_bytes, secret_uuid)

    def _create(conn):
        p = conn.storagePoolLookupByName(pool)
        for attempt in range(10):
            try:
                vol = p.createXML(xml, 0)
                break
            except libvirt.libvirtError as exc:
                if _QEMU_IMG_FLAKE not in (exc.get_error_message() or "") or attempt == 9:
                    raise
                _delete_if_exists(p, name)
        _t, cap, alloc = vol.info()
        return VolumeInfo(pool, vol.name(), vol.path(), cap, alloc, "raw")

    return connection.call(uri, f"{pool}/{name}", _create)


def volume_find(uri: str, pool: str, name: str) -> VolumeInfo | None:
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

    return connection.call(uri, f"{pool}/{name}", _find)


def volume_find_by_path(uri: str, path: str) -> VolumeInfo | None:
    def _find(conn):
        try:
            vol = conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise
        _t, cap, alloc = vol.info()
        return VolumeInfo(vol.storagePoolLookupByVolume().name(), vol.name(), path, cap, alloc)

    return connection.call(uri, path, _find)


def volume_resize(uri: str, path: str, capacity_bytes: int) -> None:
    """Grow a volume that no running guest uses (`vol-resize`)."""
    connection.call(uri, path, lambda conn: conn.storageVolLookupByPath(path).resize(int(capacity_bytes), 0))


def volume_delete(uri: str, pool: str, name: str) -> None:
    connection.call(
        uri, f"{pool}/{name}", lambda conn: conn.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0)
    )


def volume_delete_if_exists(uri: str, pool: str, name: str) -> None:
    connection.call(uri, f"{pool}/{name}", lambda conn: _delete_if_exists(conn.storagePoolLookupByName(pool), name))


def pool_path(uri: str, pool: str) -> str:
    """The target directory of a dir pool."""
    xml = connection.call(uri, pool, lambda conn: conn.storagePoolLookupByName(pool).XMLDesc(0))
    node = ET.fromstring(xml).find("./target/path")
    return node.text if node is not None and node.text else ""
