"""Reads for the storage pages, scoped to what the user may see, joined with quotas, limits,
alerts and usage history. Lists read the database only (the state collector's PoolState,
VolumeState and VmDiskState rows, apps/storage/services/collect.py); a VM's own storage page
reads its one VM live. Reads only: no service is imported, nothing is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.paginator import Page
from django.db.models import Count, F, FilteredRelation, OuterRef, Q, Subquery
from django.utils import timezone

from apps.accounts.permissions import authorize, has_perm, hosts_covered, restrict_to, scope_parts, scope_q
from apps.core.errors import NotFound
from apps.core.gateways import libvirt as gw
from apps.core.models import Host
from apps.core.paging import page_of, page_to_show
from apps.core.prepared import Prepared, as_objects, totals
from apps.core.urlmaker import url_maker
from apps.core.validators import validate_name
from apps.vms.models import VirtualMachine

from .disks import vm_disks
from .models import PoolLimit, PoolState, StorageAlert, VmQuota, VolumeState
from .quota_rules import (
    EffectivePoolLimit,
    EffectiveQuota,
    defaults_read,
    effective_pool_limit,
    effective_quota,
    quota_with_defaults,
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


@dataclass(frozen=True, slots=True)
class VmUsageRow:
    """A VM's quota row of the storage overview, from plain values (no model objects)."""

    name: str
    url: str
    state: str
    provisioned: int
    allocation: int
    quota: EffectiveQuota
    alert_level: str | None = None

    @property
    def percent(self) -> int:
        return _pct(self.allocation, self.quota.limit_bytes)

    @property
    def provisioned_percent(self) -> int:
        return _pct(self.provisioned, self.quota.limit_bytes)

    @property
    def over(self) -> bool:
        return self.allocation > self.quota.limit_bytes


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
# a VM's quota row: its disks (the collector's VmDiskState), own quota and open alert, as values
_USAGE_FIELDS = ("name", "host_id")
_USAGE_EXPRESSIONS = {
    "host_name": F("host__name"),
    "disks_state": F("disk_state__state"),
    "provisioned": F("disk_state__provisioned"),
    "allocation": F("disk_state__allocation"),
    "quota_limit": F("storage_quota__limit_bytes"),
    "quota_alert": F("storage_quota__alert_percent"),
    "quota_action": F("storage_quota__breach_action"),
    "quota_version": F("storage_quota__version"),
    "alert_level": F("open_alert__level"),
}


def _usage_row(row: dict, defaults, default_quota: EffectiveQuota, vm_url) -> VmUsageRow:
    if row["quota_version"] is None:  # no quota of its own: the defaults
        quota = default_quota
    else:
        quota = quota_with_defaults(row["quota_limit"], row["quota_alert"], row["quota_action"], row["quota_version"],
                                    defaults)  # fmt: skip
    return VmUsageRow(row["name"], vm_url(row["host_name"], row["name"]), row["disks_state"],
                      row["provisioned"], row["allocation"], quota, row["alert_level"])  # fmt: skip


def _hosts(shape, p):
    return Host.objects.order_by("name").values("id", "name", "uri", "collected_at", "unreachable_since",
                                                "collect_error")  # fmt: skip


def _pools(hosts, p):  # the pools of hosts host0, host1, ... with their own limits (None: none set)
    own = PoolLimit.objects.filter(host_id=OuterRef("host_id"), pool=OuterRef("name"))
    pools = PoolState.objects.filter(host_id__in=[p[f"host{i}"] for i in range(hosts)]).order_by("name")
    return pools.annotate(limit_overcommit=Subquery(own.values("max_overcommit")),
                          limit_reserve=Subquery(own.values("reserve_percent"))).values()  # fmt: skip


def _vms_shown(kinds, p):  # the present VMs of these scopes (`scope_parts`), in host and name order
    qs = VirtualMachine.objects.filter(present=True)
    return (qs if kinds is None else qs.filter(scope_q(kinds, p))).order_by("host__name", "name")


def _vm_count(kinds, p):
    return totals(_vms_shown(kinds, p), n=Count("pk"))


def _usage_rows(kinds, p):
    open_alert = FilteredRelation("storagealert", condition=Q(storagealert__state="open"))
    return _vms_shown(kinds, p).annotate(open_alert=open_alert).values(*_USAGE_FIELDS, **_USAGE_EXPRESSIONS)


