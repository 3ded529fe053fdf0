"""Reads for the storage pages: one bulk libvirt read per host, scoped to what the user
may see, joined with quotas, limits, alerts and usage history."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.utils import timezone

from apps.accounts.permissions import has_perm, require, scope_filter
from apps.core.errors import NotFound
from apps.core.gateways import libvirt_gw as gw
from apps.core.models import Host
from apps.core.validators import validate_name
from apps.vms.models import VirtualMachine

from .models import PoolLimit, StorageAlert, VmQuota
from .services import defaults_get, effective_pool_limit, effective_quota, trend
from .services.common import EffectivePoolLimit, EffectiveQuota
from .services.disks import host_snapshot, vm_disks
from .services.samples import pool_samples, vm_samples


def _pct(part: int, whole: int) -> int:
    return round(100 * part / whole) if whole else 0


@dataclass(frozen=True)
class PoolRow:
    host: Host
    info: gw.PoolInfo
    limit: EffectivePoolLimit

    @property
    def provisioned(self) -> int:
        return sum(v.capacity for v in self.info.volumes)

    @property
    def volume_allocation(self) -> int:
        return sum(v.allocation for v in self.info.volumes)

    @property
    def overcommit(self) -> float:
        return self.provisioned / self.info.capacity if self.info.capacity else 0.0

    @property
    def used_percent(self) -> int:
        return _pct(self.info.allocation, self.info.capacity)

    @property
    def promised_percent(self) -> int:
        return _pct(self.provisioned, self.info.capacity)

    @property
    def volumes_percent(self) -> int:
        return _pct(self.volume_allocation, self.info.capacity)

    @property
    def reserve_bytes(self) -> int:
        return self.info.capacity * self.limit.reserve_percent // 100

    @property
    def promise_limit(self) -> int:
        return int(self.info.capacity * self.limit.max_overcommit)


@dataclass(frozen=True)
class VmUsageRow:
    vm: VirtualMachine
    disks: gw.DomainDisks
    quota: EffectiveQuota
    alert: StorageAlert | None = None

    @property
    def percent(self) -> int:
        return _pct(self.disks.allocation, self.quota.limit_bytes)

    @property
    def provisioned_percent(self) -> int:
        return _pct(self.disks.provisioned, self.quota.limit_bytes)

    @property
    def over(self) -> bool:
        return self.disks.allocation > self.quota.limit_bytes


@dataclass
class HostStorage:
    host: Host
    pools: list[PoolRow] = field(default_factory=list)
    vms: list[VmUsageRow] = field(default_factory=list)
    error: str = ""


def _visible_vms(user, host: Host):
    qs = VirtualMachine.objects.filter(host=host, present=True).select_related("storage_quota", "host")
    allowed = scope_filter(user, "storage.view") if user is not None else None
    return qs if allowed is None else qs.filter(allowed)


def overview_for(user) -> list[HostStorage]:
    """Pools and VM quotas of every host the user may see (user None: the system, all)."""
    if user is not None:
        require(user, "storage.view", anywhere=True, action="storage.pools.view")
    defaults = defaults_get()
    result = []
    for host in Host.objects.all():
        vms = {str(vm.uuid): vm for vm in _visible_vms(user, host)}
        show_pools = user is None or has_perm(user, "storage.view", host)
        if not vms and not show_pools:
            continue
        entry = HostStorage(host)
        try:
            snap = host_snapshot(host)
        except Exception as exc:  # one unreachable host must not hide the others
            entry.error = getattr(exc, "message", str(exc))
            result.append(entry)
            continue
        if show_pools:
            limits = {pl.pool: pl for pl in PoolLimit.objects.filter(host=host)}
            entry.pools = [PoolRow(host, p, effective_pool_limit(limits.get(p.name), defaults)) for p in snap.pools]
        alerts = {
            a.vm_id: a
            for a in StorageAlert.objects.filter(host=host, state="open", vm__isnull=False).select_related("vm")
        }
        for dom in snap.domains:
            vm = vms.get(dom.uuid)
            if vm is not None:
                quota = effective_quota(getattr(vm, "storage_quota", None), defaults)
                entry.vms.append(VmUsageRow(vm, dom, quota, alerts.get(vm.pk)))
        entry.vms.sort(key=lambda r: r.vm.name)
        result.append(entry)
    return result


@dataclass(frozen=True)
class VmStorage:
    vm: VirtualMachine
    disks: gw.DomainDisks
    quota: EffectiveQuota
    quota_row: VmQuota | None
    snapshots: int
    alerts: list
    trend: object
    pools: list[str]

    @property
    def percent(self) -> int:
        return _pct(self.disks.allocation, self.quota.limit_bytes)

    @property
    def provisioned_percent(self) -> int:
        return _pct(self.disks.provisioned, self.quota.limit_bytes)

    @property
    def top_disks(self) -> list[gw.DiskInfo]:
        seen, tops = set(), []
        for d in self.disks.disks:
            if d.target not in seen:
                seen.add(d.target)
                tops.append(d)
        return tops

    @property
    def chain_files(self) -> list[gw.DiskInfo]:
        """Backing files (external snapshots) below the disks' top images."""
        tops = {d.path for d in self.top_disks}
        return [d for d in self.disks.disks if d.path and d.path not in tops]


def vm_storage(user, vm: VirtualMachine) -> VmStorage:
    require(user, "storage.view", vm, action="storage.vm.view")
    uri = vm.host.uri
    disks = vm_disks(vm)
    quota_row = VmQuota.objects.filter(vm=vm).first()
    now = timezone.now()
    return VmStorage(
        vm=vm,
        disks=disks,
        quota=effective_quota(quota_row, defaults_get()),
        quota_row=quota_row,
        snapshots=len(gw.list_snapshots(uri, vm.name)),
        alerts=list(StorageAlert.objects.filter(vm=vm)[:10]),
        trend=trend(vm_samples(vm, now=now), now=now),
        pools=gw.pool_names(uri),
    )


@dataclass(frozen=True)
class PoolDetail:
    row: PoolRow
    users: dict  # volume path -> VM name
    limit_row: PoolLimit | None
    trend: object
    alerts: list


def pool_detail(user, host_name: str, pool: str) -> PoolDetail:
    validate_name(host_name, "host name")
    validate_name(pool, "pool name")
    host = Host.objects.filter(name=host_name).first()
    if host is None or not has_perm(user, "storage.view", host):
        raise NotFound(f"No host named {host_name!r} that you can see.")
    require(user, "storage.view", host, action="storage.pool.view")
    snap = host_snapshot(host)
    info = next((p for p in snap.pools if p.name == pool), None)
    if info is None:
        raise NotFound(f"Host {host_name} has no storage pool named {pool!r}.")
    limit_row = PoolLimit.objects.filter(host=host, pool=pool).first()
    users = {d.path: dom.name for dom in snap.domains for d in dom.disks}
    now = timezone.now()
    return PoolDetail(
        row=PoolRow(host, info, effective_pool_limit(limit_row, defaults_get())),
        users=users,
        limit_row=limit_row,
        trend=trend(pool_samples(host, pool, now=now), now=now),
        alerts=list(StorageAlert.objects.filter(host=host, pool=pool, vm__isnull=True)[:10]),
    )
