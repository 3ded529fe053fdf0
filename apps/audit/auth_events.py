"""Sign-in events come from here only: Django's auth signals (signed in, signed out, a
failed sign-in, which the sign-in form also sends for a throttled attempt) are written to
the audit log."""

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .services import record


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    record(actor=user, action="auth.login", target=user, outcome="success")


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        record(actor=user, action="auth.logout", target=user, outcome="success")


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, throttled: bool = False, **kwargs):
    """A wrong password (django.contrib.auth.authenticate), or a sign-in refused unchecked
    because of too many failures (the sign-in form sends throttled=True)."""
    username = str(credentials.get("username", ""))[:150]
    record(
        actor=None,
        actor_name=username or "anonymous",
        action="auth.login",
        outcome="denied" if throttled else "failed",
        target=("user", "", username),
        error="throttled after repeated failures" if throttled else "wrong username or password, or account disabled",
    )
