"""The one permission engine. Three ways in, one rule:

- `authorize(actor, perm, obj, action=...)` in services (and views before they act): raises
  PermissionDenied and audits the denial. actor None is the system user (the periodic
  checks, commands run without --as, a breach suspension): trusted, audited as "system".
  Job handlers pass `jobs.job_actor(job)`, never `job.actor`.
- `has_perm(user, perm, obj)` for a yes/no (the `{% can %}` template tag asks it per button).
- `restrict(queryset, user, perm)` for "the rows this user may see with this permission".

Scopes resolve through the object: VM -> zone -> host -> global. An object takes part by
offering `scope_path()` -> (host_id, zone, vm_id)."""

from __future__ import annotations

from collections import namedtuple

from django.core.exceptions import PermissionDenied

from apps.core.prepared import Prepared

from .models import Role, RoleAssignment, Scope

VIEW_PERMISSIONS = frozenset(
    {"dashboard.view", "vms.view", "storage.view", "network.view", "encryption.view", "jobs.view", "backups.view"}
)
# vms.create / vms.change / vms.delete: new VMs from profiles, their resources and limits, delete
OPERATE_PERMISSIONS = frozenset(
    {"vms.operate", "vms.snapshot", "storage.change", "encryption.change", "network.change", "backups.run",
     "vms.create", "vms.change", "vms.delete"}
)
AUDIT_PERMISSIONS = frozenset({"audit.view", "access_review.view"})
# profiles.change: edit and import VM profiles
# access_review.manage: run review campaigns (decide, close: revocations are applied)
ADMIN_PERMISSIONS = frozenset(
    {"accounts.manage", "storage.settings", "security.manage", "network.zones", "profiles.change",
     "access_review.manage"}
)
# monitoring.view: the host security posture page (operators and auditors read it too)
MONITORING_PERMISSIONS = frozenset({"monitoring.view"})
# encryption.keys: unseal the key store, export key escrow, rotate the KEK (admins only)
KEY_PERMISSIONS = frozenset({"encryption.keys"})
ALL_PERMISSIONS = (
    VIEW_PERMISSIONS | OPERATE_PERMISSIONS | AUDIT_PERMISSIONS | ADMIN_PERMISSIONS | KEY_PERMISSIONS
    | MONITORING_PERMISSIONS
)

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.ADMIN: ALL_PERMISSIONS,
    Role.OPERATOR: VIEW_PERMISSIONS | OPERATE_PERMISSIONS | MONITORING_PERMISSIONS,
    Role.AUDITOR: VIEW_PERMISSIONS | AUDIT_PERMISSIONS | MONITORING_PERMISSIONS,
    Role.VIEWER: frozenset({"dashboard.view", "vms.view", "storage.view", "network.view", "jobs.view"}),
}

_CACHE_ATTR = "_portal_assignments"
Assignment = namedtuple("Assignment", "role scope host_id zone vm_id")


def _assignments_of(shape, p):
    # unordered: the model's default ordering would join the user table for nothing
    return RoleAssignment.objects.filter(user_id=p["user"]).order_by().values(*Assignment._fields)


_ASSIGNMENTS_READ = Prepared(RoleAssignment, _assignments_of)


def _assignments(user) -> list:  # rows with .role, .scope, .host_id, .zone, .vm_id
    if user is None or not user.is_authenticated or not user.is_active:
        return []
    cached = getattr(user, _CACHE_ATTR, None)
    if cached is None:
        # plain rows read by attribute: no model objects (read on every request: prepared)
        cached = [Assignment(**row) for row in _ASSIGNMENTS_READ.rows((), {"user": user.pk})]
        setattr(user, _CACHE_ATTR, cached)
    return cached


def assignments(user) -> list:
    """The user's role assignments (cached for the request, like every check here)."""
    return _assignments(user)


def forget(user) -> None:
    """Drop the per-request cache of assignments (after they change)."""
    if user is not None and hasattr(user, _CACHE_ATTR):
        delattr(user, _CACHE_ATTR)


def _covers(assignment, obj) -> bool:
    if assignment.scope == Scope.GLOBAL:
        return True
    if obj is None:
        return False
    host_id, zone, vm_id = obj.scope_path()
    if assignment.scope == Scope.HOST:
        return host_id is not None and assignment.host_id == host_id
    if assignment.scope == Scope.ZONE:
        return zone is not None and assignment.zone == zone
    if assignment.scope == Scope.VM:
        return vm_id is not None and assignment.vm_id == vm_id
    return False


