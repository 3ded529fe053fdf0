"""Reads for the VM pages: the database only (the state collector keeps it current), scoped
to the user before anything is read, a constant number of queries whatever the VM count."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.paginator import Page
from django.db.models import Count, F, FilteredRelation, Max, Q, QuerySet
from django.utils.text import slugify

from apps.accounts.permissions import restrict, scope_parts, scope_q
from apps.core.models import Host
from apps.core.paging import page_of, page_to_show
from apps.core.prepared import Prepared, totals
from apps.core.units import format_bytes
from apps.core.urlmaker import url_maker

from .models import VirtualMachine, VmInterface

PAGE_SIZE = 50
STATES = ["running", "paused", "shut off", "crashed", "pmsuspended", "shutting down"]
SORTS = {
    "name": ("name", "host__name"),
    "host": ("host__name", "name"),
    "zone": ("zone", "host__name", "name"),
    "state": ("last_state", "host__name", "name"),
    "memory": ("memory_kib", "host__name", "name"),
    "disk": ("disk_allocation", "host__name", "name"),
}


def vms_visible_to(user, perm: str = "vms.view") -> QuerySet[VirtualMachine]:
    """The present VMs `perm` lets the user see, their hosts joined."""
    return restrict(VirtualMachine.objects.filter(present=True).select_related("host"), user, perm)


@dataclass(frozen=True)
class VmFilters:
    q: str = ""
    host: str = ""
    zone: str = ""
    state: str = ""
    encrypted: str = ""  # "yes", "no" or "" (either)
    over_quota: bool = False
    quarantined: bool = False
    sort: str = "host"
    descending: bool = False

    @classmethod
    def from_query(cls, params) -> VmFilters:
        sort = params.get("sort", "host")
        descending = sort.startswith("-")
        sort = sort.lstrip("-")
        return cls(
            q=params.get("q", "").strip()[:63],
            host=params.get("host", "")[:63],
            zone=params.get("zone", "")[:63],
            state=params.get("state", "")[:20],
            encrypted=params.get("encrypted", "") if params.get("encrypted", "") in ("yes", "no") else "",
            over_quota=params.get("over_quota", "") == "yes",
            quarantined=params.get("quarantined", "") == "yes",
            sort=sort if sort in SORTS else "host",
            descending=descending,
        )

    def as_query(self) -> dict[str, str]:
        """The filters as URL parameters (empty ones left out): bookmarkable views."""
        values = {"q": self.q, "host": self.host, "zone": self.zone, "state": self.state,
                  "encrypted": self.encrypted, "over_quota": "yes" if self.over_quota else "",
                  "quarantined": "yes" if self.quarantined else ""}  # fmt: skip
        if self.sort != "host" or self.descending:
            values["sort"] = f"{'-' if self.descending else ''}{self.sort}"
        return {k: v for k, v in values.items() if v}


# what a row of the VM list shows: plain values, no model objects
ROW_FIELDS = ("pk", "name", "zone", "last_state", "vcpus", "memory_kib", "disk_capacity", "disk_allocation")
ROW_EXPRESSIONS = {"host_name": F("host__name"), "unlock_mode": F("unlock_policy__mode"),
                   "quarantined": F("active_quarantine__id")}  # fmt: skip


def _listing_shape(user, filters: VmFilters) -> tuple[tuple, dict]:
    """The VM list's query as a shape (the user's kinds of scope, which filters are set) and
    its values (the scopes' values, the filters'), for its prepared reads."""
    kinds, values = scope_parts(user, "vms.view")
    for name in ("q", "host", "zone", "state"):
        if getattr(filters, name):
            values[name] = getattr(filters, name)
    flags = (bool(filters.q), bool(filters.host), bool(filters.zone), bool(filters.state), filters.encrypted,
             filters.over_quota, filters.quarantined)  # fmt: skip
    return (kinds, flags), values


def _matching(shape, p) -> QuerySet[VirtualMachine]:
    """The present VMs in the user's scope that the filters let through."""
    kinds, (q, host, zone, state, encrypted, over_quota, quarantined) = shape
    qs = VirtualMachine.objects.filter(present=True)
    if kinds is not None:
        qs = qs.filter(scope_q(kinds, p))
    if q:
        qs = qs.filter(name__icontains=p["q"])
    if host:
        qs = qs.filter(host__name=p["host"])
    if zone:
        qs = qs.filter(zone=p["zone"])
    if state:
        qs = qs.filter(last_state=p["state"])
    if encrypted:
        # the encryption and storage apps own these rows: asked by relation, as subqueries
        with_disks = VirtualMachine.objects.filter(encrypted_disks__isnull=False).values("pk")
        qs = qs.filter(pk__in=with_disks) if encrypted == "yes" else qs.exclude(pk__in=with_disks)
    if over_quota:  # an open breach: allocation at or over the hard limit
        qs = qs.filter(pk__in=VirtualMachine.objects.filter(storagealert__state="open",
                                                            storagealert__level="breach").values("pk"))  # fmt: skip
    if quarantined:  # the network app's active quarantines, asked by relation
        active = VirtualMachine.objects.filter(quarantines__isnull=False, quarantines__released_at__isnull=True)
        qs = qs.filter(pk__in=active.values("pk"))
    return qs


def _count_and_newest(shape, p):
    return totals(_matching(shape, p), n=Count("pk"), seen=Max("last_seen"))


