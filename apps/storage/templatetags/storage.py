from django import template

from apps.storage.quota_rules import fmt_bytes
from apps.storage.selectors import alert_badge_count

register = template.Library()

CHART_W, CHART_H = 600, 150  # the SVG viewBox of storage/partials/_trend.html


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


@register.simple_tag
def trend_chart(t) -> dict:
    """{% trend_chart trend as c %}: the SVG geometry of a usage trend in a CHART_W x CHART_H
    box: `polyline` (the samples), `limit_y` (the limit's line), `last_xy` (the newest point)."""
    points = getattr(t, "points", None) or []
    if not points:
        return {"polyline": "", "limit_y": 0.0, "last_xy": (0.0, 0.0)}
    t0, t1 = points[0][0], points[-1][0]
    span = max((t1 - t0).total_seconds(), 1.0)
    top = max(max(v for _, v in points), t.limit, 1)
    coords = [(CHART_W * (at - t0).total_seconds() / span, CHART_H - CHART_H * v / top) for at, v in points]
    return {
        "polyline": " ".join(f"{x:.1f},{y:.1f}" for x, y in coords),
        "limit_y": CHART_H - CHART_H * t.limit / top,
        "last_xy": (round(coords[-1][0], 1), round(coords[-1][1], 1)),
    }
