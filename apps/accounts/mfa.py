"""Two-factor sign-in: TOTP codes (django-otp's TOTPDevice) and ten one-time recovery codes
(its StaticDevice).

- Enrolment: `enrol_start` makes an unconfirmed TOTP device (QR code and secret shown on
  the page); `enrol_confirm` turns it on once a valid code proves the app has the secret,
  and hands out the recovery codes (shown once). `recovery_regenerate` replaces them.
- Sign-in: password first (Django's LoginView, throttled by django-axes), then
  SecondFactorMiddleware lets the session do nothing but type a code (`verify_sign_in`)
  when the user has a device, or enrol when the policy needs one and they have none
  (`required_for`: MFA_REQUIRED_ROLES, or everyone with MFA_REQUIRED_FOR_ALL).
- Re-authentication (apps.accounts.reauth) asks for a code too when the user has a device
  (`check_code`).
- A TOTP code is accepted once: TOTPDevice keeps the last time step used (last_t) and
  refuses it and earlier ones, under a row lock. Wrong codes are throttled by django-otp's
  per-device back-off (1 s, 2 s, 4 s, ... after successive failures).
- An admin may turn a user's two-factor sign-in off (`mfa_disable`, after re-authenticating);
  that user then enrols again where the policy requires it.
Every outcome is audited (auth.mfa.*); secrets and codes never are.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import urlencode

import django_otp
from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django_otp.oath import hotp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.audit.services import audited, record
from apps.core.errors import Conflict, PortalError

from . import permissions
from .mfa_status import mfa_enabled
from .permissions import authorize

DEVICE_NAME = "authenticator"
TOTP_RE = re.compile(r"\d{6}")
RECOVERY_RE = re.compile(r"[a-z2-7]{8}")

MALFORMED = "malformed"
NO_DEVICE = "no_device"
THROTTLED = "throttled"
REPLAYED = "replayed"
WRONG = "wrong"


class MFARefused(PortalError):
    status = 400

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------ policy


def required_for(user) -> bool:
    """Must this user have two-factor sign-in (whether or not they have it yet)?"""
    if settings.MFA_REQUIRED_FOR_ALL:
        return True
    roles = set(settings.MFA_REQUIRED_ROLES)
    return any(a.role in roles for a in permissions.assignments(user))


def totp_device(user, *, confirmed: bool = True, lock: bool = False) -> TOTPDevice | None:
    devices = TOTPDevice.objects.filter(user_id=user.pk, confirmed=confirmed)
    if lock:
        devices = devices.select_for_update()
    return devices.order_by("id").first()


def recovery_codes_left(user) -> int:
    return StaticToken.objects.filter(device__user_id=user.pk, device__confirmed=True).count()


# ------------------------------------------------------------------ codes


def _normalise(code: str) -> tuple[str, str]:
    """('totp' or 'recovery', the code as stored); MFARefused for anything else."""
    cleaned = re.sub(r"[\s-]", "", code or "").lower()
    if TOTP_RE.fullmatch(cleaned):
        return "totp", cleaned
    if RECOVERY_RE.fullmatch(cleaned):
        return "recovery", cleaned
    raise MFARefused(
        "A code is the 6 digits your authenticator app shows, or one 8-character recovery code.", MALFORMED
    )


def _throttled(device) -> MFARefused | None:
    allowed, info = device.verify_is_allowed()
    if allowed:
        return None
    wait = ""
    if info and info.get("locked_until"):
        from django.utils import timezone

        seconds = max(1, int((info["locked_until"] - timezone.now()).total_seconds()) + 1)
        wait = f" Wait {seconds} s and try again."
    return MFARefused(f"Too many wrong codes.{wait}", THROTTLED)


def _was_last_used(device: TOTPDevice, token: str) -> bool:
    """Is `token` the code of the time step this device last accepted (a replay)?"""
    if device.last_t < 0:
        return False
    return f"{hotp(device.bin_key, device.last_t, device.digits):0{device.digits}d}" == token


@dataclass
class Checked:
    device: TOTPDevice | StaticDevice
    method: str  # "totp" or "recovery"


def check_code(user, code: str) -> Checked:
    """Verify a TOTP or recovery code of `user`'s (confirmed) devices. A used recovery code
    is gone; a TOTP code's time step cannot be used again. Raises MFARefused with a reason
    (the caller audits it). Throttle counts are kept even when the code is refused."""
    method, token = _normalise(code)
    refusal = None
    with transaction.atomic():
        totp = totp_device(user, lock=True)
        if totp is None:
            raise MFARefused(
                "Two-factor sign-in is not on for your account (it may have been turned off): "
                "this code belongs to no active device.",
                NO_DEVICE,
            )
        if method == "totp":
            device = totp
        else:
            device = StaticDevice.objects.select_for_update().filter(user_id=user.pk, confirmed=True).first()
            if device is None:
                raise MFARefused("You have no recovery codes: use your authenticator app's code.", NO_DEVICE)
        refusal = _throttled(device)
        if refusal is None and not device.verify_token(token):  # counts the failure for the back-off
            if method == "totp" and _was_last_used(device, token):
                refusal = MFARefused("That code was already used: wait for the next one.", REPLAYED)
            elif method == "totp":
                refusal = MFARefused("That code is wrong. Check your device's clock and type the current one.", WRONG)
            else:
                refusal = MFARefused("That recovery code is wrong or was already used.", WRONG)
    if refusal is not None:
        raise refusal
    return Checked(device=device, method=method)


def _mark_verified(request, device) -> None:
    request.session.cycle_key()  # a session that gained its second factor gets a new id
    django_otp.login(request, device)


# ------------------------------------------------------------------ sign-in


def verify_sign_in(request, code: str) -> Checked:
    """The second step of signing in: audited as auth.mfa.verify (and auth.mfa.recovery_used)."""
    user = request.user
    try:
        checked = check_code(user, code)
    except MFARefused as exc:
        record(
            actor=user,
            action="auth.mfa.verify",
            target=user,
            outcome="denied" if exc.reason == THROTTLED else "failed",
            params={"reason": exc.reason},
            error=exc.message,
        )
        raise
    _mark_verified(request, checked.device)
    record(actor=user, action="auth.mfa.verify", target=user, outcome="success", params={"method": checked.method})
    if checked.method == "recovery":
        record_recovery_use(user)
    return checked


def record_recovery_use(user) -> None:
    record(
        actor=user,
        action="auth.mfa.recovery_used",
        target=user,
        outcome="success",
        params={"codes_left": recovery_codes_left(user)},
    )


# ------------------------------------------------------------------ enrolment


def enrol_start(user) -> TOTPDevice:
    """The user's unconfirmed device (made once, kept until confirmed): its secret is what
    the QR code carries."""
    if mfa_enabled(user):
        raise Conflict("Two-factor sign-in is already on for your account.")
    return totp_device(user, confirmed=False) or TOTPDevice.objects.create(
        user=user, name=DEVICE_NAME, confirmed=False
    )


def _new_recovery_codes(user) -> list[str]:
    StaticDevice.objects.filter(user_id=user.pk).delete()
    device = StaticDevice.objects.create(user=user, name="recovery codes", confirmed=True)
    codes = [StaticToken.random_token() for _ in range(settings.MFA_RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=c) for c in codes])
    return codes


def enrol_confirm(request, code: str) -> list[str]:
    """Turn two-factor sign-in on with a valid code of the unconfirmed device; returns the
    new recovery codes (shown once, never stored in clear anywhere else). The session counts
    as verified: the code proved the device."""
    user = request.user
    action = "auth.mfa.enrol"
    try:
        method, token = _normalise(code)
        if method != "totp":
            raise MFARefused("Type the 6-digit code your authenticator app shows.", MALFORMED)
        with transaction.atomic():
            if totp_device(user) is not None:
                raise MFARefused("Two-factor sign-in is already on for your account.", "enrolled")
            device = totp_device(user, confirmed=False, lock=True)
            if device is None:
                raise MFARefused("Open the enrolment page again: it makes your secret.", NO_DEVICE)
            refusal = _throttled(device)
            ok = refusal is None and device.verify_token(token)
            if ok:
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                codes = _new_recovery_codes(user)
                record(
                    actor=user,
                    action=action,
                    target=user,
                    outcome="success",
                    params={"device": device.name, "recovery_codes": len(codes)},
                )
        if refusal is not None:
            raise refusal
        if not ok:
            raise MFARefused("That code is wrong. Check your device's clock and type the current one.", WRONG)
    except MFARefused as exc:
        params = {"reason": exc.reason}
        record(actor=user, action=action, target=user, outcome="failed", params=params, error=exc.message)
        raise
    _mark_verified(request, device)
    return codes


def recovery_regenerate(*, actor) -> list[str]:
    """New recovery codes for the actor's own account; the old ones stop working."""
    with audited(actor=actor, action="auth.mfa.recovery_regenerate", target=actor, atomic=True) as ev:
        if not mfa_enabled(actor):
            raise Conflict("Turn two-factor sign-in on first: recovery codes come with it.")
        codes = _new_recovery_codes(actor)
        ev.params = {"recovery_codes": len(codes)}
    return codes


