from django import template

from apps.accounts.permissions import has_perm
from apps.backups import selectors

register = template.Library()


@register.inclusion_tag("backups/partials/_vm_panel.html", takes_context=True)
def vm_backup_panel(context, vm):
    """The VM page's backup facts: last good, last verified, the run in progress (only for
    users who may see the VM's backups)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if not has_perm(user, "backups.view", vm):
        return {"visible": False}
    return {"visible": True, "s": selectors.vm_status(vm)}
