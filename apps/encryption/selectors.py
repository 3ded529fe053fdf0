"""Reads for the encryption pages."""

from apps.accounts.permissions import restrict
from apps.vms.models import VirtualMachine


def vms_for_change(user):
    """The VMs on which the user may create or encrypt disks (for the forms' choices)."""
    qs = VirtualMachine.objects.select_related("host").filter(present=True).order_by("host__name", "name")
    return restrict(qs, user, "encryption.change")