def _list_rows(shape, p):
    matching, sort, descending = shape
    order = SORTS[sort]
    if descending:
        order = tuple(f"-{f}" for f in order)
    return _with_quarantine(_matching(matching, p)).order_by(*order).values(*ROW_FIELDS, **ROW_EXPRESSIONS)


_COUNT_READ = Prepared(VirtualMachine, _count_and_newest)
_ROWS_READ = Prepared(VirtualMachine, _list_rows)


def _with_quarantine(qs: QuerySet[VirtualMachine]) -> QuerySet[VirtualMachine]:
    """The rows with their active quarantine joined (only the page's rows need it, not the
    count). At most one active quarantine per VM (a constraint): the join adds no rows."""
    active_only = Q(quarantines__released_at__isnull=True)
    return qs.annotate(active_quarantine=FilteredRelation("quarantines", condition=active_only))


@dataclass(frozen=True)
class VmListing:
    version: str  # changes whenever what this listing shows may have changed
    stale_hosts: list[dict]  # id, name, unreachable_since, collect_error, collected_at
    page: Page | None  # None when the version is the one the open page already has


def vm_listing(user, filters: VmFilters, page_number=None, since: str | None = None) -> VmListing:
    """The VM list: the user's hosts that are stale, a version token, and one page of rows
    (dicts of ROW_FIELDS, the host's name, the VM's unlock mode ("manual": its disks open
    only with a typed passphrase) and its page's "url"). Three queries: the stale hosts, the
    count and newest change of the matching VMs (the pager's total and the token at once),
    the page. An open page polling with `since` gets no page when nothing changed."""
    shape, values = _listing_shape(user, filters)
    stale = stale_hosts(user)
    seen = (_COUNT_READ.rows(shape, values) or [{"n": 0, "seen": None}])[0]
    version = _version([seen["n"], seen["seen"], *((h["id"], h["unreachable_since"]) for h in stale)])
    if since is not None and since == version:
        return VmListing(version, stale, None)
    number = page_to_show(page_number, seen["n"], PAGE_SIZE)
    rows = _ROWS_READ.rows((shape, filters.sort, filters.descending), values, limit=PAGE_SIZE,
                           offset=(number - 1) * PAGE_SIZE) if seen["n"] else []  # fmt: skip
    page = page_of(rows, number, PAGE_SIZE, seen["n"])
    detail_url = url_maker("vms:detail", 2)
    for row in page.object_list:  # what the template would otherwise work out per row, with filters
        row["url"] = detail_url(row["host_name"], row["name"])
        row["state_class"] = _STATE_CLASS.get(row["last_state"]) or f"state-{slugify(row['last_state'])}"
        row["memory"] = format_bytes(row["memory_kib"] * 1024)
        row["disks"] = f"{format_bytes(row['disk_allocation'])} / {format_bytes(row['disk_capacity'])}"
    return VmListing(version, stale, page)


_STATE_CLASS = {state: f"state-{slugify(state)}" for state in STATES}


def _states(kinds, p):
    rows = VirtualMachine.objects.filter(present=True)  # no join: states only
    if kinds is not None:
        rows = rows.filter(scope_q(kinds, p))
    return rows.order_by().values("last_state").annotate(n=Count("id"))


_STATES_READ = Prepared(VirtualMachine, _states)


def vm_state_counts(user) -> list[tuple[str, int]]:
    """(state, count) of the VMs the user sees: one aggregate query."""
    return sorted((r["last_state"] or "unknown", r["n"]) for r in _STATES_READ.rows(*scope_parts(user, "vms.view")))


def _stale(shape, p):
    stale = Host.objects.filter(Q(unreachable_since__isnull=False) | Q(collected_at=None)).order_by("name")
    return stale.values("id", "name", "unreachable_since", "collect_error", "collected_at")


def _hosts_seen(shape, p):
    kinds, hosts = shape  # the stale hosts' ids are values host0, host1, ...
    seen = VirtualMachine.objects.filter(present=True, host_id__in=[p[f"host{i}"] for i in range(hosts)])
    if kinds is not None:
        seen = seen.filter(scope_q(kinds, p))
    return seen.order_by().values("host_id").distinct()


_STALE_READ = Prepared(Host, _stale)
_HOSTS_SEEN_READ = Prepared(VirtualMachine, _hosts_seen)


def stale_hosts(user) -> list[dict]:
    """Hosts of the user's VMs whose picture may be out of date (unreachable or never read):
    dicts of id, name, unreachable_since, collect_error, collected_at. Stale hosts are few:
    they are read first, then kept if the user sees a VM on them."""
    hosts = _STALE_READ.rows((), {})
    kinds, values = scope_parts(user, "vms.view")
    if not hosts or kinds is None:  # none, or the user sees every VM
        return hosts
    values.update({f"host{i}": h["id"] for i, h in enumerate(hosts)})
    seen = {r["host_id"] for r in _HOSTS_SEEN_READ.rows((kinds, len(hosts)), values)}
    return [h for h in hosts if h["id"] in seen]


def _version(parts: list) -> str:
    return "-".join(_token(p) for p in parts)


def _token(value) -> str:
    if isinstance(value, tuple):
        return ".".join(_token(v) for v in value)
    return str(int(value.timestamp() * 1000)) if hasattr(value, "timestamp") else str(value or 0)


def vm_interfaces(user, vm: VirtualMachine) -> list[VmInterface]:
    """The VM's network interfaces as the state collector last read them (no libvirt call)."""
    return list(restrict(VmInterface.objects.filter(vm=vm), user, "vms.view").order_by("position"))
