"""A new guest's domain XML from a plain description (`GuestSpec`): firmware and secure
boot, vTPM, memory encryption (SEV, SEV-ES, SEV-SNP), resource limits, disks, ISO, NICs.

A pure function (no libvirt call): the VM profiles build a GuestSpec, this turns it into
standard libvirt XML that the VM page reads back. No PXE: the boot order is disk then
cdrom, never network, and every NIC carries `<rom enabled='no'/>` (HOST_NOTES.md).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .xml import to_string

CPU_PERIOD_US = 100_000  # <cputune><period>: the quota is a share of this


@dataclass(frozen=True)
class GuestDisk:
    path: str
    fmt: str = "qcow2"
    total_bytes_sec: int = 0  # 0: no <iotune> limit
    total_iops_sec: int = 0
    encryption_secret: str = ""  # a QEMU-LUKS disk: the libvirt secret holding its passphrase


@dataclass(frozen=True)
class GuestSpec:
    name: str
    memory_mib: int
    vcpus: int
    disks: tuple[GuestDisk, ...] = ()
    networks: tuple[str, ...] = ()  # libvirt network names
    iso_path: str = ""
    uefi: bool = False
    secure_boot: bool = False
    enrolled_keys: bool = True  # Microsoft-enrolled variables (OVMF_VARS_4M.ms.fd)
    nvram_path: str = ""  # a varstore made for this VM (the profile's own keys enrolled)
    tpm_model: str = ""  # "", "tpm-crb" or "tpm-tis": an emulated TPM 2.0 (swtpm)
    cpu_quota_percent: int = 0  # of each vCPU; 0: no limit
    memory_hard_limit_mib: int = 0
    sev: str = ""  # "", "sev", "sev-es" or "sev-snp"
    sev_cbitpos: int = 47
    sev_reduced_phys_bits: int = 1
    hugepages: bool = False
    locked: bool = False
    no_shared_pages: bool = False
    domain_type: str = ""
    uuid: str = ""
    extra: dict = field(default_factory=dict, compare=False)


# SEV guest policy bits: 0x1 no debug, 0x2 no key sharing, 0x4 SEV-ES required
_SEV_POLICY = {"sev": "0x0003", "sev-es": "0x0007"}
_SNP_POLICY = "0x00030000"  # SMT allowed, reserved bit 17 set (the ABI's minimum)


def quota_us(percent: int) -> int:
    """<cputune><quota> for `percent` of each vCPU over CPU_PERIOD_US."""
    return CPU_PERIOD_US * percent // 100


def domain_guest_xml(spec: GuestSpec) -> str:
    domain_type = spec.domain_type or ("kvm" if os.path.exists("/dev/kvm") else "qemu")
    q35 = spec.uefi or bool(spec.sev)
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = spec.name
    if spec.uuid:
        ET.SubElement(dom, "uuid").text = spec.uuid
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    if spec.hugepages or spec.locked or spec.no_shared_pages or spec.sev:
        backing = ET.SubElement(dom, "memoryBacking")
        if spec.hugepages:
            ET.SubElement(backing, "hugepages")
        if spec.no_shared_pages:
            ET.SubElement(backing, "nosharepages")
        if spec.locked or spec.sev:  # an encrypted guest's pages must stay put
            ET.SubElement(backing, "locked")
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    if spec.cpu_quota_percent:
        cputune = ET.SubElement(dom, "cputune")
        ET.SubElement(cputune, "period").text = str(CPU_PERIOD_US)
        ET.SubElement(cputune, "quota").text = str(quota_us(spec.cpu_quota_percent))
    if spec.memory_hard_limit_mib:
        memtune = ET.SubElement(dom, "memtune")
        ET.SubElement(memtune, "hard_limit", unit="KiB").text = str(spec.memory_hard_limit_mib * 1024)
    os_el = ET.SubElement(dom, "os", firmware="efi") if spec.uefi else ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35" if q35 else "pc").text = "hvm"
    if spec.uefi:
        fw = ET.SubElement(os_el, "firmware")
        ET.SubElement(fw, "feature", enabled="yes" if spec.secure_boot else "no", name="secure-boot")
        enrolled = spec.secure_boot and spec.enrolled_keys
        ET.SubElement(fw, "feature", enabled="yes" if enrolled else "no", name="enrolled-keys")
        if spec.secure_boot:  # (a loader without secure='yes' is left to libvirt's autoselection)
            ET.SubElement(os_el, "loader", secure="yes")
        if spec.nvram_path:  # an existing varstore: libvirt uses it as it is (no copy of a template)
            ET.SubElement(os_el, "nvram").text = spec.nvram_path
    ET.SubElement(os_el, "boot", dev="hd")
    if spec.iso_path:
        ET.SubElement(os_el, "boot", dev="cdrom")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    if spec.secure_boot:
        ET.SubElement(features, "smm", state="on")
    if spec.sev:
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    for index, disk_spec in enumerate(spec.disks):
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        driver = ET.SubElement(disk, "driver", name="qemu", type=disk_spec.fmt)
        if spec.sev:
            driver.set("iommu", "on")
        source = ET.SubElement(disk, "source", file=disk_spec.path)
        if disk_spec.encryption_secret:
            enc = ET.SubElement(source, "encryption", format="luks")
            ET.SubElement(enc, "secret", type="passphrase", uuid=disk_spec.encryption_secret)
        ET.SubElement(disk, "target", dev=f"vd{chr(ord('a') + index)}", bus="virtio")
        if disk_spec.total_bytes_sec or disk_spec.total_iops_sec:
            iotune = ET.SubElement(disk, "iotune")
            if disk_spec.total_bytes_sec:
                ET.SubElement(iotune, "total_bytes_sec").text = str(disk_spec.total_bytes_sec)
            if disk_spec.total_iops_sec:
                ET.SubElement(iotune, "total_iops_sec").text = str(disk_spec.total_iops_sec)
    if spec.iso_path:
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=spec.iso_path)
        ET.SubElement(cdrom, "target", dev="sda" if q35 else "hda", bus="sata" if q35 else "ide")
        ET.SubElement(cdrom, "readonly")
    for network in spec.networks:
        iface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(iface, "source", network=network)
        ET.SubElement(iface, "model", type="virtio")
        ET.SubElement(iface, "rom", enabled="no")
        if spec.sev:
            ET.SubElement(iface, "driver", iommu="on")
    if spec.tpm_model:
        tpm = ET.SubElement(devices, "tpm", model=spec.tpm_model)
        ET.SubElement(tpm, "backend", type="emulator", version="2.0")
    if spec.sev:
        ET.SubElement(devices, "memballoon", model="none")  # the balloon cannot reach encrypted memory
    # the console is a UNIX socket libvirt names (never a TCP port): the console proxy reads it
    ET.SubElement(ET.SubElement(devices, "graphics", type="vnc"), "listen", type="socket")
    ET.SubElement(devices, "video").append(ET.Element("model", type="vga"))
    if spec.sev == "sev-snp":
        ls = ET.SubElement(dom, "launchSecurity", type="sev-snp")
        ET.SubElement(ls, "policy").text = _SNP_POLICY
    elif spec.sev:
        ls = ET.SubElement(dom, "launchSecurity", type="sev")
        ET.SubElement(ls, "cbitpos").text = str(spec.sev_cbitpos)
        ET.SubElement(ls, "reducedPhysBits").text = str(spec.sev_reduced_phys_bits)
        ET.SubElement(ls, "policy").text = _SEV_POLICY[spec.sev]
    return to_string(dom)


def domain_limits_parse(xml: str) -> dict:
    """A domain definition's resources and limits: vcpus, memory_mb, cpu quota (us) and
    period, memory hard limit (KiB) and each disk's iotune (what an edit audits before/after)."""
    root = ET.fromstring(xml)

    def num(path: str) -> int:
        text = root.findtext(path)
        return int(text) if text and text.lstrip("-").isdigit() else 0

    memory = root.find("memory")
    unit = (memory.get("unit", "KiB") if memory is not None else "KiB").lower()
    scale = {"kib": 1, "k": 1, "mib": 1024, "m": 1024, "gib": 1 << 20, "g": 1 << 20, "b": 0, "bytes": 0}.get(unit, 1)
    memory_kib = num("memory") * scale if scale else num("memory") // 1024
    iotune = {}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        tune = disk.find("iotune")
        if target is not None and tune is not None:
            iotune[target.get("dev", "")] = [int(tune.findtext("total_bytes_sec") or 0),
                                             int(tune.findtext("total_iops_sec") or 0)]  # fmt: skip
    return {
        "vcpus": num("vcpu"),
        "memory_mb": memory_kib // 1024,
        "cpu_quota_us": num("cputune/quota"),
        "cpu_period_us": num("cputune/period"),
        "memory_hard_limit_kib": num("memtune/hard_limit"),
        "iotune": iotune,
    }
