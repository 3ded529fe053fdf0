"""Throttling of password guesses, with one counter per purpose so that one cannot lock
the other.

- Sign-in itself is throttled by django-axes (settings AXES_*: LOGIN_FAILURE_LIMIT failures
  per user name lock it for LOGIN_FAILURE_WINDOW seconds; see login_failure_limit below).
- LOGIN here: the same rule for other secrets typed by people (a VM's manual passphrase,
  apps.encryption.services.manual): LOGIN_FAILURE_LIMIT failures for a key, or ten times as
  many from one address, and further tries are refused.
- Re-authentication (REAUTH, the sudo mode of apps.accounts.reauth): after
  REAUTH_FAILURE_LIMIT wrong passwords typed by a signed-in user, further re-authentications
  are refused. Kept apart from the sign-in counters: a stolen session guessing the
  password must not lock the real user out of signing in.

Both last LOGIN_FAILURE_WINDOW seconds from the first failure."""

from datetime import timedelta

from django.conf import settings
from django.core.cache import cache

LOGIN = "login"
REAUTH = "reauth"


def _keys(username: str, ip: str | None, kind: str) -> list[str]:
    user_key = f"{kind}-fail:user:{username.lower()[:150]}"
    if kind == REAUTH:
        return [user_key]  # the user is signed in already: their address adds nothing
    if kind != LOGIN:
        raise ValueError(f"unknown throttle {kind!r}")
    return [user_key, f"{kind}-fail:ip:{ip or 'unknown'}"]


def _limits(kind: str) -> list[int]:
    if kind == REAUTH:
        return [settings.REAUTH_FAILURE_LIMIT]
    return [settings.LOGIN_FAILURE_LIMIT, 10 * settings.LOGIN_FAILURE_LIMIT]


def is_locked(username: str, ip: str | None, kind: str = LOGIN) -> bool:
    keys = _keys(username, ip, kind)
    return any((cache.get(key) or 0) >= limit for key, limit in zip(keys, _limits(kind), strict=True))


def note_failure(username: str, ip: str | None, kind: str = LOGIN) -> None:
    for key in _keys(username, ip, kind):
        cache.add(key, 0, settings.LOGIN_FAILURE_WINDOW)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, settings.LOGIN_FAILURE_WINDOW)


def clear(username: str, ip: str | None, kind: str = LOGIN) -> None:
    cache.delete(_keys(username, ip, kind)[0])


def login_failure_limit(request=None, credentials=None) -> int:
    """settings.AXES_FAILURE_LIMIT: the sign-in lockout follows LOGIN_FAILURE_LIMIT."""
    return settings.LOGIN_FAILURE_LIMIT


def login_cool_off(request=None) -> timedelta:
    """settings.AXES_COOLOFF_TIME: a lockout lasts LOGIN_FAILURE_WINDOW seconds."""
    return timedelta(seconds=settings.LOGIN_FAILURE_WINDOW)
