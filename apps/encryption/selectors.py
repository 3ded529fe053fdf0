"""Reads for the encryption pages."""

from apps.accounts.permissions import scope_filter
from apps.vms.models import VirtualMachine


def vms_for_change(user):
    """The VMs on which the user may create or encrypt disks (for the forms' choices)."""
    qs = VirtualMachine.objects.select_related("host").filter(present=True).order_by("host__name", "name")
    allowed = scope_filter(user, "encryption.change")
    return qs if allowed is None else qs.filter(allowed)
