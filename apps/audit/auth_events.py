"""Sign-in events come from here only: Django's auth signals (signed in, signed out, a
failed sign-in, including one django-axes refused unchecked because the name is locked
out) and axes' lockout signal are written to the audit log. The second factor's events
(auth.mfa.*) are recorded by apps.accounts.mfa."""

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from .services import record


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    """The password was right. For a user with two-factor sign-in (or required to enrol) the
    session can do nothing else until the code step (auth.mfa.verify) or enrolment
    (auth.mfa.enrol): the event says so, so that a reader does not take it for a way in."""
    from apps.accounts import mfa

    pending = mfa.mfa_enabled(user) or mfa.required_for(user)
    params = {"second_factor": "pending"} if pending else {}
    record(actor=user, action="auth.login", target=user, outcome="success", params=params)


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        record(actor=user, action="auth.logout", target=user, outcome="success")


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, throttled: bool = False, **kwargs):
    """A wrong password (django.contrib.auth.authenticate), or a sign-in refused unchecked
    because the name is locked out (axes' backend marks the request; that attempt is not
    counted as a new failure, so it has no axes_failures_since_start)."""
    if getattr(request, "axes_locked_out", False) and getattr(request, "axes_failures_since_start", None) is None:
        throttled = True
    username = str(credentials.get("username", ""))[:150]
    record(
        actor=None,
        actor_name=username or "anonymous",
        action="auth.login",
        outcome="denied" if throttled else "failed",
        target=("user", "", username),
        error="throttled after repeated failures" if throttled else "wrong username or password, or account disabled",
    )


@receiver(user_locked_out)
def _locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    """A user name locked out by django-axes: one event per lockout, at the failure that
    caused it (axes also sends this for each refused try during the lockout; those are
    recorded above as denied sign-ins)."""
    if request is not None and getattr(request, "axes_failures_since_start", None) is None:
        return
    name = str(username or "")[:150]
    record(
        actor=None,
        actor_name=name or "anonymous",
        action="auth.login.lockout",
        outcome="denied",
        target=("user", "", name),
        params={"failures": getattr(request, "axes_failures_since_start", None)},
        error="locked out after repeated failed sign-ins",
    )
