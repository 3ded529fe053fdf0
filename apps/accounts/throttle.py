"""Login throttling: after LOGIN_FAILURE_LIMIT failures for a user name, or ten times as many
from one address (behind a proxy many people share one), within LOGIN_FAILURE_WINDOW
seconds, further attempts are refused until the window passes."""

from django.conf import settings
from django.core.cache import cache


def _keys(username: str, ip: str | None) -> list[str]:
    return [f"login-fail:user:{username.lower()[:150]}", f"login-fail:ip:{ip or 'unknown'}"]


def is_locked(username: str, ip: str | None) -> bool:
    user_key, ip_key = _keys(username, ip)
    limit = settings.LOGIN_FAILURE_LIMIT
    return (cache.get(user_key) or 0) >= limit or (cache.get(ip_key) or 0) >= 10 * limit


def note_failure(username: str, ip: str | None) -> None:
    for key in _keys(username, ip):
        cache.add(key, 0, settings.LOGIN_FAILURE_WINDOW)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, settings.LOGIN_FAILURE_WINDOW)


def clear(username: str, ip: str | None) -> None:
    cache.delete(_keys(username, ip)[0])
