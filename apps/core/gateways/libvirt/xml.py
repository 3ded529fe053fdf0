"""libvirt XML, built with ElementTree so no name or path can inject markup, and read back.

Builders are named `<kind>[_<variant>]_xml`; readers `<kind>_<what>_parse` (or work on an
element of a domain's XML: `disk_element`, `disk_with_source`).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET


def to_string(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


def pool_dir_xml(name: str, path: str) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = path
    return to_string(pool)


def volume_xml(name: str, capacity_bytes: int, fmt: str = "qcow2") -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(capacity_bytes))
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    return to_string(vol)


def network_isolated_xml(name: str, bridge: str) -> str:
    """A network with no <forward>: isolated, nothing leaves the host."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    ET.SubElement(net, "bridge", name=bridge, stp="on", delay="0")
    return to_string(net)


def domain_xml(
    *,
    name: str,
    memory_mib: int,
    vcpus: int,
    disk_paths: list[str],
    networks: list[str],
    domain_type: str | None = None,
    uuid: str | None = None,
) -> str:
    """A minimal guest: boots from its first disk only, NICs without option ROM (no PXE)."""
    if domain_type is None:
        domain_type = "kvm" if os.path.exists("/dev/kvm") else "qemu"
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = name
    if uuid:
        ET.SubElement(dom, "uuid").text = uuid
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    for index, path in enumerate(disk_paths):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=path)
        ET.SubElement(disk, "target", dev=f"vd{chr(ord('a') + index)}", bus="virtio")
    for network in networks:
        iface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(iface, "source", network=network)
        ET.SubElement(iface, "model", type="virtio")
        ET.SubElement(iface, "rom", enabled="no")
    _graphics_socket_el(devices)
    return to_string(dom)


def _graphics_socket_el(devices: ET.Element) -> None:
    """VNC on a unix socket libvirt makes under the domain's private directory
    (/var/lib/libvirt/qemu/domain-N-NAME/vnc.sock): never a network port. The portal's
    console proxy (apps/vms/console_proxy.py) is the only way in."""
    graphics = ET.SubElement(devices, "graphics", type="vnc")
    ET.SubElement(graphics, "listen", type="socket")


def snapshot_xml(name: str, description: str = "") -> str:
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "name").text = name
    if description:
        ET.SubElement(snap, "description").text = description
    return to_string(snap)


def domain_devices_parse(xml: str) -> tuple[list[dict], list[dict]]:
    """Disks (target, path, format) and interfaces (mac, network, device) of a domain."""
    root = ET.fromstring(xml)
    disks, ifaces = [], []
    for disk in root.findall("./devices/disk"):
        if disk.get("device") != "disk":
            continue
        source = disk.find("source")
        driver = disk.find("driver")
        target = disk.find("target")
        disks.append(
            {
                "target": target.get("dev") if target is not None else "",
                "path": (source.get("file") or source.get("dev") or "") if source is not None else "",
                "format": driver.get("type", "") if driver is not None else "",
            }
        )
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        source = iface.find("source")
        target = iface.find("target")
        link = iface.find("link")
        ifaces.append(
            {
                "mac": mac.get("address", "") if mac is not None else "",
                "network": (source.get("network") or source.get("bridge") or "") if source is not None else "",
                "device": target.get("dev", "") if target is not None else "",
                "link": link.get("state", "up") if link is not None else "up",
            }
        )
    return disks, ifaces


def disk_xml(path: str, target: str, fmt: str = "qcow2") -> str:
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt)
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    return to_string(disk)


def secret_xml(*, usage_volume: str, description: str) -> str:
    """A private, persistent secret for a LUKS volume: its value is set through the API from
    the portal's key store and never read back; libvirt keeps it (root-only, under
    /etc/libvirt/secrets) so a start outside the portal (virsh, autostart) can open the disk.
    The libvirt hook still refuses such a start while the portal's store is sealed."""
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "description").text = description
    usage = ET.SubElement(secret, "usage", type="volume")
    ET.SubElement(usage, "volume").text = usage_volume
    return to_string(secret)


def _encryption_el(parent: ET.Element, secret_uuid: str) -> None:
    enc = ET.SubElement(parent, "encryption", format="luks")
    ET.SubElement(enc, "secret", type="passphrase", uuid=secret_uuid)


def volume_luks_xml(name: str, capacity_bytes: int, secret_uuid: str) -> str:
    """A raw volume that libvirt formats as QEMU LUKS (LUKS1) with the secret's value."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(int(capacity_bytes))
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="raw")
    _encryption_el(target, secret_uuid)
    return to_string(vol)


def disk_encrypted_xml(
    *, source: str, target: str, fmt: str = "raw", block: bool = False, secret_uuid: str = ""
) -> str:
    """A virtio disk; with secret_uuid QEMU opens it as LUKS with that libvirt secret."""
    disk = ET.Element("disk", type="block" if block else "file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt)
    ET.SubElement(disk, "source", **({"dev": source} if block else {"file": source}))
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    if secret_uuid:
        _encryption_el(disk, secret_uuid)
    return to_string(disk)


def disk_element(xml: str, target: str) -> ET.Element | None:
    """The <disk> element of `target` in a domain's XML, or None."""
    for disk in ET.fromstring(xml).findall("./devices/disk"):
        t = disk.find("target")
        if t is not None and t.get("dev") == target:
            return disk
    return None