_HOSTS_READ = Prepared(Host, _hosts)
_POOLS_READ = Prepared(PoolState, _pools)
_VM_COUNT_READ = Prepared(VirtualMachine, _vm_count)
_USAGE_READ = Prepared(VirtualMachine, _usage_rows)


def _overview(user, vm_rows: list[dict]) -> list[HostStorage]:
    """Pools of every host the user may see, and these VMs' quota rows grouped by host: a
    constant number of queries whatever the number of hosts, pools and VMs."""
    defaults = defaults_read()
    by_host: dict[int, list[VmUsageRow]] = {}
    vm_url = url_maker("storage:vm", 2)
    default_quota = effective_quota(None, defaults)
    for row in vm_rows:
        rows = by_host.setdefault(row["host_id"], [])
        if row["disks_state"] is not None:  # the collector has read its disks
            rows.append(_usage_row(row, defaults, default_quota, vm_url))
    pool_hosts, hosts = [], []
    for host in _HOSTS_READ.objects((), {}):
        if user is None or has_perm(user, "storage.view", host):
            pool_hosts.append(host.pk)
        elif host.pk not in by_host:
            continue
        hosts.append(host)
    pools: dict[int, list[tuple[PoolState, EffectivePoolLimit]]] = {}
    rows = _POOLS_READ.rows(len(pool_hosts), {f"host{i}": pk for i, pk in enumerate(pool_hosts)})
    limits = [PoolLimit(max_overcommit=r.pop("limit_overcommit"), reserve_percent=r.pop("limit_reserve")) for r in rows]
    for pool, own in zip(as_objects(PoolState, rows), limits, strict=True):
        pools.setdefault(pool.host_id, []).append((pool, effective_pool_limit(own, defaults)))
    result = []
    for host in hosts:
        entry = HostStorage(host, vms=by_host.get(host.pk, []), error=_stale_note(host))
        entry.pools = [PoolRow(host, pool, limit) for pool, limit in pools.get(host.pk, ())]
        result.append(entry)
    return result


def overview_for(user) -> list[HostStorage]:
    """Pools and every VM's quota row of every host the user may see (user None: the
    system, all), from the database, no libvirt call (the `storage_quota list` command)."""
    authorize(user, "storage.view", anywhere=True, action="storage.pools.view")
    return _overview(user, _USAGE_READ.rows(*_storage_scope(user)))


def _storage_scope(user) -> tuple[tuple | None, dict]:
    return (None, {}) if user is None else scope_parts(user, "storage.view")


def overview_page(user, page_number=None) -> tuple[list[HostStorage], Page]:
    """The storage page: pools of every host, and one page of VM quota rows (host, name
    order), so a host of thousands of VMs draws fifty."""
    authorize(user, "storage.view", anywhere=True, action="storage.pools.view")
    kinds, values = _storage_scope(user)
    total = _VM_COUNT_READ.one(kinds, values)["n"] if kinds != () else 0
    number = page_to_show(page_number, total, OVERVIEW_VMS_PER_PAGE)
    rows = _USAGE_READ.rows(kinds, values, limit=OVERVIEW_VMS_PER_PAGE,
                            offset=(number - 1) * OVERVIEW_VMS_PER_PAGE) if total else []  # fmt: skip
    return _overview(user, rows), page_of(rows, number, OVERVIEW_VMS_PER_PAGE, total)


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
    volumes: Page  # dicts of a VolumeState's name, capacity and allocation, and its VM's name (vm_name)
    limit_row: PoolLimit | None
    trend: object
    alerts: list
    stale: str = ""


def _host_named(shape, p):
    return Host.objects.filter(name=p["name"]).values("id", "name", "uri", "collected_at", "unreachable_since",
                                                      "collect_error")  # fmt: skip


def _pool_of_host(shape, p):
    return PoolState.objects.filter(host_id=p["host"], name=p["pool"]).values()


def _limit_of_pool(shape, p):
    return PoolLimit.objects.filter(host_id=p["host"], pool=p["pool"]).values()


def _volume_count(shape, p):
    return totals(VolumeState.objects.filter(host_id=p["host"], pool=p["pool"]), n=Count("pk"))