def mfa_disable(*, actor, user) -> None:
    """An admin turns a user's two-factor sign-in off (a lost phone and no recovery codes):
    their devices and recovery codes are deleted; their sessions verified by the device are
    no longer. Where the policy requires it, they enrol again at their next request."""
    action = "auth.mfa.disable"
    authorize(actor, "accounts.manage", action=action, target=user)
    with audited(actor=actor, action=action, target=user, atomic=True) as ev:
        devices = [TOTPDevice.objects.filter(user_id=user.pk), StaticDevice.objects.filter(user_id=user.pk)]
        removed = sum(d.count() for d in devices)
        if not removed:
            raise Conflict(f"Two-factor sign-in is not on for {user.username}.")
        for d in devices:
            d.delete()  # a static device's recovery codes with it
        ev.params = {"devices_removed": removed}


def qr_data_uri(device: TOTPDevice) -> str:
    """The device's otpauth:// URL as an SVG QR code (a data: URI, allowed by the CSP)."""
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage, box_size=8)
    return "data:image/svg+xml;base64," + base64.b64encode(image.to_string()).decode()


def secret_for_manual_entry(device: TOTPDevice) -> str:
    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


# ------------------------------------------------------------------ the middleware

VERIFY_PAGES = frozenset({"logout", "accounts:mfa_verify"})
ENROL_PAGES = frozenset({"logout", "accounts:mfa_setup", "accounts:mfa_confirm"})


class SecondFactorMiddleware:
    """A signed-in session that has not given its second factor can only give it (the user
    has a device), or only enrol (the policy requires one and they have none), or sign out.
    Sessions verified by a device cost no query here (django-otp's OTPMiddleware loads it)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        user = request.user
        if not user.is_authenticated or not getattr(view_func, "login_required", True):
            return None
        if user.is_verified():
            return None
        if mfa_enabled(user):
            allowed, page = VERIFY_PAGES, "accounts:mfa_verify"
        elif required_for(user):
            allowed, page = ENROL_PAGES, "accounts:mfa_setup"
        else:
            return None
        match = request.resolver_match
        if match is not None and match.view_name in allowed:
            return None
        from apps.core.views_util import redirect_htmx

        back = request.get_full_path() if request.method == "GET" and not request.htmx else ""
        url = reverse(page) + (f"?{urlencode({'next': back})}" if back else "")
        return redirect_htmx(request, url)