def disk_with_source(disk: ET.Element, *, source: str, block: bool) -> str:
    """The disk element pointed at another file or block device, as XML."""
    disk.set("type", "block" if block else "file")
    src = disk.find("source")
    if src is None:
        src = ET.SubElement(disk, "source")
    src.attrib.clear()
    src.set("dev" if block else "file", source)
    return to_string(disk)


def domain_disks_parse(xml: str) -> list[dict]:
    """Every <disk device='disk'> of a domain: target, source type ("file", "block", ...),
    path and driver format; what a backup must copy."""
    root = ET.fromstring(xml)
    out = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source, driver, target = disk.find("source"), disk.find("driver"), disk.find("target")
        out.append(
            {
                "target": target.get("dev", "") if target is not None else "",
                "type": disk.get("type", "file"),
                "path": (source.get("file") or source.get("dev") or "") if source is not None else "",
                "format": driver.get("type", "raw") if driver is not None else "raw",
                "readonly": disk.find("readonly") is not None,
                "shareable": disk.find("shareable") is not None,
            }
        )
    return out


def snapshot_disk_only_xml(name: str, overlays: dict[str, str], all_targets: list[str]) -> str:
    """An external, disk-only snapshot: each target in `overlays` gets a new qcow2 overlay
    file at the given path (the guest writes there), the others are left out."""
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "name").text = name
    disks = ET.SubElement(snap, "disks")
    for target in all_targets:
        if target in overlays:
            disk = ET.SubElement(disks, "disk", name=target, snapshot="external")
            ET.SubElement(disk, "driver", type="qcow2")
            ET.SubElement(disk, "source", file=overlays[target])
        else:
            ET.SubElement(disks, "disk", name=target, snapshot="no")
    return to_string(snap)


def domain_restored_xml(xml: str, *, name: str, disk_paths: dict[str, str]) -> str:
    """The definition of a VM restored from a backup under a new name: no UUID and no MAC
    addresses (libvirt makes new ones), disks at their restored paths (by target), no
    runtime-only elements."""
    root = ET.fromstring(xml)
    name_el = root.find("name")
    if name_el is None:
        name_el = ET.SubElement(root, "name")
    name_el.text = name
    for tag in ("uuid", "title"):
        el = root.find(tag)
        if el is not None:
            root.remove(el)
    devices = root.find("devices")
    if devices is not None:
        for iface in devices.findall("interface"):
            for tag in ("mac", "target", "alias"):
                for el in iface.findall(tag):
                    iface.remove(el)
        for disk in devices.findall("disk"):
            target = disk.find("target")
            source = disk.find("source")
            dev = target.get("dev", "") if target is not None else ""
            if dev in disk_paths and source is not None:
                for attr in ("dev", "file"):
                    source.attrib.pop(attr, None)
                disk.set("type", "file")
                source.set("file", disk_paths[dev])
                for child in list(source):
                    source.remove(child)
                for el in disk.findall("backingStore"):
                    disk.remove(el)
            elif dev not in disk_paths and disk.get("device", "disk") == "disk":
                devices.remove(disk)  # a disk that was not backed up is not restored
    return to_string(root)


def network_zone_xml(name: str, bridge: str, ipv4_cidr: str = "", ipv6_cidr: str = "") -> str:
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
    return to_string(net)


# ------------------------------------------------------------------ security facts


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("yes", "on", "true", "1")


