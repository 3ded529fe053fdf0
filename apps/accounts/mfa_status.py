"""Whether a user signs in with a second factor, as the access review reports it.

The two-factor sign-in module provides these answers from its enrolled devices; until it is
installed nobody has a second factor, so every user reads as without one."""

from __future__ import annotations


def mfa_enabled(user) -> bool:
    """True when `user` has a confirmed second factor."""
    return bool(mfa_enabled_user_ids([user.pk])) if user is not None and user.pk else False


def mfa_enabled_user_ids(user_ids) -> set[int]:
    """The ids among `user_ids` that have a confirmed second factor (one query for a whole
    report, so the access report's query count does not grow with its users)."""
    return set()
