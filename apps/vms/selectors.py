"""Reads for the VM pages: the database only (the state collector keeps it current), scoped
to the user before anything is read, a constant number of queries whatever the VM count."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.paginator import Page, Paginator
from django.db.models import Count, Max, Q, QuerySet

from apps.accounts.permissions import restrict
from apps.core.models import Host

from .models import VirtualMachine

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
            sort=sort if sort in SORTS else "host",
            descending=descending,
        )

    def as_query(self) -> dict[str, str]:
        """The filters as URL parameters (empty ones left out): bookmarkable views."""
        values = {"q": self.q, "host": self.host, "zone": self.zone, "state": self.state,
                  "encrypted": self.encrypted, "over_quota": "yes" if self.over_quota else ""}  # fmt: skip
        if self.sort != "host" or self.descending:
            values["sort"] = f"{'-' if self.descending else ''}{self.sort}"
        return {k: v for k, v in values.items() if v}


def vm_page(user, filters: VmFilters, page_number) -> Page:
    qs = vms_visible_to(user)
    if filters.q:
        qs = qs.filter(name__icontains=filters.q)
    if filters.host:
        qs = qs.filter(host__name=filters.host)
    if filters.zone:
        qs = qs.filter(zone=filters.zone)
    if filters.state:
        qs = qs.filter(last_state=filters.state)
    if filters.encrypted:
        # the encryption and storage apps own these rows: asked by relation, as subqueries
        encrypted = VirtualMachine.objects.filter(encrypted_disks__isnull=False).values("pk")
        qs = qs.filter(pk__in=encrypted) if filters.encrypted == "yes" else qs.exclude(pk__in=encrypted)
    if filters.over_quota:  # an open breach: allocation at or over the hard limit
        qs = qs.filter(pk__in=VirtualMachine.objects.filter(storagealert__state="open",
                                                            storagealert__level="breach").values("pk"))  # fmt: skip
    order = SORTS[filters.sort]
    if filters.descending:
        order = tuple(f"-{f}" for f in order)
    return Paginator(qs.order_by(*order), PAGE_SIZE).get_page(page_number)


def vm_state_counts(user) -> list[tuple[str, int]]:
    """(state, count) of the VMs the user sees: one aggregate query."""
    rows = vms_visible_to(user).order_by().values("last_state").annotate(n=Count("id"))
    return sorted((r["last_state"] or "unknown", r["n"]) for r in rows)


def stale_hosts(user) -> list[Host]:
    """Hosts of the user's VMs whose picture may be out of date (unreachable or never read)."""
    host_ids = vms_visible_to(user).order_by().values("host_id").distinct()
    return list(Host.objects.filter(Q(pk__in=host_ids), Q(unreachable_since__isnull=False) | Q(collected_at=None)))


def vms_version(user) -> str:
    """A token that changes whenever a VM the user sees changes, appears or vanishes, or a
    host's reachability changes: open pages poll with it and get "nothing new" cheaply."""
    vms = vms_visible_to(user).order_by().aggregate(n=Count("id"), seen=Max("last_seen"))
    hosts = Host.objects.aggregate(down=Count("id", filter=Q(unreachable_since__isnull=False)),
                                   since=Max("unreachable_since"))  # fmt: skip
    parts = (vms["n"], vms["seen"], hosts["down"], hosts["since"])
    return "-".join(str(int(p.timestamp() * 1000)) if hasattr(p, "timestamp") else str(p or 0) for p in parts)