def domain_security_parse(xml: str | ET.Element) -> dict:
    """The security facts of a domain's (live) XML, as plain JSON-able values: firmware
    (bios/uefi, secure boot, loader, NVRAM), TPM, memory encryption (`<launchSecurity>`),
    security labels (`<seclabel>`: AppArmor, SELinux, DAC, or none), resource limits
    (`<cputune>`, `<memtune>`, `<blkiotune>`, per-disk `<iotune>`), disks QEMU opens as
    LUKS, and the graphics consoles (a VNC unix socket is what the console proxy uses).
    Takes the XML or its parsed root (the collector parses each definition once)."""
    root = ET.fromstring(xml) if isinstance(xml, str) else xml
    os_el = root.find("os")
    loader = os_el.find("loader") if os_el is not None else None
    nvram = os_el.find("nvram") if os_el is not None else None
    features = {}
    if os_el is not None:
        for f in os_el.findall("./firmware/feature"):
            features[f.get("name", "")] = _yes(f.get("enabled"))
    fw_attr = os_el.get("firmware", "") if os_el is not None else ""
    loader_path = (loader.text or "").strip() if loader is not None else ""
    uefi = fw_attr == "efi" or (loader is not None and loader.get("type") == "pflash") or "OVMF" in loader_path
    secure_boot = features.get("secure-boot", False) or (loader is not None and _yes(loader.get("secure")))
    firmware = {
        "type": "uefi" if uefi else "bios",
        "secure_boot": bool(uefi and secure_boot),
        "enrolled_keys": features.get("enrolled-keys"),
        "loader": loader_path,
        "nvram": ((nvram.text or "").strip() or nvram.get("template", "")) if nvram is not None else "",
    }
    tpms = []
    for tpm in root.findall("./devices/tpm"):
        backend = tpm.find("backend")
        tpms.append({
            "model": tpm.get("model", ""),
            "backend": backend.get("type", "") if backend is not None else "",
            "version": (backend.get("version", "") if backend is not None else "") or "",
        })  # fmt: skip
    launch = root.find("launchSecurity")
    memory_encryption = None
    if launch is not None:
        memory_encryption = {"type": launch.get("type", ""), "policy": (launch.findtext("policy") or "").strip()}
    seclabels = []
    for label in root.findall("seclabel"):
        seclabels.append({
            "model": label.get("model", ""),
            "type": label.get("type", ""),
            "relabel": label.get("relabel", ""),
            "label": (label.findtext("label") or "").strip(),
            "imagelabel": (label.findtext("imagelabel") or "").strip(),
        })  # fmt: skip
    cputune = root.find("cputune")
    memtune = root.find("memtune")
    limits = {
        "cpu_quota": int(cputune.findtext("quota") or 0) if cputune is not None else 0,
        "cpu_period": int(cputune.findtext("period") or 0) if cputune is not None else 0,
        "cpu_shares": int(cputune.findtext("shares") or 0) if cputune is not None else 0,
        "memory_hard_limit_kib": _kib(memtune.find("hard_limit")) if memtune is not None else 0,
        "blkiotune": root.find("blkiotune") is not None and len(root.find("blkiotune")) > 0,
        "iotune_disks": [
            (d.find("target").get("dev", "") if d.find("target") is not None else "")
            for d in root.findall("./devices/disk")
            if d.find("iotune") is not None and len(d.find("iotune")) > 0
        ],
    }
    luks_disks = []
    for disk in root.findall("./devices/disk"):
        enc = disk.find("encryption")
        if enc is None:
            enc = disk.find("./source/encryption")
        if enc is not None:
            target = disk.find("target")
            luks_disks.append(target.get("dev", "") if target is not None else "")
    return {
        "firmware": firmware,
        "tpm": tpms,
        "memory_encryption": memory_encryption,
        "seclabels": seclabels,
        "limits": limits,
        "luks_disks": luks_disks,
        "disks": [
            (d.find("target").get("dev", "") if d.find("target") is not None else "")
            for d in root.findall("./devices/disk")
            if d.get("device", "disk") == "disk"
        ],
        "running": root.get("id") is not None,
        "graphics": domain_graphics_parse(root),
    }


_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
        "mb": 1000**2 / 1024, "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024}  # fmt: skip


def _kib(el: ET.Element | None) -> int:
    if el is None or not (el.text or "").strip():
        return 0
    return int(int(el.text.strip()) * _KIB.get(el.get("unit", "KiB").lower(), 1))


def domain_graphics_parse(root: ET.Element | str) -> list[dict]:
    """The graphics consoles of a domain: type (vnc, spice), how each listens ("socket" with
    its path, "address" with address and port, "none") and whether a password is set."""
    if isinstance(root, str):
        root = ET.fromstring(root)
    out = []
    for g in root.findall("./devices/graphics"):
        listen = g.find("listen")
        socket = g.get("socket", "")
        if listen is not None and listen.get("type") == "socket":
            socket = listen.get("socket", "") or socket
        if socket or (listen is not None and listen.get("type") == "socket"):
            kind = "socket"  # without a path in a definition: libvirt picks one at start
        elif listen is not None and listen.get("type") == "none":
            kind = "none"
        else:
            kind = "address"
        address = g.get("listen", "") or (listen.get("address", "") if listen is not None else "")
        out.append({
            "type": g.get("type", ""),
            "listen": kind,
            "socket": socket,
            "address": address if kind == "address" else "",
            "port": int(g.get("port") or 0) if kind == "address" else 0,
            "password": bool(g.get("passwd")),
        })  # fmt: skip
    return out


def host_secmodels_parse(capabilities_xml: str) -> list[dict]:
    """The security drivers libvirt confines guests with on this host (`<host><secmodel>` of
    its capabilities): model ("apparmor", "selinux", "dac", "none"), DOI and base labels."""
    caps = ET.fromstring(capabilities_xml)
    out = []
    for model in caps.iterfind("host/secmodel"):
        out.append({
            "model": (model.findtext("model") or "").strip(),
            "doi": (model.findtext("doi") or "").strip(),
            "baselabels": {el.get("type", ""): (el.text or "").strip() for el in model.iterfind("baselabel")},
        })  # fmt: skip
    return out
