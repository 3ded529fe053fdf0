from django import template

from apps.network.selectors import quarantined_vm_ids as _quarantined_vm_ids

register = template.Library()


@register.simple_tag
def quarantined_vm_ids() -> set[int]:
    """VMs under quarantine (one query per page)."""
    return _quarantined_vm_ids()


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def make_list_words(value: str) -> list[str]:
    return value.split()


@register.simple_tag
def quarantines_for(user):
    """Active quarantines of the VMs `user` may see on the network pages."""
    from apps.network.selectors import quarantined

    return quarantined(user)
