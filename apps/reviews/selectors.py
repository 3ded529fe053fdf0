"""Reads of the access reviews: the per-user access report (from the maintained summaries,
a fixed number of queries whatever the number of users or events), who can act on a VM, what
a user can do, and the campaigns. Each checks `access_review.view` globally first."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from apps.accounts.mfa_status import mfa_enabled_user_ids
from apps.accounts.models import Role, RoleAssignment, Scope
from apps.accounts.permissions import ROLE_PERMISSIONS, require

from .models import ReviewCampaign

# permissions that act on or read one VM; the others are portal-wide (users, audit, settings)
VM_PERMISSIONS = (
    "vms.view", "vms.operate", "vms.snapshot", "storage.view", "storage.change", "encryption.view",
    "encryption.change", "network.view", "network.change", "backups.view", "backups.run",
)  # fmt: skip


def vm_permissions(role: str) -> list[str]:
    return [p for p in VM_PERMISSIONS if p in ROLE_PERMISSIONS[role]]


def portal_permissions(role: str) -> list[str]:
    return sorted(p for p in ROLE_PERMISSIONS[role] if p not in VM_PERMISSIONS)


def _covers(a, host_id, zone, vm_id) -> bool:
    if a.scope == Scope.GLOBAL:
        return True
    if a.scope == Scope.HOST:
        return a.host_id == host_id
    if a.scope == Scope.ZONE:
        return a.zone == zone
    return a.vm_id == vm_id


@dataclass(slots=True)
class UserLine:
    """The user columns the report shows (read as plain values: no model per row)."""

    pk: int
    username: str
    is_active: bool
    last_login: datetime | None
    date_joined: datetime


@dataclass(slots=True)
class Grant:
    """One role assignment as the report shows it."""

    role: str
    scope: str
    host_id: int | None
    zone: str
    vm_id: int | None
    scope_label: str


@dataclass
class AccessRow:
    user: UserLine
    assignments: list
    mfa: bool
    training: str
    events: int = 0
    denied: int = 0
    failed: int = 0
    last_action_at: datetime | None = None
    last_action: str = ""
    effective: list[tuple[str, list[str]]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def roles_text(self) -> str:
        return "; ".join(f"{a.role} of {a.scope_label}" for a in self.assignments)

    @property
    def effective_text(self) -> str:
        return "; ".join(f"{scope}: {' '.join(perms)}" for scope, perms in self.effective)

    @property
    def roles_lines(self) -> str:
        """One line per role (the page shows them with linebreaksbr: one filter, not a loop)."""
        return "\n".join(f"{a.role} of {a.scope_label}" for a in self.assignments) or "-"

    @property
    def effective_lines(self) -> str:
        return "\n".join(f"{scope}: {', '.join(perms)}" for scope, perms in self.effective) or "-"


@dataclass
class Sensitive:
    """Where the VMs of one kind (quarantined, encrypted) are: an assignment reaches one when
    it is global, or its host, zone or VM is among these."""

    hosts: set = field(default_factory=set)
    zones: set = field(default_factory=set)
    vms: set = field(default_factory=set)

    def reached_by(self, a) -> bool:
        if not self.vms:
            return False
        if a.scope == Scope.GLOBAL:
            return True
        if a.scope == Scope.HOST:
            return a.host_id in self.hosts
        if a.scope == Scope.ZONE:
            return a.zone in self.zones
        return a.vm_id in self.vms


def _sensitive_vms() -> tuple[Sensitive, Sensitive]:
    """Where the VMs in quarantine now are, and those with encrypted disks."""
    from apps.encryption.models import EncryptedDisk
    from apps.network.models import Quarantine

    out = []
    for rows in (
        Quarantine.objects.filter(released_at__isnull=True).values_list("vm__host_id", "vm__zone", "vm_id"),
        EncryptedDisk.objects.values_list("vm__host_id", "vm__zone", "vm_id"),
    ):
        where = Sensitive()
        for host_id, zone, vm_id in rows.distinct():
            where.hosts.add(host_id)
            where.zones.add(zone)
            where.vms.add(vm_id)
        out.append(where)
    return out[0], out[1]


def _effective(assignments) -> list[tuple[str, list[str]]]:
    """Per scope, the union of what the user's roles grant there."""
    by_scope: dict[str, set[str]] = {}
    for a in assignments:
        by_scope.setdefault(a.scope_label, set()).update(ROLE_PERMISSIONS[a.role])
    return [(scope, sorted(perms)) for scope, perms in sorted(by_scope.items())]


@dataclass(frozen=True)
class FlagPolicy:
    """The thresholds of the flags, read from the settings once per report."""

    dormant_days: int
    denial_threshold: int
    now: datetime

    @classmethod
    def current(cls) -> FlagPolicy:
        return cls(settings.ACCESS_REVIEW_DORMANT_DAYS, settings.ACCESS_REVIEW_DENIAL_THRESHOLD, timezone.now())


def report_flags(user, assignments, denied: int, *, mfa: bool, quarantined: Sensitive, encrypted: Sensitive,
                 policy: FlagPolicy) -> list[str]:  # fmt: skip
    flags = []
    if not assignments:
        flags.append("no role")
    if user.last_login is None:
        flags.append("never signed in")
    if user.is_active and (user.last_login or user.date_joined) < policy.now - timedelta(days=policy.dormant_days):
        flags.append(f"dormant (no sign-in for {policy.dormant_days} days)")
    if user.is_active and not mfa and any(a.role == Role.ADMIN for a in assignments):
        flags.append("admin without MFA")
    if not user.is_active and assignments:
        flags.append("disabled but still has roles")
    if denied >= policy.denial_threshold:
        flags.append("many denials")
    if user.is_active:
        if any(quarantined.reached_by(a) for a in assignments):
            flags.append("access to a quarantined VM")
        if any(encrypted.reached_by(a) for a in assignments):
            flags.append("access to an encrypted VM")
    return flags


