"""Storage input, parsed once: sizes in GiB, percentages, ratios, breach actions, with
messages for people. The form fields (apps/storage/forms.py) are built on these, and the
pages and the `storage_quota` command validate through the forms; services take the typed
values (bytes, ints, Decimals)."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

from django.conf import settings

from apps.core.errors import InvalidInput

from .models import BreachAction

MIB = 1 << 20


def parse_gib_decimal(value, what: str = "size") -> Decimal:
    """A size in GiB: more than 0, at most STORAGE_MAX_SIZE_GIB, 3 decimals at most."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInput(f"Give the {what} in GiB, e.g. 20.")
    try:
        gib = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"The {what} {value!r} is not a number of GiB.")
    if not gib.is_finite():
        raise InvalidInput(f"The {what} must be a finite number of GiB.")
    if gib <= 0:
        raise InvalidInput(f"The {what} must be more than 0 GiB (got {value}).")
    maximum = settings.STORAGE_MAX_SIZE_GIB
    if gib > maximum:
        raise InvalidInput(f"The {what} of {value} GiB is larger than the {maximum} GiB this portal accepts.")
    if gib.as_tuple().exponent < -3:
        raise InvalidInput(f"The {what} {value} has more than 3 decimals; give it in whole MiB at most.")
    return gib


def gib_to_bytes(gib: Decimal | int | float) -> int:
    """GiB -> bytes, rounded up to whole MiB."""
    mib = int((Decimal(str(gib)) * 1024).to_integral_value(rounding=ROUND_CEILING))
    return mib * MIB


def parse_gib(value, what: str = "size") -> int:
    """A size in GiB (up to 3 decimals) -> bytes, rounded up to whole MiB."""
    return gib_to_bytes(parse_gib_decimal(value, what))


def parse_percent(value, what: str = "alert threshold") -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"The {what} must be a whole percentage from 1 to 100.")
    try:
        percent = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInput(f"The {what} must be a whole percentage from 1 to 100 (got {value!r}).")
    if not 1 <= percent <= 100:
        raise InvalidInput(f"The {what} must be from 1 to 100 percent (got {percent}).")
    return percent


def parse_reserve(value) -> int:
    try:
        percent = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInput(f"The reserve must be a whole percentage from 0 to 99 (got {value!r}).")
    if not 0 <= percent <= 99:
        raise InvalidInput(f"The reserve must be from 0 to 99 percent of the pool (got {percent}).")
    return percent


def parse_ratio(value) -> Decimal:
    try:
        ratio = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"The overcommit ratio must be a number such as 1.5 (got {value!r}).")
    if not ratio.is_finite() or ratio < 1 or ratio > 100:
        raise InvalidInput(f"The overcommit ratio must be from 1 (no overcommit) to 100 (got {value}).")
    if ratio.as_tuple().exponent < -2:
        raise InvalidInput("The overcommit ratio takes at most 2 decimals.")
    return ratio


def parse_action(value) -> str:
    if value not in BreachAction.values:
        choices = ", ".join(f"{v} ({label})" for v, label in BreachAction.choices)
        raise InvalidInput(f"Unknown breach action {value!r}: choose {choices}.")
    return value
