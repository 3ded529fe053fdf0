"""Ending a user's sessions at once, whatever server holds them.

Each session stores the user's epoch when they sign in (SESSION_KEY). `sessions_end(user)`
moves the epoch on in one UPDATE and writes it to the cache; `SessionEpochMiddleware`
compares the session's epoch with the user's current one on every authenticated request
(one cache read; the database only on a cache miss) and signs out a session that is behind,
so the request is treated as anonymous and sent to the login page. Django's own check of the
password hash ends sessions on a password change too; the epoch covers role revocations and
disabled accounts with the same mechanism."""

from __future__ import annotations

from django.contrib.auth import user_logged_in
from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.dispatch import receiver

SESSION_KEY = "portal_session_epoch"
CACHE_TTL = 24 * 3600


def _cache_key(user_id) -> str:
    return f"portal:session-epoch:{user_id}"


def current_epoch(user_id) -> int:
    """The user's epoch: from the cache, else the database (then cached)."""
    key = _cache_key(user_id)
    epoch = cache.get(key)
    if epoch is None:
        from .models import SessionEpoch

        epoch = SessionEpoch.objects.filter(user_id=user_id).values_list("epoch", flat=True).first() or 0
        cache.set(key, epoch, CACHE_TTL)
    return epoch


def sessions_end(user) -> int:
    """Every session of `user` opened so far is refused from its next request on; the new
    epoch is returned. Callers audit it as part of their own action."""
    from .models import SessionEpoch

    updated = SessionEpoch.objects.filter(user_id=user.pk).update(epoch=F("epoch") + 1)
    if not updated:
        SessionEpoch.objects.get_or_create(user_id=user.pk, defaults={"epoch": 1})
    epoch = SessionEpoch.objects.filter(user_id=user.pk).values_list("epoch", flat=True).get()
    key = _cache_key(user.pk)
    cache.delete(key)
    # cached once committed: a rolled-back change must not leave a newer epoch in the cache
    transaction.on_commit(lambda: cache.set(key, epoch, CACHE_TTL))
    return epoch


def keep_this_session(request) -> None:
    """After ending the signed-in user's other sessions, keep the one making the request."""
    request.session[SESSION_KEY] = current_epoch(request.user.pk)


@receiver(user_logged_in)
def _remember_epoch(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_KEY] = current_epoch(user.pk)


class SessionEpochMiddleware:
    """Signs out a session whose epoch is behind its user's (placed after Django's
    AuthenticationMiddleware; LoginRequiredMiddleware then sends the request to login)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if request.session.get(SESSION_KEY, 0) != current_epoch(user.pk):
                from apps.audit.services import record

                record(actor=user, action="auth.session.ended", target=user, outcome="denied",
                       error="the session was ended by an access change (role revoked, account disabled, "
                       "or password changed)")  # fmt: skip
                request.session.flush()
                anonymous = AnonymousUser()
                anonymous.is_verified = lambda: False  # as django-otp's middleware gives anonymous users
                request.user = anonymous
        return self.get_response(request)
