"""Reads for the storage pages, scoped to what the user may see, joined with quotas, limits,
alerts and usage history. Lists read the database only (the state collector's PoolState,
VolumeState and VmDiskState rows, apps/storage/services/collect.py); a VM's own storage page
reads its one VM live. Reads only: no service is imported, nothing is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.paginator import Page, Paginator
from django.utils import timezone

from apps.accounts.permissions import authorize, has_perm, restrict
from apps.core.errors import NotFound
from apps.core.gateways import libvirt as gw
from apps.core.models import Host
from apps.core.validators import validate_name
from apps.vms.models import VirtualMachine

from .disks import vm_disks
from .models import PoolLimit, PoolState, StorageAlert, VmDiskState, VmQuota, VolumeState
from .quota_rules import (
    EffectivePoolLimit,
    EffectiveQuota,
    defaults_read,
    effective_pool_limit,
    effective_quota,
)
from .trends import pool_samples, trend, vm_samples


def _pct(part: int, whole: int) -> int:
    return round(100 * part / whole) if whole else 0


@dataclass(frozen=True)
class PoolRow:
    host: Host
    info: PoolState
    limit: EffectivePoolLimit

    @property
    def provisioned(self) -> int:
        return self.info.provisioned

    @property
    def volume_allocation(self) -> int:
        return self.info.volume_allocation

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
    disks: VmDiskState
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


def _stale_note(host: Host) -> str:
    if host.unreachable_since:
        when = timezone.localtime(host.unreachable_since).strftime("%Y-%m-%d %H:%M:%S")
        return f"Host unreachable since {when}: {host.collect_error} (figures below are the last read)."
    if host.collected_at is None:
        return "Not read yet: the state collector has not read this host."
    return ""


OVERVIEW_VMS_PER_PAGE = 50


def _overview(user, vms: list[VirtualMachine]) -> list[HostStorage]:
    """Pools of every host the user may see, and these VMs' quota rows grouped by host."""
    defaults = defaults_read()
    by_host: dict[int, list[VirtualMachine]] = {}
    for vm in vms:
        by_host.setdefault(vm.host_id, []).append(vm)
    result = []
    for host in Host.objects.all():
        host_vms = by_host.get(host.pk, [])
        show_pools = user is None or has_perm(user, "storage.view", host)
        if not host_vms and not show_pools:
            continue
        entry = HostStorage(host, error=_stale_note(host))
        if show_pools:
            limits = {pl.pool: pl for pl in PoolLimit.objects.filter(host=host)}
            entry.pools = [PoolRow(host, p, effective_pool_limit(limits.get(p.name), defaults))
                           for p in PoolState.objects.filter(host=host).order_by("name")]  # fmt: skip
        alerts = {}
        if host_vms:
            open_alerts = StorageAlert.objects.filter(host=host, state="open", vm__in=[vm.pk for vm in host_vms])
            alerts = {a.vm_id: a for a in open_alerts}
        for vm in host_vms:
            disks = getattr(vm, "disk_state", None)
            if disks is not None:
                quota = effective_quota(getattr(vm, "storage_quota", None), defaults)
                entry.vms.append(VmUsageRow(vm, disks, quota, alerts.get(vm.pk)))
        result.append(entry)
    return result


def _visible_vms_everywhere(user):
    qs = VirtualMachine.objects.filter(present=True).select_related("storage_quota", "host", "disk_state")
    return restrict(qs, user, "storage.view").order_by("host__name", "name")


def overview_for(user) -> list[HostStorage]:
    """Pools and every VM's quota row of every host the user may see (user None: the
    system, all), from the database, no libvirt call (the `storage_quota list` command)."""
    authorize(user, "storage.view", anywhere=True, action="storage.pools.view")
    return _overview(user, list(_visible_vms_everywhere(user)))


def overview_page(user, page_number=None) -> tuple[list[HostStorage], Page]:
    """The storage page: pools of every host, and one page of VM quota rows (host, name
    order), so a host of thousands of VMs draws fifty."""
    authorize(user, "storage.view", anywhere=True, action="storage.pools.view")
    page = Paginator(_visible_vms_everywhere(user), OVERVIEW_VMS_PER_PAGE).get_page(page_number)
    return _overview(user, list(page.object_list)), page


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
    authorize(user, "storage.view", vm, action="storage.vm.view")
    uri = vm.host.uri
    disks = vm_disks(vm)
    quota_row = VmQuota.objects.filter(vm=vm).first()
    now = timezone.now()
    return VmStorage(
        vm=vm,
        disks=disks,
        quota=effective_quota(quota_row, defaults_read()),
        quota_row=quota_row,
        snapshots=len(gw.snapshot_list(uri, vm.name)),
        alerts=list(StorageAlert.objects.filter(vm=vm)[:10]),
        trend=trend(vm_samples(vm, now=now), now=now),
        pools=gw.pool_names(uri),
    )


