"""The VM's graphical console: the portal mints a one-time, short-lived, signed token (after
the permission check, audited), the console proxy (console_proxy.py) redeems it and joins
the browser's websocket to the VM's VNC unix socket, auditing the session's start and end.

The token binds the user, the VM, a ConsoleSession row (single use) and an expiry. The VNC
socket's path comes from the VM's row (the state collector read it from the live
definition): the browser never names a path, a host or a port."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import has_perm
from apps.audit.services import audited, record
from apps.core.errors import Conflict, PortalError

from .models import ConsoleSession, VirtualMachine

SALT = "apps.vms.console"


class ConsoleRefused(PortalError):
    """The proxy refuses a websocket: bad, expired, reused or foreign token, or no console."""

    status = 403


@dataclass(frozen=True)
class ConsoleGrant:
    session_id: int
    vm_name: str
    socket: str
    user_id: int = 0
    vm_id: int = 0


def console_socket(vm: VirtualMachine) -> str:
    """The VNC unix socket of the VM as the state collector last read it; Conflict with the
    reason when the VM has no console the proxy may open."""
    if vm.last_state != "running":
        raise Conflict(f"{vm.name} is {vm.last_state or 'not running'}: a console needs a running VM.")
    graphics = (vm.security or {}).get("graphics") or []
    vnc = [g for g in graphics if g.get("type") == "vnc"]
    for g in vnc:
        if g.get("listen") == "socket" and g.get("socket"):
            return g["socket"]
    if vnc:
        g = vnc[0]
        where = f"{g.get('address') or '?'}:{g.get('port') or '?'}" if g.get("listen") == "address" else "nowhere"
        raise Conflict(
            f"{vm.name}'s VNC console listens on {where}, not on a unix socket; the portal opens consoles "
            "through a unix socket only. Define its graphics as <graphics type='vnc'><listen type='socket'/>"
            "</graphics> and restart it."
        )
    if vm.security_read_at is None:
        raise Conflict(f"{vm.name}'s definition has not been read yet; try again in a few seconds.")
    raise Conflict(f"{vm.name} has no VNC console.")


def console_open(*, actor, vm: VirtualMachine, source_ip: str | None = None) -> str:
    """A token for one console session of `vm` (vms.operate over it), valid for
    CONSOLE_TOKEN_SECONDS and only once. Audited as vms.console.open."""
    with audited(actor=actor, action="vms.console.open", target=vm, perm="vms.operate", atomic=True) as ev:
        console_socket(vm)
        session = ConsoleSession.objects.create(
            vm=vm, user=actor, nonce=secrets.token_urlsafe(32), source_ip=source_ip,
            expires_at=timezone.now() + timedelta(seconds=settings.CONSOLE_TOKEN_SECONDS),
        )  # fmt: skip
        ev.params["session"] = session.pk
    return signing.dumps({"s": session.pk, "n": session.nonce, "u": actor.pk, "v": vm.pk}, salt=SALT, compress=True)


def _refuse(error: str, *, user=None, vm=None, session: ConsoleSession | None = None) -> ConsoleRefused:
    params = {"session": session.pk} if session is not None else {}
    record(actor=user, action="vms.console.start", target=vm, outcome="denied", params=params, error=error,
           actor_name=None if user is not None else "anonymous")  # fmt: skip
    return ConsoleRefused(error)


def console_redeem(token: str, *, source_ip: str | None = None) -> ConsoleGrant:
    """The proxy's check of a token: signature, expiry, single use, the user still active and
    still allowed to operate the VM, the VM still running with a VNC socket. Every refusal
    and the start are audited (vms.console.start)."""
    try:
        claims = signing.loads(token or "", salt=SALT, max_age=settings.CONSOLE_TOKEN_SECONDS)
        session_id, nonce, user_id, vm_id = int(claims["s"]), str(claims["n"]), int(claims["u"]), int(claims["v"])
    except signing.SignatureExpired:
        raise _refuse("console token expired") from None
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise _refuse("console token invalid (bad signature or malformed)") from None
    session = ConsoleSession.objects.select_related("vm__host", "user").filter(pk=session_id).first()
    if session is None or session.nonce != nonce or session.user_id != user_id or session.vm_id != vm_id:
        raise _refuse("console token names no such session")
    user, vm = session.user, session.vm
    now = timezone.now()
    if session.expires_at <= now:
        raise _refuse("console token expired", user=user, vm=vm, session=session)
    with transaction.atomic():
        used = ConsoleSession.objects.filter(pk=session.pk, redeemed_at__isnull=True).update(redeemed_at=now)
    if not used:
        raise _refuse("console token already used", user=user, vm=vm, session=session)
    if not get_user_model().objects.filter(pk=user.pk, is_active=True).exists():
        raise _refuse("user disabled", user=user, vm=vm, session=session)
    if not has_perm(user, "vms.operate", vm):
        raise _refuse("requires vms.operate", user=user, vm=vm, session=session)
    try:
        socket = console_socket(VirtualMachine.objects.get(pk=vm.pk))
    except Conflict as exc:
        raise _refuse(exc.message, user=user, vm=vm, session=session) from None
    record(actor=user, action="vms.console.start", target=vm, outcome="success",
           params={"session": session.pk, "source_ip": source_ip or ""})  # fmt: skip
    return ConsoleGrant(session_id=session.pk, vm_name=vm.name, socket=socket, user_id=user.pk, vm_id=vm.pk)


def console_still_allowed(grant: ConsoleGrant) -> str:
    """"" while the session's user is active and may still operate its VM, else why not: the
    proxy asks every few seconds and ends a session whose access was taken away (a disabled
    user, a revoked role), as the portal ends the web sessions of a disabled user."""
    user = get_user_model().objects.filter(pk=grant.user_id, is_active=True).first()
    if user is None:
        return "access revoked: user disabled"
    vm = VirtualMachine.objects.filter(pk=grant.vm_id, present=True).first()
    if vm is None:
        return "the VM is gone"
    if not has_perm(user, "vms.operate", vm):
        return "access revoked: no vms.operate over the VM"
    return ""


def console_end(grant: ConsoleGrant, *, to_guest: int, to_browser: int, reason: str) -> None:
    """Record the end of a session (either side closed, an error, the time limit)."""
    session = ConsoleSession.objects.select_related("vm", "user").get(pk=grant.session_id)
    started = session.redeemed_at or session.created_at
    ConsoleSession.objects.filter(pk=session.pk).update(ended_at=timezone.now(), bytes_to_guest=to_guest,
                                                         bytes_to_browser=to_browser)  # fmt: skip
    record(actor=session.user, action="vms.console.end", target=session.vm, outcome="success",
           params={"session": session.pk, "reason": reason, "seconds": int((timezone.now() - started).total_seconds()),
                   "bytes_to_guest": to_guest, "bytes_to_browser": to_browser})  # fmt: skip
