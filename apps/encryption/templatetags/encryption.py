from django import template

from apps.encryption.services import manual_unlock_vm_ids as _manual_unlock_vm_ids

register = template.Library()


@register.simple_tag
def manual_unlock_vm_ids() -> set[int]:
    """VMs whose disks open only with a typed passphrase (one query per page)."""
    return _manual_unlock_vm_ids()
