from django import template

from apps.core.units import format_bytes

register = template.Library()

_SCALE = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


@register.filter
def size(value, unit: str = "B") -> str:
    """A size in binary units: {{ bytes|size }}, {{ memory_kib|size:"KiB" }}. The one size
    filter of the templates (never Django's decimal filesizeformat)."""
    try:
        return format_bytes(float(value or 0) * _SCALE[unit])
    except (TypeError, ValueError, KeyError):
        return ""


@register.filter
def percent(part, whole) -> int:
    whole = int(whole or 0)
    return 0 if whole <= 0 else min(999, round(100 * int(part or 0) / whole))


@register.simple_tag(takes_context=True)
def can(context, perm: str, obj=None) -> bool:
    """{% can "storage.change" vm as may_change %}: whether the signed-in user holds `perm`
    over this object (its VM, zone or host scope), the question the service will ask. Gate
    per-object buttons with this, never with the scope-less `portal_perms` set."""
    from apps.accounts.permissions import has_perm

    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    return has_perm(user, perm, obj)
