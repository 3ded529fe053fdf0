"""libvirt calls of the encryption app: secrets, QEMU-LUKS volumes and encrypted disks.

Built on apps.core.gateways.libvirt_gw.call (one connection per process, reconnect, error
translation), so libvirt's errors and constants stay inside the gateways. Secret values
arrive as bytes from the key store and go straight to secretSetValue: never into XML, argv,
a log line or an error message.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from apps.core.errors import NotFound
from apps.core.gateways import libvirt_xml
from apps.core.gateways.libvirt_gw import VolumeInfo, call

_QEMU_IMG_FLAKE = "Unable to get accurate CPU usage"


@dataclass(frozen=True)
class PoolTarget:
    name: str
    path: str
    available: int


def _xml(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


# ---------------------------------------------------------------- XML


def secret_xml(*, usage_volume: str, description: str) -> str:
    """A private, persistent secret for a LUKS volume: its value is set through the API from
    the portal's key store and never read back; libvirt keeps it (root-only, under
    /etc/libvirt/secrets) so a start outside the portal (virsh, autostart) can open the disk.
    The libvirt hook still refuses such a start while the portal's store is sealed."""
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "description").text = description
    usage = ET.SubElement(secret, "usage", type="volume")
    ET.SubElement(usage, "volume").text = usage_volume
    return _xml(secret)


def _encryption_el(parent: ET.Element, secret_uuid: str) -> None:
    enc = ET.SubElement(parent, "encryption", format="luks")
    ET.SubElement(enc, "secret", type="passphrase", uuid=secret_uuid)


def luks_volume_xml(name: str, capacity_bytes: int, secret_uuid: str) -> str:
    """A raw volume that libvirt formats as QEMU LUKS (LUKS1) with the secret's value."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(capacity_bytes))
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="raw")
    _encryption_el(target, secret_uuid)
    return _xml(vol)


def encrypted_disk_xml(
    *, source: str, target: str, fmt: str = "raw", block: bool = False, secret_uuid: str = ""
) -> str:
    """A virtio disk; with secret_uuid QEMU opens it as LUKS with that libvirt secret."""
    disk = ET.Element("disk", type="block" if block else "file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt)
    ET.SubElement(disk, "source", **({"dev": source} if block else {"file": source}))
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    if secret_uuid:
        _encryption_el(disk, secret_uuid)
    return _xml(disk)


def _disk_element(domain_xml: str, target: str) -> ET.Element | None:
    for disk in ET.fromstring(domain_xml).findall("./devices/disk"):  # noqa: S314 (libvirtd's own XML)
        t = disk.find("target")
        if t is not None and t.get("dev") == target:
            return disk
    return None


def _with_source(disk: ET.Element, *, source: str, block: bool) -> str:
    disk.set("type", "block" if block else "file")
    src = disk.find("source")
    if src is None:
        src = ET.SubElement(disk, "source")
    src.attrib.clear()
    src.set("dev" if block else "file", source)
    return _xml(disk)


# ---------------------------------------------------------------- secrets


def secret_ensure(uri: str, *, usage_volume: str, description: str) -> str:
    """Define (or find) the libvirt secret of a volume; returns its UUID."""

    def _ensure(conn):
        try:
            return conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage_volume).UUIDString()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise
        return conn.secretDefineXML(secret_xml(usage_volume=usage_volume, description=description), 0).UUIDString()

    return call(uri, "define secret", _ensure)


def secret_set_value(uri: str, secret_uuid: str, value: bytes) -> None:
    call(uri, f"secret {secret_uuid}", lambda conn: conn.secretLookupByUUIDString(secret_uuid).setValue(value, 0))


def secret_remove(uri: str, secret_uuid: str) -> None:
    def _remove(conn):
        try:
            conn.secretLookupByUUIDString(secret_uuid).undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise

    call(uri, f"secret {secret_uuid}", _remove)


# ---------------------------------------------------------------- volumes and disks


def create_luks_volume(uri: str, pool: str, name: str, capacity_bytes: int, secret_uuid: str) -> VolumeInfo:
    """A QEMU-LUKS raw volume formatted by libvirt (qemu-img) with the secret's value.
    qemu-img's PBKDF benchmark sometimes fails on a virtual CPU ("Unable to get accurate CPU
    usage"): that one error is retried, nothing else."""
    xml = luks_volume_xml(name, capacity_bytes, secret_uuid)

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

    return call(uri, f"{pool}/{name}", _create)


