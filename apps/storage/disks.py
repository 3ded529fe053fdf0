"""A VM's disks as storage counts them. An encrypted LUKS2 disk's definition names its
unlocked path (/dev/mapper/portal-X), never the container volume (apps.encryption): storage
counts the container, which is what takes space in the pool, so quotas, pool limits and
volume actions see the encrypted disk as the volume it is."""

from __future__ import annotations

import dataclasses

from django.apps import apps as django_apps

from apps.core.gateways import libvirt as gw


def _aliases(host) -> dict[str, str]:
    """unlocked path -> container path, of the host's encrypted disks (the owner's answer)."""
    if not django_apps.is_installed("apps.encryption"):
        return {}
    from apps.encryption.services import container_paths

    return container_paths(host)


def _resolved(disks: gw.DomainDisks, aliases: dict[str, str], volume_of) -> gw.DomainDisks:
    if not any(d.path in aliases for d in disks.disks):
        return disks
    result = []
    for d in disks.disks:
        vol = volume_of(aliases[d.path]) if d.path in aliases else None
        if vol is not None:
            d = dataclasses.replace(
                d, path=vol.path, capacity=vol.capacity, allocation=vol.allocation, physical=vol.allocation
            )
        result.append(d)
    return dataclasses.replace(disks, disks=tuple(result))


def vm_disks(vm) -> gw.DomainDisks:
    """gw.domain_disks_live, with encrypted disks counted as their container volumes."""
    disks = gw.domain_disks_live(vm.host.uri, vm.name)
    return _resolved(disks, _aliases(vm.host), lambda path: gw.volume_find_by_path(vm.host.uri, path))


def host_snapshot(host, **kwargs) -> gw.StorageSnapshot:
    """gw.host_storage_snapshot, with encrypted disks counted as their container volumes."""
    snap = gw.host_storage_snapshot(host.uri, **kwargs)
    aliases = _aliases(host)
    if not aliases:
        return snap
    by_path = {v.path: v for p in snap.pools for v in p.volumes}
    return dataclasses.replace(snap, domains=tuple(_resolved(d, aliases, by_path.get) for d in snap.domains))