def has_perm(user, perm: str, obj=None, *, anywhere: bool = False) -> bool:
    """True when one of the user's roles grants `perm` over `obj`.

    With anywhere=True (page-level checks: may the user open the VM list at all?) any
    assignment granting `perm`, whatever its scope, is enough; lists are then filtered.
    """
    if perm not in ALL_PERMISSIONS:
        raise ValueError(f"unknown permission {perm!r}")
    for assignment in _assignments(user):
        if perm in ROLE_PERMISSIONS[assignment.role] and (anywhere or _covers(assignment, obj)):
            return True
    return False


def require(user, perm: str, obj=None, *, anywhere: bool = False, action: str | None = None, target=None) -> None:
    """Raise PermissionDenied unless allowed; the denial is written to the audit log."""
    if has_perm(user, perm, obj, anywhere=anywhere):
        return
    from apps.audit.services import record

    record(
        actor=user,
        action=action or f"permission.{perm}",
        target=target if target is not None else obj,
        outcome="denied",
        error=f"requires {perm}",
    )
    raise PermissionDenied(f"You do not have the '{perm}' permission for this.")


def authorize(actor, perm: str, obj=None, *, action: str | None = None, anywhere: bool = False, target=None) -> None:
    """The permission check of every service: the system actor (None) is allowed, anyone
    else needs `perm` over `obj` (a denial is audited under `action` and raised)."""
    if actor is None:
        return
    require(actor, perm, obj, anywhere=anywhere, action=action, target=target)


def permissions_of(user) -> set[str]:
    """Every permission the user holds in some scope (for showing navigation)."""
    perms: set[str] = set()
    for assignment in _assignments(user):
        perms |= ROLE_PERMISSIONS[assignment.role]
    return perms


_SCOPE_FIELDS = {Scope.HOST: "host_id", Scope.ZONE: "zone", Scope.VM: "pk"}


def scope_parts(user, perm: str) -> tuple[tuple | None, dict]:
    """The VM rows `perm` covers for `user` as a shape and its values: (None, {}) for every
    row; else the kinds of the user's scopes in order ("host", "zone", "vm") and their values
    as scope0, scope1, ... (what `scope_q` and a prepared read take)."""
    kinds: list[str] = []
    values: dict = {}
    for a in _assignments(user):
        if perm not in ROLE_PERMISSIONS[a.role]:
            continue
        if a.scope == Scope.GLOBAL:
            return None, {}
        value = {Scope.HOST: a.host_id, Scope.ZONE: a.zone, Scope.VM: a.vm_id}.get(a.scope)
        if value is not None:  # (a scope without its object covers nothing)
            values[f"scope{len(kinds)}"] = value
            kinds.append(a.scope)
    return tuple(kinds), values


def scope_q(kinds: tuple, values):
    """A Q object for the VM rows of these scopes (from `scope_parts`); no kinds: no rows."""
    from django.db.models import Q

    q = Q(pk__in=[])
    for i, kind in enumerate(kinds):
        q |= Q(**{_SCOPE_FIELDS[kind]: values[f"scope{i}"]})
    return q


def scope_filter(user, perm: str):
    """A Q object restricting VirtualMachine rows to those `perm` covers, or None for all."""
    kinds, values = scope_parts(user, perm)
    return None if kinds is None else scope_q(kinds, values)


def hosts_covered(user, perm: str) -> list[int] | None:
    """The hosts `perm` covers as objects for `user` (host-scoped assignments; a zone or VM
    scope covers VMs, not their host): their ids, or None for every host."""
    ids = set()
    for a in _assignments(user):
        if perm not in ROLE_PERMISSIONS[a.role]:
            continue
        if a.scope == Scope.GLOBAL:
            return None
        if a.scope == Scope.HOST and a.host_id is not None:
            ids.add(a.host_id)
    return sorted(ids)


def restrict(queryset, user, perm: str):
    """The rows of `queryset` that `perm` covers for `user` (None: the system, all rows).
    The model says how it reaches its VM with `scope_vm_path` ("" for VirtualMachine
    itself, "vm" for a row with a `vm` foreign key)."""
    if user is None:
        return queryset
    return restrict_to(queryset, *scope_parts(user, perm))


def restrict_to(queryset, kinds: tuple | None, values):
    """`restrict` from a scope's parts (`scope_parts`), for a prepared read's build."""
    path = getattr(queryset.model, "scope_vm_path", None)
    if path is None:
        raise TypeError(f"{queryset.model.__name__} has no scope_vm_path: it cannot be restricted by VM scope")
    if kinds is None:
        return queryset
    q = scope_q(kinds, values)
    if path:
        q = _prefixed(q, path)
    return queryset.filter(q)


def _prefixed(q, path: str):
    from django.db.models import Q

    out = Q()
    out.connector, out.negated = q.connector, q.negated
    for child in q.children:
        if isinstance(child, Q):
            out.children.append(_prefixed(child, path))
        else:
            key, value = child
            out.children.append((f"{path}__{'pk' if key == 'pk' else key}", value))
    return out
