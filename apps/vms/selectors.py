"""Reads for the VM pages: the database only (the state collector keeps it current), scoped
to the user before anything is read, a constant number of queries whatever the VM count."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.paginator import Page
from django.db.models import Count, F, Max, Q, QuerySet

from apps.accounts.permissions import restrict, scope_filter
from apps.core.models import Host
from apps.core.paging import values_page
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
    qs = VirtualMachine.objects.filter(present=True).select_related("host")
    allowed = scope_filter(user, perm)
    return qs if allowed is None else qs.filter(allowed)


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


# what a row of the VM list shows: plain values, no model objects (one query for the page
# and its total, apps/core/paging.py)
ROW_FIELDS = ("pk", "name", "zone", "last_state", "vcpus", "memory_kib", "disk_capacity", "disk_allocation")
ROW_EXPRESSIONS = {"host_name": F("host__name"), "unlock_mode": F("unlock_policy__mode")}


def vm_page(user, filters: VmFilters, page_number) -> Page:
    """One page of the VM list: dicts of ROW_FIELDS, the host's name, the VM's unlock mode
    ("manual": its disks open only with a typed passphrase) and its page's "url"."""
    allowed = scope_filter(user, "vms.view")
    qs = VirtualMachine.objects.filter(present=True)
    if allowed is not None:
        qs = qs.filter(allowed)
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
    page = values_page(qs.order_by(*order), page_number, PAGE_SIZE, *ROW_FIELDS, **ROW_EXPRESSIONS)
    detail_url = url_maker("vms:detail", 2)
    for row in page.object_list:
        row["url"] = detail_url(row["host_name"], row["name"])
    return page


def vm_state_counts(user) -> list[tuple[str, int]]:
    """(state, count) of the VMs the user sees: one aggregate query."""
    rows = vms_visible_to(user).order_by().values("last_state").annotate(n=Count("id"))
    return sorted((r["last_state"] or "unknown", r["n"]) for r in rows)


def stale_hosts(user) -> list[Host]:
    """Hosts of the user's VMs whose picture may be out of date (unreachable or never read)."""
    host_ids = vms_visible_to(user).order_by().values("host_id").distinct()
    stale = Q(unreachable_since__isnull=False) | Q(collected_at=None)
    return list(Host.objects.filter(Q(pk__in=host_ids), stale).only("name", "unreachable_since", "collect_error"))


def vms_version(user, stale: list[Host]) -> str:
    """A token that changes whenever a VM the user sees changes, appears or vanishes, or the
    reachability of one of their hosts changes (`stale`: stale_hosts(user)): open pages
    poll with it and get "nothing new" cheaply."""
    vms = vms_visible_to(user).order_by().aggregate(n=Count("id"), seen=Max("last_seen"))
    parts = [vms["n"], vms["seen"], *((h.pk, h.unreachable_since) for h in stale)]
    return "-".join(_token(p) for p in parts)


def _token(value) -> str:
    if isinstance(value, tuple):
        return ".".join(_token(v) for v in value)
    return str(int(value.timestamp() * 1000)) if hasattr(value, "timestamp") else str(value or 0)


def vm_interfaces(user, vm: VirtualMachine) -> list[VmInterface]:
    """The VM's network interfaces as the state collector last read them (no libvirt call)."""
    return list(restrict(VmInterface.objects.filter(vm=vm), user, "vms.view").order_by("position"))
