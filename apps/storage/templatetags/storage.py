from django import template

from apps.storage.services import alert_badge_count
from apps.storage.services.common import fmt_bytes

register = template.Library()


@register.inclusion_tag("storage/partials/_badge.html", takes_context=True)
def storage_alert_badge(context):
    """The number of open, unacknowledged storage alerts the user can see."""
    request = context.get("request")
    return {"count": alert_badge_count(getattr(request, "user", None))}


@register.filter
def gib(value) -> str:
    return fmt_bytes(int(value or 0))


@register.filter
def gib_number(value) -> str:
    """Bytes -> a GiB number for form fields (3 decimals at most)."""
    return f"{int(value or 0) / (1 << 30):.3f}".rstrip("0").rstrip(".")