VOLUMES_PER_PAGE = 100


@dataclass(frozen=True)
class PoolDetail:
    row: PoolRow
    volumes: Page  # VolumeState rows, each with its VM (if any)
    limit_row: PoolLimit | None
    trend: object
    alerts: list
    stale: str = ""


def pool_detail(user, host_name: str, pool: str, page_number=None) -> PoolDetail:
    validate_name(host_name, "host name")
    validate_name(pool, "pool name")
    host = Host.objects.filter(name=host_name).first()
    if host is None or not has_perm(user, "storage.view", host):
        raise NotFound(f"No host named {host_name!r} that you can see.")
    authorize(user, "storage.view", host, action="storage.pool.view")
    info = PoolState.objects.filter(host=host, name=pool).first()
    if info is None:
        raise NotFound(f"Host {host_name} has no storage pool named {pool!r}.")
    limit_row = PoolLimit.objects.filter(host=host, pool=pool).first()
    volumes = VolumeState.objects.filter(host=host, pool=pool).select_related("vm").order_by("name")
    now = timezone.now()
    return PoolDetail(
        row=PoolRow(host, info, effective_pool_limit(limit_row, defaults_read())),
        volumes=Paginator(volumes, VOLUMES_PER_PAGE).get_page(page_number),
        limit_row=limit_row,
        trend=trend(pool_samples(host, pool, now=now), now=now),
        alerts=list(StorageAlert.objects.filter(host=host, pool=pool, vm__isnull=True)[:10]),
        stale=_stale_note(host),
    )


def vm_trend(user, vm: VirtualMachine):
    """A VM's usage history and projection (`storage_quota trend VM`)."""
    authorize(user, "storage.view", vm, action="storage.vm.view")
    now = timezone.now()
    return trend(vm_samples(vm, now=now), now=now)


def pool_trend(user, host: Host, pool: str):
    """A pool's usage history and projection (`storage_quota trend --pool POOL`)."""
    if user is not None and not has_perm(user, "storage.view", host):
        raise NotFound(f"No host named {host.name!r} that you can see.")
    now = timezone.now()
    return trend(pool_samples(host, pool, now=now), now=now)


def pool_limits_for(user, host: Host, pool: str) -> tuple[PoolLimit | None, EffectivePoolLimit]:
    """A pool's own limits (None: it has none) and the effective ones."""
    if user is not None and not has_perm(user, "storage.view", host):
        raise NotFound(f"No host named {host.name!r} that you can see.")
    validate_name(pool, "pool name")
    gw.pool_get(host.uri, pool)  # NotFound for an unknown pool
    row = PoolLimit.objects.filter(host=host, pool=pool).first()
    return row, effective_pool_limit(row, defaults_read())


def defaults_for(user):
    """The portal-wide storage defaults, for anyone who may see storage somewhere."""
    authorize(user, "storage.view", anywhere=True, action="storage.settings.view")
    return defaults_read()


def alerts_visible_to(user, *, open_only: bool = False):
    """Alerts on VMs the user may see (pool alerts for hosts they may see)."""
    qs = StorageAlert.objects.select_related("vm", "host", "vm__host")
    if open_only:
        qs = qs.filter(state=StorageAlert.State.OPEN)
    if user is None:
        return qs
    host_ids = [h.pk for h in Host.objects.all() if has_perm(user, "storage.view", h)]
    on_vms = restrict(qs.filter(vm__isnull=False), user, "storage.view")
    return on_vms | qs.filter(vm__isnull=True, host_id__in=host_ids)


def alert_badge_count(user) -> int:
    """Open alerts nobody acknowledged yet (the badge in the navigation)."""
    if user is None or not has_perm(user, "storage.view", anywhere=True):
        return 0
    return alerts_visible_to(user, open_only=True).filter(acknowledged_at__isnull=True).count()
