"""Users and role assignments, managed by admins."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import record
from apps.core.errors import Conflict, InvalidInput

from . import permissions
from .models import Role, RoleAssignment, Scope

User = get_user_model()


def user_create(*, actor, username: str, password: str, email: str = "", role: str = Role.VIEWER) -> User:
    permissions.require(actor, "accounts.manage", action="accounts.user.create", target=("user", "", username))
    with transaction.atomic():
        user = User.objects.create_user(username=username, password=password, email=email)
        assignment = RoleAssignment.objects.create(user=user, role=role, scope=Scope.GLOBAL, created_by=actor.username)
        record(
            actor=actor,
            action="accounts.user.create",
            target=user,
            outcome="success",
            params={"role": role, "scope": assignment.scope_label, "email": email},
        )
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
    permissions.require(actor, "accounts.manage", action=action, target=user)
    if user.pk == actor.pk and not active:
        record(actor=actor, action=action, target=user, outcome="failed", error="cannot disable yourself")
        raise Conflict("You cannot disable your own account.")
    with transaction.atomic():
        user.is_active = active
        user.save(update_fields=["is_active"])
        ended = 0 if active else _end_sessions(user)
        record(actor=actor, action=action, target=user, outcome="success", params={"sessions_ended": ended})


def assignment_add(*, actor, user, role: str, scope: str, host=None, zone: str = "", vm=None) -> RoleAssignment:
    action = "accounts.role.assign"
    permissions.require(actor, "accounts.manage", action=action, target=user)
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
    try:
        assignment.full_clean(exclude=["user"])
        same = RoleAssignment.objects.filter(
            user=user, role=role, scope=scope, host=assignment.host, zone=assignment.zone, vm=assignment.vm
        )
        if same.exists():  # NULLs are distinct in a unique constraint, so ask explicitly
            raise IntegrityError("duplicate")
        with transaction.atomic():
            assignment.save()
            record(
                actor=actor,
                action=action,
                target=user,
                outcome="success",
                params={**params, "scope": assignment.scope_label},
            )
    except ValidationError as exc:
        message = "; ".join(exc.messages)
        record(actor=actor, action=action, target=user, outcome="failed", params=params, error=message)
        raise InvalidInput(message) from None
    except IntegrityError:
        record(actor=actor, action=action, target=user, outcome="failed", params=params, error="duplicate")
        raise Conflict("This user already has that role over that scope.") from None
    permissions.forget(user)
    return assignment


def assignment_remove(*, actor, assignment: RoleAssignment) -> None:
    action = "accounts.role.revoke"
    user = assignment.user
    permissions.require(actor, "accounts.manage", action=action, target=user)
    remaining_admins = RoleAssignment.objects.filter(role=Role.ADMIN, user__is_active=True).exclude(pk=assignment.pk)
    if assignment.role == Role.ADMIN and not remaining_admins.exists():
        record(actor=actor, action=action, target=user, outcome="failed", error="last admin")
        raise Conflict("This is the last active admin assignment; give the admin role to someone else first.")
    with transaction.atomic():
        label = assignment.scope_label
        assignment.delete()
        record(
            actor=actor, action=action, target=user, outcome="success", params={"role": assignment.role, "scope": label}
        )
    permissions.forget(user)