def _volume_rows(shape, p):  # a volume's name and sizes, and its VM's name (vm_name)
    volumes = VolumeState.objects.filter(host_id=p["host"], pool=p["pool"]).order_by("name")
    return volumes.values("name", "capacity", "allocation", vm_name=F("vm__name"))


def _pool_alerts(shape, p):
    return StorageAlert.objects.filter(host_id=p["host"], pool=p["pool"], vm__isnull=True).values()


_HOST_NAMED_READ = Prepared(Host, _host_named)
_POOL_READ = Prepared(PoolState, _pool_of_host)
_POOL_LIMIT_READ = Prepared(PoolLimit, _limit_of_pool)
_VOLUME_COUNT_READ = Prepared(VolumeState, _volume_count)
_VOLUME_ROWS_READ = Prepared(VolumeState, _volume_rows)
_POOL_ALERTS_READ = Prepared(StorageAlert, _pool_alerts)


def pool_detail(user, host_name: str, pool: str, page_number=None) -> PoolDetail:
    validate_name(host_name, "host name")
    validate_name(pool, "pool name")
    host = _HOST_NAMED_READ.first((), {"name": host_name})
    if host is None or not has_perm(user, "storage.view", host):
        raise NotFound(f"No host named {host_name!r} that you can see.")
    authorize(user, "storage.view", host, action="storage.pool.view")
    which = {"host": host.pk, "pool": pool}
    info = _POOL_READ.first((), which)
    if info is None:
        raise NotFound(f"Host {host_name} has no storage pool named {pool!r}.")
    limit_row = _POOL_LIMIT_READ.first((), which)
    total = _VOLUME_COUNT_READ.one((), which)["n"]
    number = page_to_show(page_number, total, VOLUMES_PER_PAGE)
    rows = _VOLUME_ROWS_READ.rows((), which, limit=VOLUMES_PER_PAGE, offset=(number - 1) * VOLUMES_PER_PAGE)
    now = timezone.now()
    return PoolDetail(
        row=PoolRow(host, info, effective_pool_limit(limit_row, defaults_read())),
        volumes=page_of(rows, number, VOLUMES_PER_PAGE, total),
        limit_row=limit_row,
        trend=trend(pool_samples(host, pool, now=now), now=now),
        alerts=_POOL_ALERTS_READ.objects((), which, limit=10),
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


def _alerts_in_scope(queryset, kinds, hosts, p):
    """Alerts on the VMs of these scopes, and pool alerts of hosts host0, host1, ... (all for
    hosts None): what `alerts_visible_to` and the badge read."""
    on_vms = restrict_to(queryset.filter(vm__isnull=False), kinds, p)
    on_pools = queryset.filter(vm__isnull=True)
    if hosts is not None:
        on_pools = on_pools.filter(host_id__in=[p[f"host{i}"] for i in range(hosts)])
    return on_vms | on_pools


def _alert_parts(user) -> tuple[tuple, dict]:
    kinds, values = scope_parts(user, "storage.view")
    hosts = hosts_covered(user, "storage.view")
    values.update({f"host{i}": pk for i, pk in enumerate(hosts or ())})
    return (kinds, None if hosts is None else len(hosts)), values


def alerts_visible_to(user, *, open_only: bool = False):
    """Alerts on VMs the user may see (pool alerts for hosts they may see)."""
    qs = StorageAlert.objects.select_related("vm", "host", "vm__host")
    if open_only:
        qs = qs.filter(state=StorageAlert.State.OPEN)
    if user is None:
        return qs
    (kinds, hosts), values = _alert_parts(user)
    return _alerts_in_scope(qs, kinds, hosts, values)


def _unacknowledged(shape, p):
    kinds, hosts = shape
    alerts = StorageAlert.objects.filter(state=StorageAlert.State.OPEN, acknowledged_at__isnull=True)
    return totals(_alerts_in_scope(alerts, kinds, hosts, p), n=Count("pk"))


_BADGE_READ = Prepared(StorageAlert, _unacknowledged)


def alert_badge_count(user) -> int:
    """Open alerts nobody acknowledged yet (the badge in the navigation, on every page)."""
    if user is None or not has_perm(user, "storage.view", anywhere=True):
        return 0
    return _BADGE_READ.one(*_alert_parts(user))["n"]
