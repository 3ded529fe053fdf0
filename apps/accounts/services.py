"""Users and role assignments, managed by admins."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput

from . import permissions
from .models import Role, RoleAssignment, Scope
from .permissions import authorize
from .sessions import sessions_end

User = get_user_model()


def user_create(*, actor, username: str, password: str, email: str = "", role: str = Role.VIEWER) -> User:
    action = "accounts.user.create"
    authorize(actor, "accounts.manage", action=action, target=("user", "", username))
    with audited(actor=actor, action=action, target=("user", "", username), atomic=True) as ev:
        user = User.objects.create_user(username=username, password=password, email=email)
        assignment = RoleAssignment.objects.create(user=user, role=role, scope=Scope.GLOBAL, created_by=actor.username)
        ev.target = user
        ev.params = {"role": role, "scope": assignment.scope_label, "email": email}
    return user


def user_set_active(*, actor, user, active: bool, reason: str = "") -> None:
    """Enable or disable an account (actor None: the system, e.g. the dormant-account policy)."""
    action = "accounts.user.enable" if active else "accounts.user.disable"
    authorize(actor, "accounts.manage", action=action, target=user)
    with audited(actor=actor, action=action, target=user, params={"reason": reason} if reason else None,
                 atomic=True) as ev:  # fmt: skip
        if actor is not None and user.pk == actor.pk and not active:
            raise Conflict("You cannot disable your own account.")
        user.is_active = active
        user.save(update_fields=["is_active"])
        if not active:  # Proxmox leaves a disabled user's sessions alive; we do not
            sessions_end(user)
            ev.params["sessions_ended"] = "all"


def user_password_set(*, actor, user, password: str) -> None:
    """Set a user's password (an admin for anyone, a user for themselves): every other
    session of the user ends at once. A caller acting in a request of that same user keeps
    its own session with `sessions.keep_this_session(request)`."""
    action = "accounts.user.password"
    if actor is None or actor.pk != user.pk:
        authorize(actor, "accounts.manage", action=action, target=user)
    with audited(actor=actor, action=action, target=user, atomic=True) as ev:
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise InvalidInput(" ".join(exc.messages)) from None
        user.set_password(password)
        user.save(update_fields=["password"])
        sessions_end(user)
        ev.params["sessions_ended"] = "all"


def assignment_add(*, actor, user, role: str, scope: str, host=None, zone: str = "", vm=None) -> RoleAssignment:
    action = "accounts.role.assign"
    authorize(actor, "accounts.manage", action=action, target=user)
    assignment = RoleAssignment(
        user=user,
        role=role,
        scope=scope,
        host=host if scope == Scope.HOST else None,
        zone=zone if scope == Scope.ZONE else "",
        vm=vm if scope == Scope.VM else None,
        created_by=actor.username,
    )
    params = {"role": role, "scope": scope, "host": str(host or ""), "zone": zone, "vm": str(vm or "")}
    duplicate = Conflict("This user already has that role over that scope.")
    with audited(actor=actor, action=action, target=user, params=params, atomic=True) as ev:
        try:
            assignment.full_clean(exclude=["user"])
        except ValidationError as exc:
            raise InvalidInput("; ".join(exc.messages)) from None
        same = RoleAssignment.objects.filter(
            user=user, role=role, scope=scope, host=assignment.host, zone=assignment.zone, vm=assignment.vm
        )
        if same.exists():  # NULLs are distinct in a unique constraint, so ask explicitly
            raise duplicate
        try:
            with transaction.atomic():
                assignment.save()
        except IntegrityError:
            raise duplicate from None
        ev.params["scope"] = assignment.scope_label
    permissions.forget(user)
    return assignment


def assignment_remove(*, actor, assignment: RoleAssignment) -> None:
    action = "accounts.role.revoke"
    user = assignment.user
    authorize(actor, "accounts.manage", action=action, target=user)
    with audited(actor=actor, action=action, target=user, atomic=True) as ev:
        remaining_admins = RoleAssignment.objects.filter(role=Role.ADMIN, user__is_active=True).exclude(
            pk=assignment.pk
        )
        if assignment.role == Role.ADMIN and not remaining_admins.exists():
            raise Conflict("This is the last active admin assignment; give the admin role to someone else first.")
        ev.params = {"role": assignment.role, "scope": assignment.scope_label, "sessions_ended": "all"}
        assignment.delete()
        sessions_end(user)  # the revoked role ends with the sessions that held it
    permissions.forget(user)
