"""The audit page's integrity block: `{% load audit_integrity %}{% audit_integrity %}`.
Reads two single-row tables and counts at most BACKLOG_SHOWN + 1 events: constant cost."""

from django import template

register = template.Library()


@register.inclusion_tag("audit/_integrity.html")
def audit_integrity():
    from django.conf import settings

    from apps.audit import forwarding
    from apps.audit.models import AuditChainCheckpoint

    return {
        "cp": AuditChainCheckpoint.objects.filter(id=1).first(),
        "anchors": bool(settings.AUDIT_ANCHOR_DIR),
        "forward": forwarding.backlog(),
        "shown": forwarding.BACKLOG_SHOWN,
    }
