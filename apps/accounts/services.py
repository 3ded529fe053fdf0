"""Users and role assignments, managed by admins."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import audited
from apps.core.errors import Conflict, InvalidInput

from . import permissions
from .models import Role, RoleAssignment, Scope
from .permissions import authorize

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


def _end_sessions(user) -> int:
    """Delete every session of the user (Proxmox leaves them alive; we do not)."""
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk):
            session.delete()
            ended += 1
    return ended


def user_set_active(*, actor, user, active: bool) -> None:
    action = "accounts.user.enable" if active else "accounts.user.disable"
    authorize(actor, "accounts.manage", action=action, target=user)
    with audited(actor=actor, action=action, target=user, atomic=True) as ev:
        if user.pk == actor.pk and not active:
            raise Conflict("You cannot disable your own account.")
        user.is_active = active
        user.save(update_fields=["is_active"])
        ev.params["sessions_ended"] = 0 if active else _end_sessions(user)


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
        ev.params = {"role": assignment.role, "scope": assignment.scope_label}
        assignment.delete()
    permissions.forget(user)
