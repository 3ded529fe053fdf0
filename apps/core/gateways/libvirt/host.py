"""The host as a whole: libvirt's version, QEMU's identity, and the bulk read of every
pool, volume and domain disk that the storage check runs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import libvirt

from . import connection
from .connection import read_present
from .domains import _STORAGE_STATS, DomainDisks, _disks_from_stats, _state_name
from .storage import _FILE_POOL_TYPES, PoolInfo, VolumeInfo, _volume_infos
from .xml import host_secmodels_parse


@dataclass(frozen=True)
class StorageSnapshot:
    """One bulk read of a host: pools with their volumes, domains with their disks."""

    pools: tuple[PoolInfo, ...]
    domains: tuple[DomainDisks, ...]


def host_version(uri: str) -> str:
    def _version(conn):
        v = conn.getLibVersion()
        return f"{v // 1_000_000}.{(v // 1000) % 1000}.{v % 1000}"

    return connection.call(uri, "version", _version)


def host_qemu_identity(uri: str) -> tuple[int, int] | None:
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

    return connection.call(uri, "capabilities", _identity)


def host_security_models(uri: str) -> list[str]:
    """The security drivers libvirt uses for QEMU on this host (its capabilities' secmodel:
    e.g. ["apparmor", "dac"], ["selinux", "dac"], or ["none", "dac"] with no LSM)."""

    def _models(conn):
        return [m["model"] for m in host_secmodels_parse(conn.getCapabilities())]

    return connection.call(uri, "capabilities", _models)


@dataclass(frozen=True)
class HostCapabilities:
    """What the host's hypervisor offers a new guest (libvirt's domain capabilities)."""

    sev: bool = False
    sev_es: bool = False
    sev_snp: bool = False
    sev_cbitpos: int = 0
    sev_reduced_phys_bits: int = 0
    secure_boot: bool = False  # a UEFI loader with secure boot
    tpm_models: tuple[str, ...] = ()
    tpm_versions: tuple[str, ...] = ()
    memory_mib: int = 0  # the host's memory


def domain_capabilities_parse(xml: str, memory_mib: int = 0) -> HostCapabilities:
    root = ET.fromstring(xml)
    sev = root.find("features/sev")
    sev_ok = sev is not None and sev.get("supported") == "yes"
    snp = root.find("features/sev-snp")
    loader = root.find("os/loader")
    secure = (
        loader is not None
        and loader.get("supported") == "yes"
        and "yes" in [v.text for v in loader.iterfind("enum[@name='secure']/value")]
    )
    tpm = root.find("devices/tpm")
    tpm_ok = tpm is not None and tpm.get("supported") == "yes"

    def values(el, name):
        return tuple(v.text or "" for v in el.iterfind(f"enum[@name='{name}']/value")) if el is not None else ()

    return HostCapabilities(
        sev=sev_ok,
        sev_es=sev_ok and int((sev.findtext("maxESGuests") if sev is not None else "") or 0) > 0,
        sev_snp=snp is not None and snp.get("supported") == "yes",
        sev_cbitpos=int((sev.findtext("cbitpos") if sev_ok else "") or 0),
        sev_reduced_phys_bits=int((sev.findtext("reducedPhysBits") if sev_ok else "") or 0),
        secure_boot=secure,
        tpm_models=values(tpm, "model") if tpm_ok else (),
        tpm_versions=values(tpm, "backendVersion") if tpm_ok else (),
        memory_mib=memory_mib,
    )


def host_domain_capabilities(uri: str) -> HostCapabilities:
    """SEV (and -ES, -SNP), a secure-boot UEFI loader, the vTPM models and the host's
    memory, as libvirt's domain capabilities for an x86_64 KVM (else QEMU) guest say."""

    def _read(conn):
        virt = "kvm" if "<domain type='kvm'" in conn.getCapabilities() else "qemu"
        xml = conn.getDomainCapabilities(None, "x86_64", "q35", virt, 0)
        return domain_capabilities_parse(xml, memory_mib=int(conn.getInfo()[1]))

    return connection.call(uri, "domain capabilities", _read)


def _pool_head(pool) -> tuple[tuple, list]:
    """A pool's fields but its volumes, and its volumes still to read (none when inactive)."""
    active = bool(pool.isActive())
    _state, capacity, allocation, available = pool.info()
    root = ET.fromstring(pool.XMLDesc(0))
    name = pool.name()
    file_pool = root.get("type", "") in _FILE_POOL_TYPES
    items = [(name, file_pool, vol) for vol in pool.listAllVolumes(0)] if active else []
    path = root.findtext("./target/path") or ""
    return (pool.UUIDString(), name, active, capacity, allocation, available, path), items


def host_storage_snapshot(uri: str, workers: int = 4) -> StorageSnapshot:
    """Every pool, volume and domain disk of a host in bulk: one listAllVolumes per pool,
    one info() per volume and one getAllDomainStats for all domains, never a round trip
    per VM. With workers > 1 the volume reads and the domain stats go to libvirtd as
    concurrent calls on the one connection (its RPC layer pipelines them). Pools and
    volumes removed while being read are left out, not an error."""

    def _read(conn):
        heads, items = [], []
        for head, pool_items in read_present(conn.listAllStoragePools(0), _pool_head):
            heads.append(head)
            items.extend(pool_items)
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
            DomainDisks(dom.UUIDString(), dom.name(), _state_name(stats), _disks_from_stats(stats, by_path))
            for dom, stats in all_stats
        )
        return StorageSnapshot(pools, domains)

    return connection.call(uri, "read storage", _read)