def _grants() -> dict[int, list[Grant]]:
    """user id -> their assignments, with scope labels named as RoleAssignment.scope_label
    names them (their hosts' and VMs' names joined in the same read)."""
    rows = RoleAssignment.objects.order_by("role", "scope", "id").values_list(
        "user_id", "role", "scope", "host_id", "zone", "vm_id", "host__name", "vm__name")  # fmt: skip
    out: dict[int, list[Grant]] = {}
    for user_id, role, scope, host_id, zone, vm_id, host_name, vm_name in rows:
        if scope == Scope.HOST:
            label = f"host {host_name}"
        elif scope == Scope.ZONE:
            label = f"zone {zone}"
        elif scope == Scope.VM:
            label = f"VM {vm_name}"
        else:
            label = "everything"
        out.setdefault(user_id, []).append(Grant(role, scope, host_id, zone, vm_id, label))
    return out


REPORT_USER_FIELDS = (
    "pk", "username", "is_active", "last_login", "date_joined", "activity_summary__events",
    "activity_summary__denied", "activity_summary__failed", "activity_summary__last_action_at",
    "activity_summary__last_action",
)  # fmt: skip


def access_report(user) -> list[AccessRow]:
    """Every user with roles, effective permissions, MFA, last sign-in and action, and the
    flags that deserve a second look. Read as plain values from the users joined to their
    maintained summaries: a fixed number of queries, whatever the number of users and events."""
    require(user, "access_review.view", None, action="reviews.report.view")
    from apps.monitoring.training import ITEMS, acknowledgements_by_user

    users = list(get_user_model().objects.order_by("username").values_list(*REPORT_USER_FIELDS))
    grants = _grants()
    quarantined, encrypted = _sensitive_vms()
    with_mfa = mfa_enabled_user_ids([u[0] for u in users])
    training = acknowledgements_by_user()
    policy = FlagPolicy.current()
    items = len(ITEMS)
    rows = []
    for pk, username, active, last_login, joined, events, denied, failed, last_at, last_action in users:
        line = UserLine(pk, username, active, last_login, joined)
        roles = grants.get(pk, [])
        row = AccessRow(user=line, assignments=roles, mfa=pk in with_mfa, training=f"{training.get(pk, 0)}/{items}",
                        events=events or 0, denied=denied or 0, failed=failed or 0, last_action_at=last_at,
                        last_action=last_action or "", effective=_effective(roles))  # fmt: skip
        row.flags = report_flags(line, roles, row.denied, mfa=row.mfa, quarantined=quarantined,
                                 encrypted=encrypted, policy=policy)  # fmt: skip
        rows.append(row)
    return rows


@dataclass
class Holder:
    user: object
    assignment: RoleAssignment
    permissions: list[str]


def who_can_act_on(user, vm) -> list[Holder]:
    """Every user whose role covers `vm`, with the assignment that grants it and what it
    allows there (a disabled user is listed: their roles are still on record)."""
    require(user, "access_review.view", None, action="reviews.vm_access.view")
    covering = (
        Q(scope=Scope.GLOBAL)
        | Q(scope=Scope.HOST, host_id=vm.host_id)
        | Q(scope=Scope.ZONE, zone=vm.zone)
        | Q(scope=Scope.VM, vm_id=vm.pk)
    )
    rows = RoleAssignment.objects.filter(covering).select_related("user", "host", "vm")
    rows = rows.order_by("user__username", "role", "scope")
    return [Holder(user=a.user, assignment=a, permissions=vm_permissions(a.role)) for a in rows]


@dataclass
class VmAccess:
    vm: object
    permissions: list[str]
    granted_by: list[str]


def what_user_can_do(user, subject) -> tuple[list[RoleAssignment], list[str], list[VmAccess]]:
    """(assignments, portal-wide permissions, every VM the subject's roles cover with the
    actions allowed on it and the assignments that grant them)."""
    from apps.vms.models import VirtualMachine

    require(user, "access_review.view", None, action="reviews.user_access.view")
    assignments = list(RoleAssignment.objects.filter(user=subject).select_related("host", "vm").order_by("role"))
    portal = sorted({p for a in assignments for p in portal_permissions(a.role)})
    if not subject.is_active or not assignments:
        return assignments, portal if subject.is_active else [], []
    q = Q(pk__in=[])
    for a in assignments:
        if a.scope == Scope.GLOBAL:
            q = Q()
            break
        q |= {Scope.HOST: Q(host_id=a.host_id), Scope.ZONE: Q(zone=a.zone), Scope.VM: Q(pk=a.vm_id)}[a.scope]
    vms = VirtualMachine.objects.filter(q, present=True).select_related("host").order_by("host__name", "name")
    out = []
    for vm in vms:
        perms: set[str] = set()
        granted = []
        for a in assignments:
            if _covers(a, vm.host_id, vm.zone, vm.pk):
                perms.update(vm_permissions(a.role))
                granted.append(f"{a.role} of {a.scope_label}")
        out.append(VmAccess(vm=vm, permissions=[p for p in VM_PERMISSIONS if p in perms], granted_by=granted))
    return assignments, portal, out


def campaigns(user):
    require(user, "access_review.view", None, action="reviews.campaigns.view")
    return ReviewCampaign.objects.order_by("-started_at", "-id")


def campaign_items(user, campaign):
    require(user, "access_review.view", None, action="reviews.campaign.view")
    return list(campaign.items.all())
