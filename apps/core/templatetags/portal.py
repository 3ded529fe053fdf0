from django import template

register = template.Library()


@register.filter
def mib(kib) -> str:
    """KiB -> 'N MiB'."""
    return f"{int(kib or 0) // 1024} MiB"


@register.filter
def percent(part, whole) -> int:
    whole = int(whole or 0)
    return 0 if whole <= 0 else min(999, round(100 * int(part or 0) / whole))