def create_raw_volume(uri: str, pool: str, name: str, capacity_bytes: int) -> VolumeInfo:
    """A sparse raw volume (reused if it exists: jobs are re-run after a crash)."""

    def _create(conn):
        p = conn.storagePoolLookupByName(pool)
        p.refresh(0)
        try:
            vol = p.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
            vol = p.createXML(libvirt_xml.volume_xml(name, capacity_bytes, "raw"), 0)
        _t, cap, alloc = vol.info()
        return VolumeInfo(pool, vol.name(), vol.path(), cap, alloc, "raw")

    return call(uri, f"{pool}/{name}", _create)


def _delete_if_exists(pool, name: str) -> None:
    pool.refresh(0)
    try:
        pool.storageVolLookupByName(name).delete(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise


def volume_delete_if_exists(uri: str, pool: str, name: str) -> None:
    call(uri, f"{pool}/{name}", lambda conn: _delete_if_exists(conn.storagePoolLookupByName(pool), name))


def refresh_pool(uri: str, pool: str) -> None:
    call(uri, pool, lambda conn: conn.storagePoolLookupByName(pool).refresh(0))


def domain_disks(uri: str, name: str) -> list[dict]:
    """The disks (target, path, format) of the VM's persistent definition."""

    def _disks(conn):
        xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        return libvirt_xml.parse_domain_devices(xml)[0]

    return call(uri, name, _disks)


def next_free_target(uri: str, name: str) -> str:
    used = {d["target"] for d in domain_disks(uri, name)}
    return next(f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1) if f"vd{chr(c)}" not in used)


def attach_encrypted_disk(uri: str, name: str, disk_xml: str) -> None:
    """Add the disk to the VM's persistent definition (it appears at the next start, once
    the portal has opened it)."""
    call(uri, name, lambda conn: conn.lookupByName(name).attachDeviceFlags(disk_xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG))


def detach_disk_target(uri: str, name: str, target: str) -> bool:
    """Remove disk `target` from the VM's persistent definition (whatever its source names:
    the image or the unlocked mapping). False when the VM has no such disk (already done)."""

    def _detach(conn):
        dom = conn.lookupByName(name)
        disk = _disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
        if disk is None:
            return False
        dom.detachDeviceFlags(_xml(disk), libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return True

    return call(uri, name, _detach)


def set_disk_source(uri: str, name: str, target: str, source: str, *, block: bool) -> None:
    """Point the VM's persistent disk `target` at another file or block device."""

    def _set(conn):
        dom = conn.lookupByName(name)
        disk = _disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
        if disk is None:
            raise NotFound(f"{name} has no disk {target}.")
        dom.updateDeviceFlags(_with_source(disk, source=source, block=block), libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    call(uri, name, _set)


def set_disk_format(uri: str, name: str, target: str, fmt: str) -> None:
    """Set the driver type (image format) of the VM's persistent disk `target`."""

    def _set(conn):
        dom = conn.lookupByName(name)
        disk = _disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
        if disk is None:
            raise NotFound(f"{name} has no disk {target}.")
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", fmt)
        dom.updateDeviceFlags(_xml(disk), libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    call(uri, name, _set)


# ---------------------------------------------------------------- pools


def active_pools(uri: str) -> list[PoolTarget]:
    """Every active pool with its target directory and free bytes. A pool that goes away
    or stops while we read is skipped, not an error (other clients manage pools too)."""

    def _list(conn):
        result = []
        for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            try:
                _state, _capacity, _allocation, available = pool.info()
                path = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path") or ""  # noqa: S314
                result.append(PoolTarget(pool.name(), path, available))
            except libvirt.libvirtError:
                continue
        return result

    return call(uri, "list storage pools", _list)
