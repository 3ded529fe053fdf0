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

from .models import ReviewCampaign, UserActivitySummary

# permissions that act on or read one VM; the others are portal-wide (users, audit, settings)
VM_PERMISSIONS = (
    "vms.view", "vms.operate", "vms.snapshot", "storage.view", "storage.change", "encryption.view",
    "encryption.change", "network.view", "network.change", "backups.view", "backups.run",
)  # fmt: skip


def vm_permissions(role: str) -> list[str]:
    return [p for p in VM_PERMISSIONS if p in ROLE_PERMISSIONS[role]]


def portal_permissions(role: str) -> list[str]:
    return sorted(p for p in ROLE_PERMISSIONS[role] if p not in VM_PERMISSIONS)


def _covers(a: RoleAssignment, host_id, zone, vm_id) -> bool:
    if a.scope == Scope.GLOBAL:
        return True
    if a.scope == Scope.HOST:
        return a.host_id == host_id
    if a.scope == Scope.ZONE:
        return a.zone == zone
    return a.vm_id == vm_id


@dataclass
class AccessRow:
    user: object
    assignments: list
    summary: UserActivitySummary | None
    mfa: bool
    training: str
    effective: list[tuple[str, list[str]]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def events(self) -> int:
        return self.summary.events if self.summary else 0

    @property
    def denied(self) -> int:
        return self.summary.denied if self.summary else 0

    @property
    def failed(self) -> int:
        return self.summary.failed if self.summary else 0

    @property
    def last_action_at(self) -> datetime | None:
        return self.summary.last_action_at if self.summary else None

    @property
    def last_action(self) -> str:
        return self.summary.last_action if self.summary else ""

    @property
    def roles_text(self) -> str:
        return "; ".join(f"{a.role} of {a.scope_label}" for a in self.assignments)

    @property
    def effective_text(self) -> str:
        return "; ".join(f"{scope}: {' '.join(perms)}" for scope, perms in self.effective)


def _sensitive_vms() -> tuple[list[tuple], list[tuple]]:
    """(host_id, zone, vm_id) of the VMs in quarantine now, and of those with encrypted disks."""
    from apps.encryption.models import EncryptedDisk
    from apps.network.models import Quarantine

    quarantined = list(
        Quarantine.objects.filter(released_at__isnull=True).values_list("vm__host_id", "vm__zone", "vm_id").distinct()
    )
    encrypted = list(EncryptedDisk.objects.values_list("vm__host_id", "vm__zone", "vm_id").distinct())
    return quarantined, encrypted


def _effective(assignments) -> list[tuple[str, list[str]]]:
    """Per scope, the union of what the user's roles grant there."""
    by_scope: dict[str, set[str]] = {}
    for a in assignments:
        by_scope.setdefault(a.scope_label, set()).update(ROLE_PERMISSIONS[a.role])
    return [(scope, sorted(perms)) for scope, perms in sorted(by_scope.items())]


def report_flags(user, assignments, summary, *, mfa: bool, quarantined, encrypted, now=None) -> list[str]:
    now = now or timezone.now()
    flags = []
    dormant_after = timedelta(days=settings.ACCESS_REVIEW_DORMANT_DAYS)
    if not assignments:
        flags.append("no role")
    if user.last_login is None:
        flags.append("never signed in")
    if user.is_active and (user.last_login or user.date_joined) < now - dormant_after:
        flags.append(f"dormant (no sign-in for {settings.ACCESS_REVIEW_DORMANT_DAYS} days)")
    if user.is_active and not mfa and any(a.role == Role.ADMIN for a in assignments):
        flags.append("admin without MFA")
    if not user.is_active and assignments:
        flags.append("disabled but still has roles")
    if summary is not None and summary.denied >= settings.ACCESS_REVIEW_DENIAL_THRESHOLD:
        flags.append("many denials")
    if user.is_active:
        if any(_covers(a, *vm) for a in assignments for vm in quarantined):
            flags.append("access to a quarantined VM")
        if any(_covers(a, *vm) for a in assignments for vm in encrypted):
            flags.append("access to an encrypted VM")
    return flags


def access_report(user) -> list[AccessRow]:
    """Every user with roles, effective permissions, MFA, last sign-in and action, and the
    flags that deserve a second look. Six queries, whatever the number of users and events."""
    require(user, "access_review.view", None, action="reviews.report.view")
    from apps.monitoring.training import ITEMS, acknowledgements_by_user

    users = list(get_user_model().objects.select_related("activity_summary").order_by("username"))
    assignments: dict[int, list[RoleAssignment]] = {}
    for a in RoleAssignment.objects.select_related("host", "vm").order_by("role", "scope", "id"):
        assignments.setdefault(a.user_id, []).append(a)
    quarantined, encrypted = _sensitive_vms()
    with_mfa = mfa_enabled_user_ids([u.pk for u in users])
    training = acknowledgements_by_user()
    now = timezone.now()
    rows = []
    for u in users:
        roles = assignments.get(u.pk, [])
        summary = getattr(u, "activity_summary", None) if _has_summary(u) else None
        row = AccessRow(user=u, assignments=roles, summary=summary, mfa=u.pk in with_mfa,
                        training=f"{training.get(u.pk, 0)}/{len(ITEMS)}", effective=_effective(roles))  # fmt: skip
        row.flags = report_flags(u, roles, summary, mfa=row.mfa, quarantined=quarantined, encrypted=encrypted,
                                 now=now)  # fmt: skip
        rows.append(row)
    return rows


def _has_summary(u) -> bool:
    try:
        u.activity_summary  # noqa: B018  (select_related: no query)
    except UserActivitySummary.DoesNotExist:
        return False
    return True


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
