"""Is two-factor sign-in on for a user? One question, asked by the access review and the
sign-in policy (apps.accounts.mfa)."""

from __future__ import annotations


def mfa_enabled(user) -> bool:
    """True when the user has a confirmed TOTP device (enrolment finished)."""
    if user is None or not getattr(user, "pk", None):
        return False
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).exists()


def mfa_enabled_user_ids(user_ids) -> set[int]:
    """The ids among `user_ids` with a confirmed TOTP device: one query for a whole report,
    so the access report's query count does not grow with its users."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    ids = list(user_ids)
    if not ids:
        return set()
    return set(TOTPDevice.objects.filter(confirmed=True, user_id__in=ids).values_list("user_id", flat=True).distinct())
