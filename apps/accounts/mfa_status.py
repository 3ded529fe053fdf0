"""Is two-factor sign-in on for a user? One question, asked by the access review and the
sign-in policy (apps.accounts.mfa)."""

from __future__ import annotations


def mfa_enabled(user) -> bool:
    """True when the user has a confirmed TOTP device (enrolment finished)."""
    if user is None or not getattr(user, "pk", None):
        return False
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).exists()
